"""TensorFlow's and LiteRT's start-up chatter is filtered; real warnings and our own output are not."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgecxr import quiet

TOOLKIT = str(Path(__file__).resolve().parents[1] / "toolkit")

# Lines TensorFlow 2.21 / LiteRT 2.3 print, copied from a CPU-only run (issue 18).
CHATTER = """\
WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
I0000 00:00:1796192372.109326    5064 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results due to floating-point round-off errors from different computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.
I0000 00:00:1796192372.109747    5064 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.
I0000 00:00:1796192372.172157    5064 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.
To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 AVX_VNNI FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.
W0000 00:00:1796193171.013836    5687 tf_tfl_flatbuffer_helpers.cc:364] Ignored output_format.
I0000 00:00:1796193171.334122    5687 flatbuffer_export.cc:4302] Estimated count of arithmetic ops: 3.830 M  ops, equivalently 1.915 M  MACs
fully_quantize: 0, inference_type: 6, input_inference_type: UINT8, output_inference_type: UINT8
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
"""
REAL = "W0000 00:00:1796193171.1 5687 cpu_allocator_impl.cc:83] Allocation of 123456 exceeds 10% of free system memory.\n"


def test_chatter_is_noise_and_real_warnings_are_not():
    assert quiet.filter_text(CHATTER) == ""
    assert quiet.filter_text(CHATTER + REAL + "error: something else\n") == REAL + "error: something else\n"


def test_cuinit_failure_is_hidden_only_without_an_nvidia_driver(monkeypatch):
    line = ("E0000 00:00:1796192378.480630    5064 cuda_platform.cc:52] failed call to cuInit: "
            "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
    monkeypatch.setattr(quiet.os.path, "exists", lambda p: False)
    assert quiet.is_noise(line)
    monkeypatch.setattr(quiet.os.path, "exists", lambda p: p == "/proc/driver/nvidia")
    assert not quiet.is_noise(line)


def test_filtered_stderr_drops_c_level_noise_and_passes_the_rest(capfd):
    with quiet.filtered_stderr():
        os.write(2, (CHATTER + REAL).encode())
        with quiet.filtered_stderr():  # re-entrant
            os.write(2, b"inner line\n")
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert err == REAL + "inner line\n" + "after\n"


def _run(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": TOOLKIT}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # conftest sets it; a user's shell does not
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_python_writes_inside_the_block_reach_the_terminal_at_once():
    # a progress bar drawn inside the block must not wait for the block to end
    done = _run("import os, sys\n"
                "from edgecxr.quiet import filtered_stderr\n"
                "with filtered_stderr():\n"
                "    os.write(2, b'from C\\n')\n"
                "    print('from Python', file=sys.stderr)\n"
                "print('after', file=sys.stderr)\n")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["from Python", "from C", "after"]


def test_importing_tensorflow_through_the_project_prints_nothing():
    pytest.importorskip("tensorflow")
    done = _run("from edgecxr.errors import require\n"
                "tf = require('tensorflow', 'train'); require('tf_keras', 'train')\n"
                "tf.constant(1.0) + 1\n"
                "print('ok')\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"
    assert done.stderr == ""


def test_predict_prints_no_xnnpack_line(tiny_tflite, tmp_path):
    from PIL import Image

    Image.new("L", (40, 40), 90).save(tmp_path / "film.png")
    done = _run("from edgecxr.cli import main\n"
                f"main(['predict', '--model', {str(tiny_tflite.uint8)!r}, {str(tmp_path / 'film.png')!r}])\n")
    assert done.returncode == 0, done.stderr
    assert "XNNPACK delegate" not in done.stderr
    assert done.stderr.startswith("model ")


def test_warnings_read_as_one_line_without_the_source_location():
    done = _run("import warnings\n"
                "from edgecxr.quiet import plain_warnings\n"
                "from edgecxr import data\n"
                "plain_warnings()\n"
                "warnings.warn_explicit('3 images have no patient id', data.DataWarning, data.__file__, 403)\n"
                "warnings.warn_explicit('old API', UserWarning,\n"
                "                       '/usr/lib/python3/site-packages/somepkg/mod.py', 7)\n")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["warning: 3 images have no patient id",
                                        "warning: old API (UserWarning from somepkg)"]


def test_the_cli_shows_warnings_as_one_line(tmp_path):
    # file names without a patient id make `train` warn; the images are junk, so it stops right after
    pytest.importorskip("tensorflow")
    for folder in ("NORMAL", "Virus", "COVID-19", "bacteria"):
        (tmp_path / "data" / folder).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "data" / folder / f"x{i}.png").write_bytes(b"junk")
    done = _run("import sys\nfrom edgecxr.cli import main\n"
                f"sys.argv = ['edgecxr', 'train', {str(tmp_path / 'data')!r}, '--out', {str(tmp_path / 'run')!r},"
                " '--weights', 'none']\nmain()\n")
    assert done.returncode == 1 and "error: the training split has no readable images" in done.stderr
    warned = [line for line in done.stderr.splitlines() if not line.startswith(("skipped ", "error: "))]
    assert len(warned) == 1, done.stderr and warned[0].startswith("warning: ") and "no patient id" in warned[0]
    assert ".py:" not in done.stderr and "warnings.warn" not in done.stderr
