"""edgecxr.data: reading both layouts, patient ids, patient-level splits, leakage, data check."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from synthetic import CLASSES, make_dataset, synthetic_image
from test_preprocess import (
    write_16bit_png,
    write_empty,
    write_exif_rotated_jpeg,
    write_palette_png,
    write_rgba_png,
    write_text_as_jpeg,
    write_truncated_jpeg,
)

from edgecxr import data
from edgecxr.cli import main
from edgecxr.data import DataWarning, Record
from edgecxr.errors import DataError, LeakageError

# --- names and patient ids ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, label",
    [
        ("NORMAL", "normal"),
        ("No Finding", "normal"),
        ("COVID-19", "covid19"),
        ("COVID19", "covid19"),
        ("covid", "covid19"),
        ("bacteria", "bacterial"),
        ("Bacterial", "bacterial"),
        ("virus", "viral"),
        ("VIRAL", "viral"),
        ("pneumonia_unspecified", "pneumonia_unspecified"),
        ("PNEUMONIA", "pneumonia_unspecified"),
        ("notes", None),
        ("tuberculosis", "tuberculosis"),
        ("TB", "tuberculosis"),
        ("effusion", None),
    ],
)
def test_canonical_label_aliases(name, label):
    assert data.canonical_label(name) == label


@pytest.mark.parametrize(
    "name, patient",
    [
        ("person12_virus_3.jpeg", "kermany-person12"),
        ("kermany_person1000_bacteria_2931.jpeg", "kermany-person1000"),
        ("IM-0115-0001.jpeg", "kermany-IM-0115"),
        ("kermany_NORMAL2-IM-0095-0001.jpeg", "kermany-NORMAL2-IM-0095"),
        ("NORMAL2-IM-1345-0001-0002.jpeg", "kermany-NORMAL2-IM-1345"),
        ("nih_00000150_002.jpg", "nih-00000150"),
        ("00030805_000.png", "nih-00030805"),
        ("ieee8023_000001-19.jpg", None),
        ("scan_7.png", None),
    ],
)
def test_patient_id_from_known_file_names(name, patient):
    assert data.patient_id_from_filename(name) == patient


# --- reading the two layouts -------------------------------------------------------------------


def _by_label(records):
    return Counter(r.label for r in records)


def test_folder_layout_with_aliases_and_kermany_patient_ids(synthetic_folder):
    (synthetic_folder / "notes").mkdir()
    shutil.copy(next((synthetic_folder / "NORMAL").iterdir()), synthetic_folder / "notes" / "x.png")
    with pytest.warns(DataWarning, match="no known class name: notes"):
        records = data.load_records(synthetic_folder)
    assert _by_label(records) == {c: 12 for c in CLASSES}
    assert all(Path(r.file).is_absolute() and Path(r.file).is_file() for r in records)
    bact = [r for r in records if r.label == "bacterial"]
    assert {r.patient_id for r in bact} == {f"kermany-person{2000 + k}" for k in range(6)}
    normal = [r for r in records if r.label == "normal"]
    assert {r.patient_id for r in normal} == {f"kermany-IM-{k:04d}" for k in range(6)}
    assert Counter(Counter(r.patient_id for r in records).values()) == {2: 24}
    assert {(r.source, r.group) for r in records} == {("kermany", "pediatric")}


def test_manifest_csv_and_folder_with_manifest_agree(synthetic_manifest):
    from_csv = data.load_records(synthetic_manifest)
    from_folder = data.load_records(synthetic_manifest.parent)
    assert from_csv == from_folder
    assert _by_label(from_csv) == {c: 12 for c in CLASSES}
    assert {r.patient_id for r in from_csv if r.label == "viral"} == {f"p3_{k}" for k in range(6)}
    assert {(r.source, r.group) for r in from_csv} == {("kermany", "pediatric"), ("ieee8023", "adult")}


def _write_image(path: Path, label: str = "normal", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(synthetic_image(label, np.random.default_rng(seed), 32)).save(path)
    return path


def test_manifest_in_shared_data_style(tmp_path):
    """The shared set's columns: no `source`, but file-name prefixes and source_repo say it."""
    rows = [
        ("normal/kermany_IM-0115-0001.jpeg", "NORMAL", "kermany-IM-0115", "waliatushar/ai-pneumonia"),
        ("covid19/ieee8023_a.jpg", "COVID-19", "ieee8023-36", "ieee8023/covid-chestxray-dataset"),
        ("normal/nih_00000150_002.jpg", "normal", "nih-00000150", "muhammedtalo/COVID-19"),
        ("covid19/C-22.jpg", "covid19", "figure1-COVID-00022", "agchung/Figure1-COVID-chestxray-dataset"),
        ("other/odd.png", "pneumonia", "", "someone/else"),
        ("normal/gone.jpg", "normal", "x-1", "someone/else"),
        ("normal/kermany_IM-0117-0001.jpeg", "tuberculosis", "kermany-IM-0117", "x"),
    ]
    for i, (file, *_rest) in enumerate(rows[:5]):
        _write_image(tmp_path / file, seed=i)
    with (tmp_path / "MANIFEST.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "patient_id", "source_repo", "source_path", "license_note"])
        writer.writerows([(*row, "p", "CC BY 4.0; view=PA") for row in rows])
    notes = []
    records = data.load_records(tmp_path, notes=notes)
    got = [(r.label, r.patient_id, r.source, r.group) for r in records]
    assert got == [
        ("normal", "kermany-IM-0115", "kermany", "pediatric"),
        ("covid19", "ieee8023-36", "ieee8023", "adult"),
        ("normal", "nih-00000150", "nih", "adult"),
        ("covid19", "figure1-COVID-00022", "figure1", "adult"),
        ("pneumonia_unspecified", "file:" + tmp_path.name + "/other/odd.png", "unknown", "unknown"),
    ]
    text = " | ".join(notes)
    assert "skipped 2 manifest rows whose file does not exist (e.g. normal/gone.jpg)" in text
    assert "1 of 5 images have no patient id" in text and "fill in the manifest's patient_id column" in text


def test_kermany_pneumonia_folder_gets_subtypes_from_file_names(tmp_path):
    for name in ("person1_bacteria_1.jpeg", "person2_virus_3.jpeg", "xray.png"):
        _write_image(tmp_path / "PNEUMONIA" / name)
    _write_image(tmp_path / "NORMAL" / "IM-0001-0001.jpeg")
    with pytest.warns(DataWarning, match="1 of 4 images have no patient id"):
        records = data.load_records(tmp_path)
    labels = {Path(r.file).name: r.label for r in records}
    assert labels == {
        "person1_bacteria_1.jpeg": "bacterial",
        "person2_virus_3.jpeg": "viral",
        "xray.png": "pneumonia_unspecified",
        "IM-0001-0001.jpeg": "normal",
    }


def test_extra_data_is_merged_once(synthetic_folder, synthetic_manifest):
    notes = []
    records = data.load_records(synthetic_folder, extra=[synthetic_manifest, synthetic_manifest], notes=notes)
    assert len(records) == 96
    assert any("already read" in n for n in notes)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing", "no such file or folder"),
        (lambda p: p, "no images found"),
        (lambda p: _write(p / "x.txt", "hi"), "is a file"),
        (lambda p: _write(p / "m.csv", "path,kind\na.png,normal\n"), "needs columns file,label"),
        (lambda p: _write(p / "m.csv", "file,label\nnot/there.png,normal\n"), "does not exist"),
    ],
)
def test_unusable_input_raises_data_error(tmp_path, make, message):
    with pytest.raises(DataError, match=message):
        data.load_records(make(tmp_path))


def test_loose_images_or_unknown_folders_are_named_in_the_error(tmp_path):
    for name in ("a.png", "b.jpg"):
        _write_image(tmp_path / "loose" / name)
    with pytest.raises(DataError, match="loose: 2 images but no class sub-folders; expected one sub-folder per class"):
        data.load_records(tmp_path / "loose")
    _write_image(tmp_path / "other" / "scans" / "a.png")
    with pytest.raises(DataError, match=r"other: no class sub-folders \(found scans\)"):
        data.load_records(tmp_path / "other")


def test_class_folders_without_images_raise(tmp_path):
    (tmp_path / "normal").mkdir()
    (tmp_path / "covid19").mkdir()
    with pytest.raises(DataError, match="no images found"):
        data.load_records(tmp_path)


def test_target_vector():
    assert data.target_vector("covid19").tolist() == [0, 1, 0, 0]
    # partial labels mark the classes they allow with -1 (the loss sums their probability)
    assert data.target_vector("pneumonia_unspecified").tolist() == [0, 0, -1, -1]
    assert data.target_vector("tuberculosis").tolist() == [0, 0, -1, -1]
    assert data.target_vector("pneumonia_unspecified", ["normal", "bacterial"]).tolist() == [0, -1]
    custom = {"abnormal": ["covid19", "bacterial", "viral"]}
    assert data.target_vector("abnormal", partial_labels=custom).tolist() == [0, -1, -1, -1]
    with pytest.raises(DataError, match="not one of the model's classes"):
        data.target_vector("viral", ["normal", "covid19"])
    with pytest.raises(DataError, match="none of which is one of the model's classes"):
        data.target_vector("tuberculosis", ["normal", "covid19"])
    with pytest.raises(DataError, match="neither a class .* nor a known partial label"):
        data.target_vector("abnormal")


def test_unknown_manifest_label_is_an_error_naming_the_setting(tmp_path):
    _write_image(tmp_path / "a.png", seed=1)
    _write_image(tmp_path / "b.png", seed=2)
    (tmp_path / "MANIFEST.csv").write_text("file,label,patient_id\na.png,normal,p1\nb.png,effusion,p2\n")
    with pytest.raises(DataError, match=r"1 row\(s\) with label 'effusion' is neither a class .*partial_labels"):
        data.load_records(tmp_path)
    records = data.load_records(tmp_path, partial_labels={"effusion": ["bacterial", "viral"]})
    assert [r.label for r in records] == ["normal", "effusion"]


def test_tuberculosis_and_hannover_sources_are_adult(tmp_path):
    _write_image(tmp_path / "tbx11k_tb0003.jpg", seed=1)
    _write_image(tmp_path / "hannover_00d96e05.jpg", seed=2)
    (tmp_path / "MANIFEST.csv").write_text(
        "file,label,patient_id,source_repo\n"
        "tbx11k_tb0003.jpg,tuberculosis,tbx11k-tb0003,turjo410/TBX11K-Assignment-1\n"
        "hannover_00d96e05.jpg,covid19,ieee8023-219,ml-workgroup/covid-19-image-repository\n")
    got = [(r.label, r.source, r.group) for r in data.load_records(tmp_path)]
    assert got == [("tuberculosis", "tbx11k", "adult"), ("covid19", "hannover", "adult")]
    report = data.check_data(tmp_path)
    assert report.classes == {"covid19": 1, "tuberculosis": 1}
    assert "tuberculosis" in report.to_text()


# --- splitting ---------------------------------------------------------------------------------


def _fake_records(seed: int = 0) -> list[Record]:
    """Records without files: patients with 1-5 images, a small covid class and some patients
    with both bacterial and viral images."""
    rng = np.random.default_rng(seed)
    records = []
    patients = {"normal": 120, "covid19": 20, "bacterial": 100, "viral": 80, "pneumonia_unspecified": 3}
    for label, n in patients.items():
        for p in range(n):
            for k in range(int(rng.integers(1, 6))):
                lab = label
                if label == "bacterial" and p % 5 == 0 and k % 2 == 1:
                    lab = "viral"  # Kermany-style personN with both subtypes
                records.append(Record(f"/d/{label}/{p}_{k}.png", lab, f"{label}-{p}", "s", "unknown"))
    return records


def _patient_splits(records, splits):
    where = defaultdict(set)
    for rec, split in zip(records, splits):
        where[rec.patient_id].add(split)
    return where


def test_split_keeps_patients_together_and_assigns_everything():
    records = _fake_records()
    splits = data.split_by_patient(records, 0.15, 0.15, seed=1)
    assert len(splits) == len(records) and set(splits) == {"train", "val", "test"}
    assert all(len(s) == 1 for s in _patient_splits(records, splits).values())
    labels_of = defaultdict(set)
    for rec in records:
        labels_of[rec.patient_id].add(rec.label)
    assert any(len(labels) > 1 for labels in labels_of.values())  # multi-label patients were split too
    data.check_leakage(records, splits)  # does not raise


def test_split_is_stratified_by_class():
    records = _fake_records()
    splits = data.split_by_patient(records, 0.2, 0.1, seed=3)
    for label in ("normal", "covid19", "bacterial", "viral"):
        chosen = [s for r, s in zip(records, splits) if r.label == label]
        frac = Counter(chosen)
        assert abs(frac["val"] / len(chosen) - 0.2) < 0.08, label
        assert abs(frac["test"] / len(chosen) - 0.1) < 0.08, label
    # 3 patients only: still one in each split
    small = {s for r, s in zip(records, splits) if r.label == "pneumonia_unspecified"}
    assert small == {"train", "val", "test"}


def test_split_is_deterministic_and_order_free_but_seed_dependent():
    records = _fake_records()
    a = data.split_by_patient(records, 0.15, 0.15, seed=7)
    assert a == data.split_by_patient(records, 0.15, 0.15, seed=7)
    order = np.random.default_rng(0).permutation(len(records))
    shuffled = data.split_by_patient([records[i] for i in order], 0.15, 0.15, seed=7)
    assert [a[i] for i in order] == shuffled
    assert a != data.split_by_patient(records, 0.15, 0.15, seed=8)


def test_split_rejects_bad_fractions():
    with pytest.raises(DataError, match="add up to less than 1"):
        data.split_by_patient(_fake_records(), 0.6, 0.5, seed=0)


# --- leakage and split files -------------------------------------------------------------------


def test_check_leakage_refuses_a_patient_in_two_splits():
    records = [Record(f"/d/{i}.png", "normal", pid) for i, pid in enumerate(["a", "a", "b", "c"])]
    with pytest.raises(LeakageError) as info:
        data.check_leakage(records, ["train", "test", "val", "train"])
    message = str(info.value)
    assert "patient a" in message and "train" in message and "test" in message and "\n" not in message
    with pytest.raises(DataError, match="unknown split names"):
        data.check_leakage(records, ["train", "train", "dev", "val"])


def test_save_and_load_splits_round_trip(synthetic_folder, tmp_path):
    records = data.load_records(synthetic_folder)
    splits = data.split_by_patient(records, 0.25, 0.25, seed=0)
    path = data.save_splits(tmp_path / "splits.csv", records, splits)
    header = path.read_text().splitlines()[0]
    assert header == "file,label,patient_id,source,group,split"
    assert data.load_splits(path, records) == splits


def _write_user_splits(path: Path, rows) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "split"])
        writer.writerows(rows)
    return path


def test_user_splits_with_relative_paths_are_checked_for_leakage(synthetic_folder, tmp_path):
    records = data.load_records(synthetic_folder)
    rows = [(Path(r.file).relative_to(synthetic_folder).as_posix(), "train") for r in records]
    good = _write_user_splits(tmp_path / "good.csv", rows)
    assert data.load_splits(good, records) == ["train"] * len(records)
    # the two images of kermany-person2000 go to different splits
    leaky_rows = list(rows)
    second = [i for i, r in enumerate(records) if r.patient_id == "kermany-person2000"][1]
    leaky_rows[second] = (leaky_rows[second][0], "test")
    leaky = _write_user_splits(tmp_path / "leaky.csv", leaky_rows)
    with pytest.raises(LeakageError, match="patient kermany-person2000 is in both train and test"):
        data.load_splits(leaky, records)


def test_user_splits_with_unknown_or_missing_files_fail_clearly(synthetic_folder, tmp_path):
    records = data.load_records(synthetic_folder)
    rows = [(r.file, "train") for r in records]
    stranger = _write_user_splits(tmp_path / "a.csv", rows + [("NORMAL/not-here.png", "val")])
    with pytest.raises(DataError, match="1 files are not in the data set .e.g. NORMAL/not-here.png"):
        data.load_splits(stranger, records)
    short = _write_user_splits(tmp_path / "b.csv", rows[:-3])
    with pytest.raises(DataError, match="3 of 48 images have no split"):
        data.load_splits(short, records)
    bad_name = _write_user_splits(tmp_path / "c.csv", rows[:-1] + [(rows[-1][0], "holdout")])
    with pytest.raises(DataError, match="unknown split names"):
        data.load_splits(bad_name, records)
    with pytest.raises(DataError, match="not found"):
        data.load_splits(tmp_path / "nope.csv", records)


def test_load_split_arrays_skips_unreadable(synthetic_folder):
    write_truncated_jpeg(synthetic_folder / "NORMAL" / "IM-9999-0001.jpg")
    records = data.load_records(synthetic_folder)
    splits = ["val" if r.label == "normal" else "train" for r in records]
    errors = []
    arrays, kept = data.load_split_arrays(records, splits, "val", 32, on_error=lambda p, m: errors.append(p))
    assert arrays.shape == (12, 32, 32, 3) and arrays.dtype == np.uint8
    assert len(kept) == 12 and all(r.label == "normal" for r in kept)
    assert [Path(p).name for p in errors] == ["IM-9999-0001.jpg"]


# --- data check --------------------------------------------------------------------------------


@pytest.fixture
def messy_folder(tmp_path):
    """A synthetic set plus every kind of trouble data check must find."""
    root = make_dataset(tmp_path / "messy", per_class=6, size=32, layout="folders")
    normal, viral = root / "NORMAL", root / "Virus"
    shutil.copy(normal / "IM-0000-0000.png", normal / "IM-0000-0007.png")  # same patient copy
    shutil.copy(normal / "IM-0001-0002.png", root / "COVID-19" / "IM-0001-0009.png")  # across classes
    shutil.copy(root / "bacteria" / "person2000_bacteria_0.png", viral / "person2000_virus_50.png")
    write_16bit_png(normal / "IM-0100-0001.png")
    write_rgba_png(normal / "IM-0101-0001.png")
    write_palette_png(normal / "IM-0102-0001.png")
    write_exif_rotated_jpeg(normal / "IM-0103-0001.jpg")
    write_truncated_jpeg(viral / "person3100_virus_1.jpeg")
    write_text_as_jpeg(viral / "person3101_virus_1.jpg")
    write_empty(viral / "person3102_virus_1.jpg")
    return root


def test_check_data_finds_duplicates_unreadable_and_multi_class_patients(messy_folder):
    report = data.check_data(messy_folder)
    assert report.usable
    assert report.n_images == 24 + 3 + 7
    assert report.classes == {"normal": 11, "covid19": 7, "bacterial": 6, "viral": 10}
    assert report.patients["bacterial"] == 3 and report.patients["viral"] == 7
    assert sorted(Path(f).name for f, _ in report.unreadable) == [
        "person3100_virus_1.jpeg", "person3101_virus_1.jpg", "person3102_virus_1.jpg"
    ]
    assert sorted(sorted(Path(f).name for f in group) for group in report.duplicates) == [
        ["IM-0000-0000.png", "IM-0000-0007.png"],
        ["IM-0001-0002.png", "IM-0001-0009.png"],
        ["person2000_bacteria_0.png", "person2000_virus_50.png"],
    ]
    assert report.duplicate_conflicts == 2
    assert report.multi_class_patients == {
        "kermany-IM-0001": ["normal", "covid19"],
        "kermany-person2000": ["bacterial", "viral"],
    }
    assert report.modes["L"] == 24 + 3 + 1 and {"I;16", "RGBA", "P"} <= set(report.modes)
    assert report.sizes["32x32"] >= 24 and report.width_range == (32, 80)
    text = report.to_text()
    assert "unreadable files: 3" in text and "exact duplicates: 3 groups" in text
    assert "patients in several classes: 2" in text and "usable: yes" in text
    parsed = json.loads(report.to_json())
    assert parsed["usable"] is True and len(parsed["unreadable"]) == 3


def test_check_data_flags_unusable_sets(tmp_path):
    one = make_dataset(tmp_path / "one", per_class=3, size=32)
    for folder in ("COVID-19", "bacteria", "Virus"):
        shutil.rmtree(one / folder)
    report = data.check_data(one)
    assert not report.usable and "only one class" in report.problems[0]

    broken = tmp_path / "broken"
    write_text_as_jpeg((broken / "normal").mkdir(parents=True) or broken / "normal" / "a.jpg")
    write_empty((broken / "covid19").mkdir() or broken / "covid19" / "b.jpg")
    report = data.check_data(broken)
    assert report.problems == ["no image can be read"] and "usable: NO" in report.to_text()

    empty_classes = tmp_path / "empty"
    (empty_classes / "normal").mkdir(parents=True)
    assert data.check_data(empty_classes).problems == ["no images found"]


def test_partial_label_set_alone_is_usable_as_extra_data(tmp_path):
    for i in range(3):
        _write_image(tmp_path / "pneumonia" / f"nih_0000000{i}_000.jpg", seed=i)
    report = data.check_data(tmp_path)
    assert report.usable and report.classes == {"pneumonia_unspecified": 3}
    assert report.sources == {"nih": 3} and any("extra data" in n for n in report.notes)


def test_cli_data_check_good_data(synthetic_manifest):
    result = CliRunner().invoke(main, ["data", "check", str(synthetic_manifest)])
    assert result.exit_code == 0, result.output
    assert "images: 48" in result.output and "usable: yes" in result.output
    result = CliRunner().invoke(main, ["data", "check", "--json", str(synthetic_manifest)])
    assert json.loads(result.stdout)["classes"] == {c: 12 for c in CLASSES}


@pytest.mark.parametrize("which", ["empty", "missing", "one class"])
def test_cli_data_check_bad_data_is_one_line_error(tmp_path, which):
    path = tmp_path / which
    if which == "empty":
        path.mkdir()
    elif which == "one class":
        _write_image(path / "normal" / "a.png")
    result = CliRunner().invoke(main, ["data", "check", str(path)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # a clean exit, not an escaped exception
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ")


@pytest.mark.parametrize("how", ["empty folder", "no folder"])
def test_check_data_refuses_a_class_without_images(tmp_path, how):
    """A class folder left empty (or missing) used to pass as 'usable: yes' with 3 labels."""
    root = make_dataset(tmp_path / "three", per_class=4, size=32)
    shutil.rmtree(root / "Virus")
    if how == "empty folder":
        (root / "Virus").mkdir()
    report = data.check_data(root)
    assert not report.usable
    assert report.problems == [
        "no images of class viral (images per class: normal 4, covid19 4, bacterial 4, viral 0); add images "
        "of viral, or train without it: --set 'class_names=[\"normal\", \"covid19\", \"bacterial\"]'"]
    assert "usable: NO" in report.to_text()
    result = CliRunner().invoke(main, ["data", "check", str(root)])
    assert result.exit_code == 1 and "usable: NO" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and "class viral" in errors[0]


def test_empty_class_problem_counts_the_training_split():
    """Training asks the same question of its training split: images only in val count for nothing."""
    records = [Record(f"/d/{label}{i}.png", label, f"{label}{i}") for label in CLASSES for i in range(2)]
    splits = ["val" if r.label == "covid19" else "train" for r in records]
    assert data.empty_class_problem(records) is None
    problem = data.empty_class_problem(records, CLASSES, splits)
    assert problem.startswith("no training images of class covid19 (training images per class: normal 2, "
                              "covid19 0, bacterial 2, viral 2)")
    partial = [*records, Record("/d/p.png", "pneumonia_unspecified", "p")]
    assert "class covid19" in data.empty_class_problem(partial, CLASSES, [*splits, "train"])
