"""The README's tour runs as written: every ```bash block of the section "A tour of the pipeline"
(up to the next ``## `` heading), line by line and in order, in a temporary directory.

What the test changes, and nothing else:

- the ``DATA=...`` line is not run; ``DATA`` is set to a small synthetic class-folder data set
  instead (48 images of 64 px, in folders named as in ../shared/data/cxr: ``normal/``,
  ``covid19/``, ``bacterial/``, ``viral/``), so ``"$DATA"`` and ``"$DATA"/covid19`` resolve;
- ``--epochs N`` becomes ``--epochs 1 --image-size 32`` (a from-scratch MobileNetV3Small in seconds;
  a run started with ``--config`` inherits both from that config.json);
- ``edgecxr export`` gets ``--max-drop 100 --force``: a one-epoch network is close to uniform, so int8
  may flip top-1 answers and it may predict one class for everything; the guard and the useless-model
  refusal (both tested in test_export.py) would rightly refuse it;
- ``edgecxr bench`` gets ``--runs 5 --warmup 1`` (timing, not accuracy, is what it shortens).

Each line must exit 0, and before it runs, every file or glob it names (its arguments with a ``/``
or a model/CSV/JSON suffix, other than ``--out`` targets) must exist: that is what the lines before
it promised to write. ``edgecxr`` is the console script; PYTHONPATH points it at this checkout.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOUR_HEADING = "## A tour of the pipeline"
USED_SUFFIXES = (".tflite", ".csv", ".json", ".h5")


def tour_lines(readme: Path = ROOT / "README.md") -> list[str]:
    """The shell lines of the tour's bash blocks: continuations joined, blank and comment lines dropped."""
    text = readme.read_text(encoding="utf-8")
    start = text.index(TOUR_HEADING)
    end = text.find("\n## ", start + len(TOUR_HEADING))
    section = text[start:end if end != -1 else None]
    lines: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", section, flags=re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)
        lines += [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return lines


def adapt(line: str) -> str:
    """The line with the test's smaller settings (see the module docstring)."""
    line = re.sub(r"--epochs \d+", "--epochs 1 --image-size 32", line)
    words = shlex.split(line, comments=True)
    if words[:2] == ["edgecxr", "export"]:
        line = line.replace("edgecxr export", "edgecxr export --max-drop 100 --force", 1)
    if words[:2] == ["edgecxr", "bench"]:
        line = line.replace("edgecxr bench", "edgecxr bench --runs 5 --warmup 1", 1)
    return line


def used_paths(line: str, env: dict) -> list[str]:
    """The files (or globs) a line reads: arguments with a '/' or a model/CSV suffix, not --out values."""
    expanded = [w.replace("$DATA", env["DATA"]) for w in shlex.split(line, comments=True)]
    return [w for prev, w in zip(["", *expanded], expanded)
            if prev != "--out" and not w.startswith("-") and ("/" in w or w.endswith(USED_SUFFIXES))]


def make_collection(root: Path) -> Path:
    from synthetic import CLASSES, FOLDER_NAMES, make_dataset

    data = make_dataset(root, per_class=12, size=64, layout="folders")
    for label in CLASSES:  # the shared collection's folder names, which the tour uses ("$DATA"/covid19)
        (data / FOLDER_NAMES[label]).rename(data / f"{label}.tmp")
        (data / f"{label}.tmp").rename(data / label)
    return data


def test_tour_lines_are_found_and_adapted():
    lines = tour_lines()
    assert lines[0].startswith("DATA=") and any(line.startswith("edgecxr export") for line in lines)
    assert all(line.startswith(("edgecxr ", "DATA=")) for line in lines), lines
    assert adapt("edgecxr train x --out runs/a --epochs 15").endswith("--epochs 1 --image-size 32")
    assert adapt("edgecxr export runs/a --quantize int8") == "edgecxr export --max-drop 100 --force runs/a --quantize int8"
    assert used_paths('edgecxr evaluate runs/a/m.tflite --data "$DATA" --out runs/x  # ./eval', {"DATA": "/d"}) == [
        "runs/a/m.tflite", "/d"]


@pytest.mark.long
def test_readme_tour_runs_as_written(tmp_path):
    if shutil.which("edgecxr") is None:
        pytest.skip("the edgecxr console script is not installed (pip install -e .)")
    work = tmp_path / "work dir"
    work.mkdir()
    env = dict(os.environ, DATA=str(make_collection(tmp_path / "cxr data")), MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join([str(ROOT / "toolkit"), os.environ.get("PYTHONPATH", "")]),
               TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    env.pop("EDGECXR_MODEL", None)
    for line in tour_lines():
        if line.startswith("DATA="):
            continue
        for used in used_paths(line, env):
            assert glob.glob(str(work / used) if not os.path.isabs(used) else used), (
                f"{used!r}, used by README line {line!r}, was not written by the lines before it")
        run = adapt(line)
        result = subprocess.run(["bash", "-c", run], cwd=work, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, f"README line failed: {line}\n(ran: {run})\n{result.stderr[-3000:]}"
    # what the tour's comments promise
    export = work / "runs" / "a" / "export"
    for stem in ("edgecxr_float16", "edgecxr_int8_uint8io"):
        for suffix in (".tflite", ".json", ".md"):
            assert (export / (stem + suffix)).is_file(), stem + suffix
    assert (work / "runs" / "a" / "eval-test" / "metrics.json").is_file()
    assert (work / "eval-edgecxr_float16-test" / "metrics.json").is_file()


def test_a_missing_model_path_is_a_one_line_not_found(tmp_path):
    """The tour's first mistake to make: a path that is not there (a typo, a file not exported yet)."""
    missing = tmp_path / "runs" / "a" / "export" / "nothing.tflite"
    for args in (["evaluate", str(missing), "--data", str(tmp_path)],
                 ["predict", "--model", str(missing), str(tmp_path / "x.png")],
                 ["bench", str(missing)]):
        result = subprocess.run([sys.executable, "-m", "edgecxr.cli", *args], capture_output=True, text=True,
                                env=dict(os.environ, PYTHONPATH=str(ROOT / "toolkit")), timeout=120)
        assert result.returncode != 0, args
        errors = [line for line in (result.stderr + result.stdout).splitlines() if str(missing) in line]
        assert errors and "Traceback" not in result.stderr, result.stderr
        assert any(f"{missing}: " in line and "not found" in line for line in errors), errors
    evaluate = subprocess.run([sys.executable, "-m", "edgecxr.cli", "evaluate", str(missing), "--data", "x"],
                              capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT / "toolkit")))
    assert evaluate.stderr.startswith(f"error: {missing}: not found") and evaluate.stderr.count("\n") == 1
