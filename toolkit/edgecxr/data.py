"""Chest X-ray collections: read them, split them by patient, and check them before training.

A data set is a folder with one sub-folder per class, a manifest CSV (``file,label,patient_id``,
optional ``source``/``group``, paths relative to the CSV's folder), or a folder holding
``MANIFEST.csv``/``manifest.csv``. Every image becomes a :class:`Record` that knows its patient,
because images of one patient in both the training and the test split make a model look better
than it is; :func:`split_by_patient` and :func:`check_leakage` exist to make that impossible.

Only numpy and Pillow are imported here (no TensorFlow), so the runtime and ``edgecxr data check``
stay light.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import re
import struct
import time
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import CLASS_NAMES, PARTIAL_LABELS
from . import dicom
from .errors import DataError, ImageError, LeakageError
from .preprocess import IMAGE_SUFFIXES, is_image_file, load_images

log = logging.getLogger(__name__)

PARTIAL_LABEL = "pneumonia_unspecified"
"""Label of pneumonia images without a bacterial/viral subtype (Kermany's PNEUMONIA folder names it)."""

LABELS = (*CLASS_NAMES, *PARTIAL_LABELS)
"""Every label the default mapping knows, in report order (classes first)."""
SPLITS = ("train", "val", "test")
MANIFEST_NAMES = ("MANIFEST.csv", "manifest.csv")

# Keys are lower-case with spaces, dashes, underscores and dots removed (see _alias_key).
_LABEL_ALIASES = {
    "normal": "normal",
    "nofinding": "normal",
    "nofindings": "normal",
    "healthy": "normal",
    "covid19": "covid19",
    "covid": "covid19",
    "covid2019": "covid19",
    "sarscov2": "covid19",
    "covid19pneumonia": "covid19",
    "covidpneumonia": "covid19",
    "bacterial": "bacterial",
    "bacteria": "bacterial",
    "bacterialpneumonia": "bacterial",
    "pneumoniabacterial": "bacterial",
    "pneumoniabacteria": "bacterial",
    "viral": "viral",
    "virus": "viral",
    "viralpneumonia": "viral",
    "pneumoniaviral": "viral",
    "pneumoniavirus": "viral",
    "pneumoniaunspecified": PARTIAL_LABEL,
    "unspecifiedpneumonia": PARTIAL_LABEL,
    "pneumonia": PARTIAL_LABEL,
    "tuberculosis": "tuberculosis",
    "tb": "tuberculosis",
    "pulmonarytuberculosis": "tuberculosis",
    "activetuberculosis": "tuberculosis",
}

# Short source names and the age group each collection belongs to. Per-source and per-group
# metrics need these because the pediatric/adult split is the main shortcut a model can learn.
_SOURCE_GROUPS = {
    "kermany": "pediatric",
    "ieee8023": "adult",
    "nih": "adult",
    "figure1": "adult",
    "actualmed": "adult",
    "rsna": "adult",
    "chexpert": "adult",
    "mimic": "adult",
    "padchest": "adult",
    "bimcv": "adult",
    "tbx11k": "adult",
    "hannover": "adult",
}
# Substrings of a manifest's source_repo that name a collection, checked in order (the
# Actualmed and Figure1 repos' names also end in "covid-chestxray-dataset").
_REPO_SOURCES = (
    ("actualmed", "actualmed"),
    ("figure1", "figure1"),
    ("covid-chestxray-dataset", "ieee8023"),
    ("ieee8023", "ieee8023"),
    ("ai-pneumonia-detection", "kermany"),
    ("kermany", "kermany"),
    ("chestx-ray", "nih"),
    ("tbx11k", "tbx11k"),
    ("covid-19-image-repository", "hannover"),
)

_KERMANY_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)(?:_|$)", re.IGNORECASE)
_KERMANY_IM = re.compile(r"^((?:NORMAL2-)?IM-\d+)(?:-\d+)*$", re.IGNORECASE)
_NIH_NAME = re.compile(r"^(\d{8})_\d{3}$")

# What Pillow raises for damaged files; DecompressionBombError is not an OSError.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


class DataWarning(UserWarning):
    """Something in the data set was skipped or guessed; the message says what and why."""


@dataclass
class Record:
    """One image: where it is, its label, and the patient it belongs to."""

    file: str  # absolute path
    label: str  # one of CLASS_NAMES, or a partial label (edgecxr.PARTIAL_LABELS)
    patient_id: str
    source: str = "unknown"  # short collection name: kermany, ieee8023, nih, ...
    group: str = "unknown"  # pediatric | adult | unknown


# --- names -------------------------------------------------------------------------------------


def _alias_key(name: str) -> str:
    return re.sub(r"[\s\-_.]+", "", str(name).strip().lower())


def canonical_label(name: str, partial_labels: Mapping[str, Sequence[str]] | None = None) -> str | None:
    """Map a folder or manifest label (``NORMAL``, ``COVID-19``, ``bacteria``, ``TB``, ...) to a label.

    Returns one of CLASS_NAMES, a partial label (the defaults in ``edgecxr.PARTIAL_LABELS`` or one
    named in ``partial_labels``), or None for names we do not know, so callers can report the
    unknown name instead of guessing.
    """
    key = _alias_key(name)
    if key in _LABEL_ALIASES:
        return _LABEL_ALIASES[key]
    return next((label for label in (partial_labels or {}) if _alias_key(label) == key), None)


def known_labels(partial_labels: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Every label a data set may use: the classes, then the partial labels, in report order."""
    return list(dict.fromkeys([*LABELS, *(partial_labels or {})]))


def unknown_label_message(label: str, partial_labels: Mapping[str, Sequence[str]] | None = None) -> str:
    partial = ", ".join(known_labels(partial_labels)[len(CLASS_NAMES):])
    return (f"label {label!r} is neither a class ({', '.join(CLASS_NAMES)}) nor a known partial label "
            f"({partial}); fix the label, or map it to the classes it allows with "
            f"--set 'partial_labels={{\"{label}\": [\"bacterial\", \"viral\"]}}'")


def source_group(source: str) -> str:
    """``pediatric``, ``adult`` or ``unknown`` for a short source name."""
    return _SOURCE_GROUPS.get(source, "unknown")


def _split_source_prefix(stem: str) -> tuple[str | None, str]:
    """``kermany_person1_virus_6`` -> (``kermany``, ``person1_virus_6``); the files in the
    shared set carry their collection as a prefix."""
    head, sep, rest = stem.partition("_")
    if sep and head.lower() in _SOURCE_GROUPS and rest:
        return head.lower(), rest
    return None, stem


def patient_id_from_filename(name: str) -> str | None:
    """Patient id from a known file-name convention, or None.

    Kermany ``personN_bacteria_K`` -> ``kermany-personN`` (bacteria and virus images of one
    ``personN`` are grouped: safer for splitting); ``IM-0115-0001`` / ``NORMAL2-IM-0095-0001``
    -> ``kermany-IM-0115`` / ``kermany-NORMAL2-IM-0095``; NIH ``00000150_002`` -> ``nih-00000150``.
    """
    _, stem = _split_source_prefix(Path(name).stem)
    if m := _KERMANY_PERSON.match(stem):
        return f"kermany-{m.group(1).lower()}"
    if m := _KERMANY_IM.match(stem):
        return f"kermany-{m.group(1).upper()}"
    if m := _NIH_NAME.match(stem):
        return f"nih-{m.group(1)}"
    return None


def source_from_filename(name: str) -> str | None:
    """Short source name from a ``source_`` prefix or a known naming convention, or None."""
    prefix, stem = _split_source_prefix(Path(name).stem)
    if prefix:
        return prefix
    if _KERMANY_PERSON.match(stem) or _KERMANY_IM.match(stem):
        return "kermany"
    if _NIH_NAME.match(stem):
        return "nih"
    return None


def _source_from_repo(repo: str) -> str | None:
    low = repo.lower()
    for needle, source in _REPO_SOURCES:
        if needle in low:
            return source
    return None


def _refine_label(label: str, name: str) -> str:
    """Kermany's PNEUMONIA folder names the subtype in the file name (``_bacteria_``/``_virus_``)."""
    if label == PARTIAL_LABEL:
        _, stem = _split_source_prefix(Path(name).stem)
        if m := _KERMANY_PERSON.match(stem):
            return "bacterial" if m.group(2).lower() == "bacteria" else "viral"
    return label


# --- reading data sets -------------------------------------------------------------------------


@dataclass
class _Dataset:
    records: list[Record]
    notes: list[str]
    layout: str  # folders | manifest
    manifest: str | None = None


def _is_image(path: Path) -> bool:
    return is_image_file(path)


def _find_manifest(folder: Path) -> Path | None:
    for name in MANIFEST_NAMES:
        if (folder / name).is_file():
            return folder / name
    return None


def _read_dataset(path: str | Path, partial_labels: Mapping[str, Sequence[str]] | None = None) -> _Dataset:
    """Read one data set in whichever layout it has; DataError if it is no data set at all."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"{path} is a file; give a data folder or a manifest .csv")
        return _read_manifest(path, partial_labels)
    manifest = _find_manifest(path)
    if manifest is not None:
        return _read_manifest(manifest, partial_labels)
    return _read_folders(path, partial_labels)


def _read_folders(root: Path, partial_labels: Mapping[str, Sequence[str]] | None = None) -> _Dataset:
    notes: list[str] = []
    try:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"{root}: cannot list folder ({exc.strerror})") from None
    classes = [(d, canonical_label(d.name, partial_labels)) for d in subdirs]
    unknown = [d.name for d, label in classes if label is None]
    if unknown:
        notes.append(f"skipped sub-folders with no known class name: {', '.join(unknown)}")
    known = [(d, label) for d, label in classes if label is not None]
    if not known:
        loose = sum(1 for p in root.iterdir() if p.is_file() and _is_image(p))
        if loose:
            found = f"{loose} image{'s' if loose != 1 else ''} but no class sub-folders"
        elif unknown:
            found = f"no class sub-folders (found {', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''})"
        else:
            found = "no images found"
        raise DataError(
            f"{root}: {found}; expected one sub-folder per class, e.g. normal/ covid19/ bacterial/ viral/, "
            f"or a MANIFEST.csv with file,label columns"
        )
    records, skipped, guessed = [], 0, 0
    for folder, folder_label in known:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            if any(part.startswith(".") for part in file.relative_to(folder).parts[:-1]):
                continue  # .ipynb_checkpoints and the like
            if not _is_image(file):
                skipped += not file.name.startswith(".")
                continue
            patient = patient_id_from_filename(file.name)
            if patient is None:
                guessed += 1
                patient = f"file:{root.name}/{file.relative_to(root).as_posix()}"
            source = source_from_filename(file.name) or "unknown"
            label = _refine_label(folder_label, file.name)
            file_name = os.path.normpath(str(file.absolute()))
            records.append(Record(file_name, label, patient, source, source_group(source)))
    if skipped:
        notes.append(f"skipped {skipped} files without an image suffix ({', '.join(IMAGE_SUFFIXES)}) "
                     "or the DICOM magic")
    if guessed:
        notes.append(_no_patient_note(guessed, len(records)))
    return _Dataset(records, notes, "folders")


def _no_patient_note(n: int, total: int, manifest: bool = False) -> str:
    where = ("the manifest has no patient_id for them and the file names follow no known pattern"
             if manifest else "no manifest, unknown file-name pattern")
    fix = "fill in the manifest's patient_id column" if manifest else "add a MANIFEST.csv with a patient_id column"
    return (
        f"{n} of {total} images have no patient id ({where}): each is treated as its own patient, "
        f"so one patient's images may land in different splits; {fix}"
    )


def _read_manifest(csv_path: Path, partial_labels: Mapping[str, Sequence[str]] | None = None) -> _Dataset:
    columns, rows = _read_csv(csv_path)
    if not rows:
        raise DataError(f"{csv_path}: the manifest has no rows")
    file_col = next((c for c in ("file", "path", "filename") if c in columns), None)
    if file_col is None or "label" not in columns:
        raise DataError(
            f"{csv_path}: the manifest needs columns file,label (optional patient_id,source); "
            f"found {','.join(sorted(columns))}"
        )
    base = csv_path.parent
    records, notes = [], []
    unknown_labels: Counter = Counter()
    missing, guessed, seen, repeats = [], 0, set(), 0
    for row in rows:
        name = (row.get(file_col) or "").strip()
        label = canonical_label(row.get("label") or "", partial_labels)
        if not name:
            continue
        if label is None:
            unknown_labels[(row.get("label") or "").strip() or "<empty>"] += 1
            continue
        file = Path(name) if Path(name).is_absolute() else base / name
        if not file.is_file():
            missing.append(name)
            continue
        key = os.path.normpath(str(file.absolute()))
        if key in seen:
            repeats += 1
            continue
        seen.add(key)
        patient = (row.get("patient_id") or "").strip() or patient_id_from_filename(file.name)
        if patient is None:
            guessed += 1
            patient = f"file:{base.name}/{name}"
        source = _manifest_source(row, file.name)
        group = (row.get("group") or "").strip().lower()
        if group not in ("pediatric", "adult", "unknown"):
            group = source_group(source)
        records.append(Record(key, _refine_label(label, file.name), patient, source, group))
    if unknown_labels:
        label, count = unknown_labels.most_common(1)[0]
        more = f" (and {len(unknown_labels) - 1} other unknown label(s))" if len(unknown_labels) > 1 else ""
        raise DataError(f"{csv_path}: {count} row(s) with {unknown_label_message(label, partial_labels)}{more}")
    if missing:
        notes.append(f"skipped {len(missing)} manifest rows whose file does not exist (e.g. {missing[0]})")
    if repeats:
        notes.append(f"skipped {repeats} repeated manifest rows for the same file")
    if guessed:
        notes.append(_no_patient_note(guessed, len(records), manifest=True))
    return _Dataset(records, notes, "manifest", str(csv_path))


def _read_csv(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Lower-cased column names and the rows keyed by them (short rows just lack keys); blank
    rows dropped. DataError for anything the csv module cannot read."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                return [], []
            names = [h.strip().lower() for h in header]
            return names, [dict(zip(names, row)) for row in reader if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{csv_path}: cannot read CSV ({exc.__class__.__name__}: {exc})") from None


def _manifest_source(row: dict[str, str], file_name: str) -> str:
    given = (row.get("source") or "").strip().lower()
    if given:
        return given
    from_name = source_from_filename(file_name)
    if from_name:
        return from_name
    repo = (row.get("source_repo") or "").strip()
    return _source_from_repo(repo) or "unknown"


def load_records(
    path: str | Path, extra: Iterable[str | Path] = (), notes: list[str] | None = None,
    partial_labels: Mapping[str, Sequence[str]] | None = None,
) -> list[Record]:
    """Read a data set plus any ``extra`` ones (e.g. the adult pneumonia folder) into Records.

    Skipped or guessed things (unknown class folders, missing files, images without a patient id)
    are appended to ``notes`` when given, else issued as :class:`DataWarning`. Raises DataError
    when nothing usable is found.
    """
    if isinstance(extra, (str, Path)):
        extra = [extra]
    records: list[Record] = []
    seen: set[str] = set()
    collected: list[str] = []
    for p in (path, *extra):
        dataset = _read_dataset(p, partial_labels)
        collected += [f"{p}: {n}" for n in dataset.notes]
        repeats = 0
        for rec in dataset.records:
            if rec.file in seen:
                repeats += 1
                continue
            seen.add(rec.file)
            records.append(rec)
        if repeats:
            collected.append(f"{p}: skipped {repeats} images already read from an earlier data set")
    if not records:
        hint = f" ({collected[-1]})" if collected else ""
        raise DataError(f"{path}: no images found{hint}")
    if notes is not None:
        notes.extend(collected)
    else:
        for note in collected:
            warnings.warn(note, DataWarning, stacklevel=2)
    return records


def images_per_class(records: Sequence[Record], class_names: Sequence[str] = CLASS_NAMES,
                      splits: Sequence[str] | None = None, split: str = "train") -> dict[str, int]:
    """Fully labelled images of each class, in ``class_names`` order; of one ``split`` when ``splits``
    is given. Partial-label images (pneumonia without a subtype) count for no class: they cannot
    teach a class the model has never been shown."""
    chosen = records if splits is None else [r for r, s in zip(records, splits) if s == split]
    by_label = Counter(r.label for r in chosen)
    return {name: by_label[name] for name in class_names}


def empty_class_problem(records: Sequence[Record], class_names: Sequence[str] = CLASS_NAMES,
                        splits: Sequence[str] | None = None) -> str | None:
    """Why these records cannot train a model of ``class_names``, or None when every class has images.

    Training and ``edgecxr data check`` both ask this (one rule, one message). Why it is an error and
    not a note: a model built with a class it never saw still has an output for it, trains and
    exports without complaint, and is silently wrong about that class forever. With ``splits`` the
    training split is counted (a class whose only patient landed in val or test is as absent).
    """
    counts = images_per_class(records, class_names, splits)
    empty = [name for name, n in counts.items() if n == 0]
    if not empty:
        return None
    where = "training images" if splits is not None else "images"
    kept = [name for name in class_names if name not in empty]
    per_class = ", ".join(f"{name} {n}" for name, n in counts.items())
    if not kept:
        fix = "check the class folder names or the manifest's labels"
    else:
        fix = f"add images of {' and '.join(empty)}" + (
            f", or train without {'them' if len(empty) > 1 else 'it'}: --set 'class_names={json.dumps(kept)}'"
            if len(kept) >= 2 else "")
    return (f"no {where} of class{'es' if len(empty) > 1 else ''} {', '.join(empty)} "
            f"({where} per class: {per_class}); {fix}")


def representative_sample(records: Sequence, n: int, seed: int = 0) -> list[int]:
    """Indices of up to ``n`` records drawn evenly across (label, source) strata (int8 calibration).

    Round-robin over the strata rather than proportional: int8 ranges are set by what the
    calibration images contain, so a rare stratum (adult COVID-19 films from one hospital) needs
    to be present even if it is 2% of the training split.
    """
    rng = np.random.default_rng(seed)
    strata: dict = defaultdict(list)
    for i, rec in enumerate(records):
        strata[(rec.label, rec.source)].append(i)
    queues = [list(rng.permutation(strata[key])) for key in sorted(strata)]
    chosen: list[int] = []
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(int(queue.pop()))
    return sorted(chosen)


def allowed_classes(label: str, class_names: Sequence[str] = CLASS_NAMES,
                    partial_labels: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The classes a label allows: itself for a class, its set for a partial label (in model order).

    Raises DataError for a label that is neither, or a partial label none of whose classes the
    model has (it would teach nothing and could not be scored).
    """
    names = list(class_names)
    if label in names:
        return [label]
    mapping = PARTIAL_LABELS if partial_labels is None else partial_labels
    if label not in mapping:
        raise DataError(unknown_label_message(label, mapping) if label not in CLASS_NAMES else
                        f"label {label!r} is not one of the model's classes ({', '.join(names)})")
    allowed = [c for c in names if c in set(mapping[label])]
    if not allowed:
        raise DataError(f"partial label {label!r} allows {', '.join(mapping[label])}, none of which is one of "
                        f"the model's classes ({', '.join(names)})")
    return allowed


def target_vector(label: str, class_names: Sequence[str] = CLASS_NAMES,
                  partial_labels: Mapping[str, Sequence[str]] | None = None) -> np.ndarray:
    """The training target of a label: one-hot for a class; for a partial label, -1 at each allowed class.

    The sign carries the difference: the training loss scores a one-hot (or soft) target with
    cross-entropy and a negative one with -log of the summed probability of the marked classes, so
    "bacterial or viral" pushes probability away from normal and COVID-19 without claiming either
    subtype (a 0.5/0.5 target would teach "half bacterial, half viral", which no image is).
    """
    names = list(class_names)
    vec = np.zeros(len(names), np.float32)
    allowed = allowed_classes(label, names, partial_labels)
    if allowed == [label]:
        vec[names.index(label)] = 1.0
    else:
        vec[[names.index(c) for c in allowed]] = -1.0
    return vec


# --- splitting ---------------------------------------------------------------------------------


def _patients(records: Sequence[Record]) -> dict[str, list[int]]:
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        by_patient[rec.patient_id].append(i)
    return by_patient


def _majority_labels(records: Sequence[Record], by_patient: dict[str, list[int]]) -> dict[str, str]:
    """Each patient's most common label; ties go to the rarer label overall, so a patient with
    one bacterial and one viral image helps stratify the smaller class."""
    overall = Counter(r.label for r in records)
    majority = {}
    for pid, idx in by_patient.items():
        counts = Counter(records[i].label for i in idx)
        majority[pid] = min(counts, key=lambda lab: (-counts[lab], overall[lab], lab))
    return majority


def split_by_patient(
    records: Sequence[Record], val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 42
) -> list[str]:
    """Assign every record to ``train``/``val``/``test`` so that no patient is in two splits.

    Patients are stratified by their majority label and shuffled with ``seed``; inside each
    stratum the shuffled patients are laid out by image count and cut at the requested
    fractions, so image fractions come out close even when patients have many images. A class
    with at least 2 (val) or 3 (val and test) patients always gets one patient in each of those
    splits. The result depends only on the records' patients and labels and the seed, not on
    their order.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be >= 0 "
            f"and add up to less than 1"
        )
    by_patient = _patients(records)
    majority = _majority_labels(records, by_patient)
    strata: dict[str, list[str]] = defaultdict(list)
    for pid in sorted(by_patient):
        strata[majority[pid]].append(pid)
    rng = np.random.default_rng(seed)
    patient_split: dict[str, str] = {}
    for label in sorted(strata):
        pids = [strata[label][i] for i in rng.permutation(len(strata[label]))]
        sizes = [len(by_patient[p]) for p in pids]
        patient_split.update(zip(pids, _cut(sizes, val_fraction, test_fraction)))
    return [patient_split[rec.patient_id] for rec in records]


def _cut(sizes: list[int], val_fraction: float, test_fraction: float) -> list[str]:
    """Split shuffled patients (given their image counts) at image fractions test | val | train.

    A patient goes where the middle of its images falls, then small strata are topped up so
    val and test are not empty when there are enough patients.
    """
    total = sum(sizes)
    test_end = test_fraction * total
    val_end = test_end + val_fraction * total
    out, start = [], 0
    for size in sizes:
        middle = start + size / 2
        out.append("test" if middle < test_end else "val" if middle < val_end else "train")
        start += size
    wanted = [("val", val_fraction, 2), ("test", test_fraction, 3)]
    for name, fraction, min_patients in wanted:
        if fraction > 0 and name not in out and len(out) >= min_patients:
            donor = _donor(out, sizes)
            if donor is not None:
                out[donor] = name
    return out


def _donor(out: list[str], sizes: list[int]) -> int | None:
    """The smallest patient of the largest split that can give one away (keeping >= 1)."""
    counts = Counter(out)
    for split, n in counts.most_common():
        if n > 1:
            return min((i for i, s in enumerate(out) if s == split), key=lambda i: sizes[i])
    return None


def check_leakage(records: Sequence[Record], splits: Sequence[str]) -> None:
    """Refuse a split that puts one patient in two splits (or is not a split of these records)."""
    if len(splits) != len(records):
        raise DataError(f"split has {len(splits)} entries for {len(records)} images")
    bad = sorted({s for s in splits if s not in SPLITS})
    if bad:
        raise DataError(f"unknown split names {bad}; use {', '.join(SPLITS)}")
    seen: dict[str, set[str]] = defaultdict(set)
    for rec, split in zip(records, splits):
        seen[rec.patient_id].add(split)
    leaky = sorted(pid for pid, s in seen.items() if len(s) > 1)
    if leaky:
        pid = leaky[0]
        where = " and ".join(s for s in SPLITS if s in seen[pid])
        more = f" ({len(leaky)} leaking patients in all)" if len(leaky) > 1 else ""
        raise LeakageError(
            f"patient {pid} is in both {where}{more}; split by patient (edgecxr.data.split_by_patient)"
        )


def save_splits(path: str | Path, records: Sequence[Record], splits: Sequence[str]) -> Path:
    """Write ``file,label,patient_id,source,group,split`` (absolute file paths), atomically."""
    from .io import atomic_write_text

    check_leakage(records, splits)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "label", "patient_id", "source", "group", "split"])
    for rec, split in zip(records, splits):
        writer.writerow([rec.file, rec.label, rec.patient_id, rec.source, rec.group, split])
    return atomic_write_text(path, buf.getvalue())


_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "test": "test", "testing": "test"}


def load_splits(path: str | Path, records: Sequence[Record]) -> list[str]:
    """Read a splits CSV (``file,split``, other columns ignored) for ``records`` and check it.

    A row's file may be absolute, relative to the CSV's folder, or the tail of a record's path
    (``normal/x.jpg``) as long as that tail names one image. Raises DataError for files that
    are not in the data set, images with no split, unknown split names or an empty train split,
    and LeakageError when a patient is in two splits.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: splits file not found")
    columns, rows = _read_csv(path)
    if not rows or "file" not in columns or "split" not in columns:
        raise DataError(f"{path}: a splits file needs the columns file,split (and one row per image)")
    lookup = _FileLookup(records)
    splits: list[str | None] = [None] * len(records)
    unknown_files, bad_names = [], set()
    for row in rows:
        name, raw = row.get("file", "").strip(), row.get("split", "").strip()
        split = _SPLIT_ALIASES.get(raw.lower())
        if split is None:
            bad_names.add(raw or "<empty>")
            continue
        index = lookup.find(name, path.parent)
        if index is None:
            unknown_files.append(name)
            continue
        if splits[index] not in (None, split):
            raise DataError(f"{path}: {name} is listed in both {splits[index]} and {split}")
        splits[index] = split
    if bad_names:
        raise DataError(f"{path}: unknown split names {sorted(bad_names)}; use {', '.join(SPLITS)}")
    if unknown_files:
        raise DataError(
            f"{path}: {len(unknown_files)} files are not in the data set (e.g. {unknown_files[0]})"
        )
    missing = [records[i].file for i, s in enumerate(splits) if s is None]
    if missing:
        raise DataError(
            f"{path}: {len(missing)} of {len(records)} images have no split (e.g. {missing[0]})"
        )
    if "train" not in splits:
        raise DataError(f"{path}: the train split is empty")
    check_leakage(records, splits)
    return list(splits)


class _FileLookup:
    """Find a record by absolute path, path relative to a folder, or a unique path tail."""

    def __init__(self, records: Sequence[Record]):
        self.exact = {os.path.normcase(os.path.normpath(r.file)): i for i, r in enumerate(records)}
        self.tails: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for i, rec in enumerate(records):
            parts = Path(rec.file).parts
            for k in (1, 2, 3):
                self.tails[tuple(parts[-k:])].append(i)

    def find(self, name: str, base: Path) -> int | None:
        candidate = Path(name) if Path(name).is_absolute() else base / name
        key = os.path.normcase(os.path.normpath(str(candidate.absolute())))
        if key in self.exact:
            return self.exact[key]
        parts = tuple(p for p in Path(name).parts if p not in ("/", ".", ""))
        for k in (3, 2, 1):
            if len(parts) >= k:
                hits = self.tails.get(parts[-k:], [])
                if len(hits) == 1:
                    return hits[0]
        return None


def split_summary(records: Sequence[Record], splits: Sequence[str]) -> str:
    """A small table of images (patients) per label and split, for training logs."""
    labels = [lab for lab in known_labels({r.label: () for r in records}) if any(r.label == lab for r in records)]
    images: Counter = Counter()
    patients: dict[tuple[str, str], set] = defaultdict(set)
    for rec, split in zip(records, splits):
        images[(rec.label, split)] += 1
        patients[(rec.label, split)].add(rec.patient_id)
    width = max(len(lab) for lab in labels + ["label"])
    lines = [f"{'label':<{width}}" + "".join(f"{s:>16}" for s in SPLITS)]
    for lab in labels:
        cells = "".join(f"{f'{images[(lab, s)]} ({len(patients[(lab, s)])} pt)':>16}" for s in SPLITS)
        lines.append(f"{lab:<{width}}{cells}")
    return "\n".join(lines)


def load_split_arrays(
    records: Sequence[Record],
    splits: Sequence[str],
    which: str | Iterable[str],
    size: int,
    on_error: Callable[[str, str], None] | None = None,
    equalize: bool = False,
    progress: str | None = None,
) -> tuple[np.ndarray, list[Record]]:
    """Load the images of one split (or several) as uint8 ``(N, size, size, 3)`` plus their Records.

    ``which`` is compared with ``splits`` as given (callers may label all records ``"eval"``).
    Unreadable files are passed to ``on_error(path, message)`` and left out of both results.
    ``progress`` labels a progress bar (see ``preprocess.load_images``).
    """
    wanted = {which} if isinstance(which, str) else set(which)
    chosen = [rec for rec, split in zip(records, splits) if split in wanted]
    arrays, ok = load_images([rec.file for rec in chosen], size, on_error=on_error, equalize=equalize,
                             progress=progress)
    return arrays, [chosen[i] for i in ok]


# --- checking ----------------------------------------------------------------------------------


@dataclass
class _ImageFacts:
    digest: str | None
    size: tuple[int, int] | None
    mode: str | None
    error: str | None


def _inspect(file: str) -> _ImageFacts:
    """Hash the bytes, read the header, then decode fully: Image.verify() checks little for JPEG."""
    try:
        with open(file, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return _ImageFacts(None, None, None, f"cannot read file ({exc.strerror})")
    digest = hashlib.sha1(data).hexdigest()
    if not data:
        return _ImageFacts(digest, None, None, "empty file")
    if Path(file).suffix.lower() in dicom.DICOM_SUFFIXES or dicom.looks_like_dicom(data):
        try:  # the loader's own DICOM path, so check reports what training will see
            img = dicom.read_dicom(data, name="DICOM")
        except ImageError as exc:
            return _ImageFacts(digest, None, None, str(exc).removeprefix("DICOM: "))
        return _ImageFacts(digest, img.size, img.mode, None)
    try:
        with Image.open(io.BytesIO(data)) as img:
            size, mode = img.size, img.mode
            img.load()
    except UnidentifiedImageError:
        return _ImageFacts(digest, None, None, "not an image Pillow can read")
    except _DECODE_ERRORS as exc:
        return _ImageFacts(digest, None, None, f"damaged image ({exc.__class__.__name__}: {exc})")
    return _ImageFacts(digest, size, mode, None)


@dataclass
class DataReport:
    """What ``edgecxr data check`` found; ``usable`` is False when training could not start."""

    path: str
    layout: str
    n_images: int = 0
    n_patients: int = 0
    classes: dict[str, int] = field(default_factory=dict)  # images per label
    patients: dict[str, int] = field(default_factory=dict)  # patients per label
    sources: dict[str, int] = field(default_factory=dict)  # images per source
    source_groups: dict[str, str] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)  # images per group
    sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> images, most common first
    width_range: tuple[int, int] | None = None
    height_range: tuple[int, int] | None = None
    modes: dict[str, int] = field(default_factory=dict)
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    duplicates: list[list[str]] = field(default_factory=list)  # groups of byte-identical files
    duplicate_conflicts: int = 0  # duplicate groups spanning labels or patients
    multi_class_patients: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def usable(self) -> bool:
        return not self.problems

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "usable": self.usable}, indent=2)

    def to_text(self) -> str:
        return "\n".join(_report_lines(self))


def check_data(path: str | Path, workers: int | None = None) -> DataReport:
    """Read a data set and decode every image once to report what training would run into.

    Raises DataError when ``path`` is not a data set at all (missing, empty, wrong file); a
    data set that exists but cannot be trained on comes back with ``usable`` False and the
    reasons in ``problems``.
    """
    start = time.perf_counter()
    dataset = _read_dataset(path)
    records = dataset.records
    layout = dataset.layout + (f" ({Path(dataset.manifest).name})" if dataset.manifest else "")
    report = DataReport(path=str(path), layout=layout, notes=list(dataset.notes))
    _count(report, records)
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        facts = list(pool.map(_inspect, [r.file for r in records], chunksize=32))
    _describe_images(report, records, facts)
    _find_problems(report, [r for r, f in zip(records, facts) if f.error is None], len(records))
    report.seconds = round(time.perf_counter() - start, 2)
    log.info("checked %d images in %.1f s", len(records), report.seconds)
    return report


def _count(report: DataReport, records: Sequence[Record]) -> None:
    by_label = Counter(r.label for r in records)
    report.n_images = len(records)
    report.n_patients = len({r.patient_id for r in records})
    report.classes = {lab: by_label[lab] for lab in known_labels(dict.fromkeys(by_label)) if by_label[lab]}
    report.patients = {
        lab: len({r.patient_id for r in records if r.label == lab}) for lab in report.classes
    }
    report.sources = dict(Counter(r.source for r in records).most_common())
    report.source_groups = {r.source: r.group for r in records}
    report.groups = dict(Counter(r.group for r in records).most_common())
    labels_of: dict[str, set] = defaultdict(set)
    for rec in records:
        labels_of[rec.patient_id].add(rec.label)
    report.multi_class_patients = {
        pid: [lab for lab in known_labels(dict.fromkeys(labs)) if lab in labs]
        for pid, labs in sorted(labels_of.items())
        if len(labs) > 1
    }


def _describe_images(report: DataReport, records: Sequence[Record], facts: list[_ImageFacts]) -> None:
    readable = [f for f in facts if f.error is None]
    report.unreadable = [(r.file, f.error) for r, f in zip(records, facts) if f.error is not None]
    report.sizes = dict(Counter(f"{f.size[0]}x{f.size[1]}" for f in readable).most_common())
    report.modes = dict(Counter(f.mode for f in readable).most_common())
    if readable:
        widths = [f.size[0] for f in readable]
        heights = [f.size[1] for f in readable]
        report.width_range = (min(widths), max(widths))
        report.height_range = (min(heights), max(heights))
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(facts):
        if f.digest is not None and f.error != "empty file":
            by_digest[f.digest].append(i)
    groups = [idx for idx in by_digest.values() if len(idx) > 1]
    report.duplicates = [[records[i].file for i in idx] for idx in groups]
    report.duplicate_conflicts = sum(
        len({(records[i].label, records[i].patient_id) for i in idx}) > 1 for idx in groups
    )


def _find_problems(report: DataReport, readable: Sequence[Record], n_images: int) -> None:
    """Reasons training could not start, judged on the images that can actually be read."""
    labels = {r.label for r in readable}
    if n_images == 0:
        report.problems.append("no images found")
        return
    if not readable:
        report.problems.append("no image can be read")
        return
    classes = labels & set(CLASS_NAMES)
    if len(classes) < 2 and classes:
        report.problems.append(
            f"only one class with readable images ({', '.join(labels)}); training needs at least 2"
        )
    if classes:  # a set of partial labels only is extra data, noted below
        problem = empty_class_problem(readable)
        if problem:
            report.problems.append(problem)
    if not classes:
        report.notes.append(
            f"only partial labels ({', '.join(sorted(labels))}): use this set as extra data or for "
            "evaluation, not on its own"
        )


def _report_lines(r: DataReport):
    """Compact text: one block per question a user asks before training."""
    yield f"data set: {r.path}  [{r.layout}, checked in {r.seconds:.1f} s]"
    yield f"images: {r.n_images}   patients: {r.n_patients}   labels: {len(r.classes)}"
    if r.classes:
        width = max(len(k) for k in r.classes)
        yield f"  {'label':<{width}}  images  patients"
        for lab, n in r.classes.items():
            yield f"  {lab:<{width}}  {n:>6}  {r.patients[lab]:>8}"
    if r.sources:
        yield "sources: " + ", ".join(
            f"{s} {n} ({r.source_groups.get(s, 'unknown')})" for s, n in r.sources.items()
        )
    if r.sizes:
        top = ", ".join(f"{s} ({n})" for s, n in list(r.sizes.items())[:3])
        rest = len(r.sizes) - 3
        yield (
            f"sizes: {top}" + (f", {rest} other sizes" if rest > 0 else "")
            + f"; width {r.width_range[0]}-{r.width_range[1]}, height {r.height_range[0]}-{r.height_range[1]}"
        )
        yield "modes: " + ", ".join(f"{m} ({n})" for m, n in r.modes.items())
    yield f"unreadable files: {len(r.unreadable)}"
    for file, reason in r.unreadable[:10]:
        yield f"  {_short(file, r.path)}: {reason}"
    if len(r.unreadable) > 10:
        yield f"  ... and {len(r.unreadable) - 10} more"
    n_extra = sum(len(g) - 1 for g in r.duplicates)
    yield (
        f"exact duplicates: {len(r.duplicates)} groups ({n_extra} extra copies"
        f", {r.duplicate_conflicts} across labels or patients)"
    )
    for group in r.duplicates[:5]:
        yield "  " + " = ".join(_short(f, r.path) for f in group)
    if len(r.duplicates) > 5:
        yield f"  ... and {len(r.duplicates) - 5} more groups (--json lists all)"
    combos = Counter(" + ".join(labs) for labs in r.multi_class_patients.values())
    yield f"patients in several classes: {len(r.multi_class_patients)}" + (
        " (" + ", ".join(f"{c}: {n}" for c, n in combos.most_common()) + "; each stays in one split)"
        if combos else ""
    )
    for note in r.notes:
        yield f"note: {note}"
    for problem in r.problems:
        yield f"problem: {problem}"
    yield "usable: " + ("yes" if r.usable else "NO")


def _short(file: str, root: str) -> str:
    """A file relative to the data set, for reading; absolute when that is not possible."""
    base = Path(root).absolute()
    try:
        return os.path.relpath(file, base if base.is_dir() else base.parent)
    except ValueError:  # another drive on Windows
        return file
