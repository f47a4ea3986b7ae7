"""edgecxr.fingerprint: export records the training split's content hashes in the sidecar, and bench and
evaluate say when the images they score are the model's own training images."""

import hashlib
import json
import shutil

import pytest
from click.testing import CliRunner
from synthetic import make_dataset

from edgecxr import fingerprint as fp
from edgecxr.cli import main


def test_content_hash_is_the_file_content_not_its_name(tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(b"film bytes")
    copy = tmp_path / "elsewhere" / "renamed.png"
    copy.parent.mkdir()
    shutil.copyfile(a, copy)
    (tmp_path / "b.png").write_bytes(b"other film")
    assert fp.content_hash(a) == hashlib.sha256(b"film bytes").digest()[:8].hex() == fp.content_hash(copy)
    assert fp.content_hash(tmp_path / "missing.png") is None
    hashes = fp.fingerprint([a, copy, tmp_path / "b.png", tmp_path / "missing.png"])
    assert hashes == sorted(hashes) and len(hashes) == 2 and all(len(h) == 16 for h in hashes)


def test_count_training_images_needs_a_fingerprint(tmp_path):
    film = tmp_path / "x.png"
    film.write_bytes(b"film")
    model = tmp_path / "m.tflite"
    model.write_bytes(b"")
    assert fp.count_training_images(model, [film]) is None  # no sidecar
    (tmp_path / "m.json").write_text(json.dumps({"class_names": ["a", "b"]}))
    assert fp.count_training_images(model, [film]) is None  # a sidecar from before fingerprints
    (tmp_path / "m.json").write_text(json.dumps({fp.FINGERPRINT_KEY: fp.fingerprint([film])}))
    assert fp.count_training_images(model, [film, film, tmp_path / "m.json"]) == 2


@pytest.fixture(scope="module")
def exported_tiny(tiny_run, tmp_path_factory):
    from edgecxr.config import TrainConfig
    from edgecxr.export import export

    run = tmp_path_factory.mktemp("fingerprint") / "run"
    shutil.copytree(tiny_run, run)
    result = export(run, "none", latency=False, log=lambda msg: None)
    return result.path, TrainConfig.load(run / "config.json").data, run


def bench_json(*args):
    result = CliRunner().invoke(main, ["bench", *map(str, args), "--runs", "1", "--warmup", "0", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_bench_and_evaluate_say_when_they_score_training_images(exported_tiny, tmp_path):
    model, data, run = exported_tiny
    sidecar = json.loads(model.with_suffix(".json").read_text())
    assert len(sidecar[fp.FINGERPRINT_KEY]) == 48  # the tiny run's training split: 48 of 64 images
    assert fp.FINGERPRINT_KEY not in model.read_bytes().decode("latin-1")  # not inside the .tflite

    report = bench_json(model, "--data", data)  # the whole data set, its training images included
    assert report["rows"][0]["training_images"] == 48 and report["rows"][0]["n_images"] == 64
    assert any(n.startswith("48 of 64 scored images are this model's training images") for n in report["notes"])
    table = CliRunner().invoke(main, ["bench", str(model), "--data", data, "--runs", "1", "--warmup", "0"])
    assert "note: 48 of 64 scored images are this model's training images" in table.stdout

    held_out = bench_json(model, "--data", data, "--splits", run / "splits.csv", "--split", "val")
    assert held_out["rows"][0]["training_images"] == 0 and held_out["rows"][0]["n_images"] == 16
    fresh = make_dataset(tmp_path / "fresh films", per_class=3, size=32, seed=7)
    report = bench_json(model, "--data", fresh)
    assert report["rows"][0]["training_images"] == 0
    assert not any("training images" in n for n in report["notes"])

    result = CliRunner().invoke(main, ["evaluate", str(model), "--data", data, "--out", str(tmp_path / "ev"),
                                       "--json"])
    assert result.exit_code == 0, result.output
    assert "note: 48 of 64 scored images are this model's training images" in result.stderr
    assert json.loads(result.stdout)["evaluated"]["training_images"] == 48
    result = CliRunner().invoke(main, ["evaluate", str(model), "--data", str(fresh), "--out", str(tmp_path / "ev2")])
    assert result.exit_code == 0 and "training images" not in result.stderr
