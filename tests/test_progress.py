"""Progress bars on a terminal, silence in logs, and the epoch line that names every number."""

import os
import pty
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from edgecxr.preprocess import load_images
from edgecxr.progress import NoBar, predict_in_batches, progress

TOOLKIT = str(Path(__file__).resolve().parents[1] / "toolkit")


def _images(tmp_path, n=3):
    paths = []
    for i in range(n):
        Image.new("L", (20, 20), 40 * i).save(tmp_path / f"film{i}.png")
        paths.append(str(tmp_path / f"film{i}.png"))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    return paths + [str(tmp_path / "broken.png")]


def test_loading_draws_a_bar_on_a_terminal_and_reports_skips_after_it(tmp_path):
    paths = _images(tmp_path)
    code = ("import sys\n"
            "from edgecxr.preprocess import load_images\n"
            f"arrays, ok = load_images({paths!r}, 16, progress='loading images',\n"
            "    on_error=lambda p, m: print('skipped', p, file=sys.stderr))\n"
            "print(len(ok))\n")
    leader, follower = pty.openpty()
    done = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=follower, timeout=60,
                          env={**os.environ, "PYTHONPATH": TOOLKIT})
    os.close(follower)
    err = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        err += chunk
    os.close(leader)
    err = err.decode()
    assert done.returncode == 0 and done.stdout == b"3\n"
    assert "loading images" in err and "4/4" in err
    # the skip message comes after the finished bar, on a line of its own
    assert err.rindex("4/4") < err.index("skipped") and "\nskipped" in err.replace("\r", "\n")


def test_no_bar_when_stderr_is_not_a_terminal(tmp_path, capfd):
    skipped = []
    arrays, ok = load_images(_images(tmp_path), 16, progress="loading images",
                             on_error=lambda p, m: skipped.append(p))
    assert ok == [0, 1, 2] and arrays.shape == (3, 16, 16, 3) and len(skipped) == 1
    assert capfd.readouterr().err == ""


def test_a_bar_can_be_asked_for_and_prints_its_lines():
    with progress(False, 10, "x") as bar:
        assert isinstance(bar, NoBar)
    with progress(None, 0, "nothing to do") as bar:
        assert isinstance(bar, NoBar)


def test_predict_in_batches_matches_one_call_and_moves_the_bar():
    class Count:
        n = 0

        def update(self, k):
            self.n += k

    x = np.arange(150 * 2, dtype=np.float32).reshape(150, 2)
    bar, calls = Count(), []

    def predict(a):
        calls.append(len(a))
        return a * 2

    out = predict_in_batches(predict, x, bar, batch=64)
    assert np.array_equal(out, x * 2) and calls == [64, 64, 22] and bar.n == 150


def test_epoch_line_names_every_number_and_explains_best():
    from edgecxr.train import epoch_line

    logs = {"loss": 0.91234, "accuracy": 0.61, "val_loss": 1.02, "val_accuracy": 0.552,
            "val_macro_sensitivity": 0.531, "epoch_seconds": 41.24, "best": 1.0}
    line = epoch_line(2, 15, logs, "val_macro_sensitivity", 0.531, 2, True)
    assert line == ("epoch 3/15  train loss 0.912  train acc 61.0%  val loss 1.020  val acc 55.2%  "
                    "val macro sens 53.1%  41.2 s/epoch | best val_macro_sensitivity 0.5310 (epoch 3, saved)")
    later = epoch_line(3, 15, {**logs, "val_macro_sensitivity": 0.5}, "val_macro_sensitivity", 0.531, 2, False)
    assert later.endswith("| best val_macro_sensitivity 0.5310 (epoch 3)")
    assert "best: 1" not in line and "1.0000" not in line
