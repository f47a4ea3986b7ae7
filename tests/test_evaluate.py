"""`edgecxr evaluate` on an exported .tflite: where results go, and which mistakes it refuses."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edgecxr.cli import main


def _evaluate(*args):
    return CliRunner().invoke(main, ["evaluate", *map(str, args)])


def test_results_go_to_the_working_directory_not_beside_the_model(tiny_tflite, synthetic_folder, tmp_path,
                                                                   monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    beside = set(tiny_tflite.int8.parent.iterdir())
    result = _evaluate(tiny_tflite.int8, "--data", synthetic_folder)
    assert result.exit_code == 0, result.stderr
    out = work / "eval-tiny int8-all"  # no splits file: every image, and the name says so
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluated"]["split"] == "all" and metrics["evaluated"]["images"] == 48
    assert (out / "report.md").is_file() and (out / "predictions.csv").is_file()
    assert set(tiny_tflite.int8.parent.iterdir()) == beside
    assert "no splits file given: scoring every image" in result.stderr
    # "wrote" names every file it wrote, and nothing else is there
    wrote = next(line for line in result.stderr.splitlines() if line.startswith("wrote "))
    assert wrote == f"wrote {out}/: " + ", ".join(sorted((p.name for p in out.iterdir()), key=_order))


def _order(name):
    from edgecxr.evaluate import EVALUATION_FILES

    return EVALUATION_FILES.index(name)


def test_the_default_results_folder_is_ignored_by_git():
    import shutil
    import subprocess
    from pathlib import Path

    import pytest

    repo = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    done = subprocess.run(["git", "check-ignore", "-q", "eval-edgecxr_float16-test/metrics.json"], cwd=repo)
    assert done.returncode == 0


def test_an_earlier_evaluation_is_kept_unless_forced(tiny_tflite, synthetic_folder, tmp_path, monkeypatch):
    out = tmp_path / "ev"
    assert _evaluate(tiny_tflite.int8, "--data", synthetic_folder, "--out", out).exit_code == 0
    (out / "report.md").write_text("my notes")
    again = _evaluate(tiny_tflite.int8, "--data", synthetic_folder, "--out", out)
    assert again.exit_code == 1 and "already exists" in again.stderr and "--force" in again.stderr
    assert (out / "report.md").read_text() == "my notes"
    assert (out / "reliability.png").is_file()
    from edgecxr import report

    monkeypatch.setattr(report, "_matplotlib", lambda: None)  # this time no plots are drawn
    forced = _evaluate(tiny_tflite.int8, "--data", synthetic_folder, "--out", out, "--force")
    assert forced.exit_code == 0, forced.stderr
    assert (out / "report.md").read_text() != "my notes"
    # the earlier evaluation's plots do not survive to pass for this one's
    assert not (out / "reliability.png").exists() and not (out / "confusion_matrix.png").exists()
    assert f"wrote {out}/: metrics.json, report.md, predictions.csv" in forced.stderr


def test_an_explicit_split_without_a_splits_file_is_refused(tiny_tflite, synthetic_folder, tmp_path):
    result = _evaluate(tiny_tflite.int8, "--data", synthetic_folder, "--split", "test", "--out", tmp_path / "e")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: --split test needs a splits.csv "
                                     "(pass --splits FILE, e.g. a run's, or --split all)")
    assert not (tmp_path / "e").exists()


def test_option_mistakes_are_usage_errors(tiny_tflite, synthetic_folder, tmp_path):
    for args, named in ((["--split", "bogus"], "--split"), (["--threads", "0"], "--threads"),
                        (["--splits", tmp_path / "missing.csv"], "--splits")):
        result = _evaluate(tiny_tflite.int8, "--data", synthetic_folder, *args)
        assert result.exit_code == 2, args
        assert named in result.stderr and "Traceback" not in result.stderr
