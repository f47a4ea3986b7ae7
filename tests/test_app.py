"""The Kivy app in mobile_app/, driven headless, plus its Kivy-free logic and the `edgecxr app` command.

A Kivy App can run once per process and SDL must be told to draw off-screen before Kivy is
imported, so each scenario runs the real app in a subprocess (``python -m edgecxr_app.autopilot``)
with SDL_VIDEODRIVER=offscreen, a throw-away KIVY_HOME and XDG_CONFIG_HOME (where the app keeps its
settings). The autopilot's steps go through what a user triggers: the window's drop event, the Open
button's file chooser, the overlay toggle and the settings buttons, found by their kv ids. It writes
what the UI showed to JSON and saves screenshots through the app's own screenshot method.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "mobile_app"
sys.path.insert(0, str(APP_DIR))

pytestmark = pytest.mark.app
needs_kivy = pytest.mark.skipif(importlib.util.find_spec("kivy") is None, reason="Kivy not installed")


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Synthetic X-rays (grey, one per class), a coloured photo-like image and a broken file."""
    from synthetic import synthetic_image

    root = tmp_path_factory.mktemp("app images") / "x-rays with spaces"
    root.mkdir()
    paths = {}
    for i, label in enumerate(("covid19", "bacterial")):
        paths[label] = root / f"{label} film.png"
        Image.fromarray(synthetic_image(label, np.random.default_rng(10 + i), 64)).save(paths[label])
    rng = np.random.default_rng(1)
    paths["colour"] = root / "holiday photo.png"
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(paths["colour"])
    paths["broken"] = root / "broken.png"
    paths["broken"].write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return paths


def run_app(tmp_path, script: dict, timeout: float = 90) -> dict:
    script_path = tmp_path / "script.json"
    result_path = tmp_path / "result.json"
    script_path.write_text(json.dumps(script))
    env = {k: v for k, v in os.environ.items() if k != "EDGECXR_MODEL"}
    env.update(
        SDL_VIDEODRIVER="offscreen",
        KIVY_HOME=str(tmp_path / "kivy home"),
        XDG_CONFIG_HOME=str(tmp_path / "config"),
        KIVY_NO_ARGS="1",
    )
    proc = subprocess.run(
        [sys.executable, "-m", "edgecxr_app.autopilot", str(script_path), str(result_path)],
        cwd=APP_DIR, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert result_path.is_file(), f"the app wrote no result (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    result = json.loads(result_path.read_text())
    assert result["completed"], f"{result.get('error')}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["tensorflow_imported"] is False
    result["stderr"] = proc.stderr
    return result


def assert_screenshot(path, size):
    """A real rendering: the requested size, many colours, not one flat fill, notice bar in amber."""
    img = Image.open(path).convert("RGB")
    assert img.size == size
    arr = np.asarray(img)
    colours = len(np.unique(arr.reshape(-1, 3), axis=0))
    assert colours > 500, f"{path}: only {colours} colours"
    assert arr.std() > 20
    r, g, b = (int(v) for v in arr[-4, 4])  # bottom-left corner: inside the notice bar
    assert r > 200 and 150 < g < 220 and b < 110, f"notice bar not visible in {path}: {(r, g, b)}"


def assert_notice_visible(state):
    x, y, w, h = state["notice"]["rect"]
    win_w, win_h = state["window"]
    assert "not a diagnosis" in state["notice"]["text"]
    assert 0 <= x and 0 <= y and x + w <= win_w and y + h <= win_h and h >= 20
    assert state["notice"]["natural_text_width"] <= w  # shown in full, not shortened


# --- the app, headless --------------------------------------------------------------------------


@needs_kivy
@pytest.mark.long
def test_user_session_at_800x480(tiny_tflite, images, tmp_path):
    """Open by drop, toggle the overlay, survive a broken file, open by file chooser, history, settings."""
    from edgecxr.runtime import Classifier

    shots = tmp_path / "shots"
    script = {
        "model": str(tiny_tflite.uint8),
        "size": [800, 480],
        "steps": [
            ["state"],
            ["drop", str(images["covid19"])], ["wait"], ["state"],
            ["press", "overlay_toggle"], ["wait"], ["state"],
            ["screenshot", str(shots / "result 800x480.png")],
            ["open", str(images["broken"])], ["wait"], ["state"],
            ["choose"], ["pick", str(images["bacterial"])], ["wait"], ["state"],
            ["screen", "history"], ["press_history", 1], ["state"],
            ["screen", "settings"], ["press", "threads_2"], ["state"],
            ["screenshot", str(shots / "settings 800x480.png")],
        ],
    }
    start, dropped, overlaid, broken, picked, from_history, settings = run_app(tmp_path, script)["states"]
    expected = Classifier(tiny_tflite.uint8).predict(images["covid19"])

    # starts with the model's own labels, the notice, no camera control on a camera-less machine
    assert not start["has_result"] and start["model_name"] == "tiny uint8"
    assert [b["label"] for b in start["bars"]] == ["normal", "covid19", "bacterial", "viral"]
    assert_notice_visible(start)
    if not start["camera_available"]:
        assert start["camera_button"] == {"opacity": 0, "disabled": True, "width": 0}

    # the dropped image is classified exactly as the runtime classifies it
    assert dropped["has_result"] and dropped["image_name"] == images["covid19"].name
    assert dropped["result_label"] == expected.label
    shown = {b["label"]: b["value"] for b in dropped["bars"]}
    assert shown == pytest.approx(expected.probabilities, abs=1e-6)
    assert [b["label"] for b in dropped["bars"] if b["is_top"]] == [expected.label]
    assert dropped["bar_widgets"] == 4 and "ms" in dropped["timing"]
    assert dropped["warning"] == "" and not dropped["showing_overlay"]

    assert overlaid["show_overlay"] and overlaid["overlay_ready"] and overlaid["showing_overlay"]
    assert "saliency map" in overlaid["timing"]
    assert_screenshot(shots / "result 800x480.png", (800, 480))

    # a broken file: a friendly message, the previous result stays, the app goes on
    assert broken["status_kind"] == "error" and "broken.png" in broken["status"]
    assert "not a readable image" in broken["status"] and "Traceback" not in broken["status"]
    assert broken["image_name"] == images["covid19"].name and not broken["busy"]

    # opened through the file chooser; the overlay stays on and is computed for the new image
    assert picked["image_name"] == images["bacterial"].name and picked["popups"] == 0
    assert picked["status"] == "" and picked["showing_overlay"]
    assert [h["name"] for h in picked["history"]] == [images["bacterial"].name, images["covid19"].name]

    assert from_history["screen"] == "main" and from_history["image_name"] == images["covid19"].name
    assert from_history["result_label"] == expected.label

    assert settings["threads"] == 2 and settings["classifier_threads"] == 2
    assert "threads: 2" in settings["model_details"]
    assert_notice_visible(settings)
    assert_screenshot(shots / "settings 800x480.png", (800, 480))


@needs_kivy
@pytest.mark.long
def test_layouts_desktop_tablet_and_pi_with_synchronous_inference(tiny_tflite, images, tmp_path):
    """Start at 1280x800, warn on a colour image, then portrait tablet and the Pi's 800x480."""
    shots = tmp_path / "shots"
    script = {
        "model": str(tiny_tflite.float32),
        "size": [1280, 800],
        "synchronous": True,
        "steps": [
            ["open", str(images["colour"])], ["state"],
            ["open", str(images["covid19"])], ["press", "overlay_toggle"], ["state"],
            ["screenshot", str(shots / "desktop 1280x800.png")],
            ["size", 800, 1280], ["state"], ["screenshot", str(shots / "tablet 800x1280.png")],
            ["size", 800, 480], ["state"], ["screenshot", str(shots / "pi 800x480.png")],
        ],
    }
    colour, desktop, portrait, pi = run_app(tmp_path, script)["states"]

    # a photo is still classified, with a warning next to the result
    assert colour["has_result"] and "does not look like a chest X-ray" in colour["warning"]
    assert colour["image_texture_size"] == [64, 48]  # shown at its own aspect ratio

    assert desktop["warning"] == "" and desktop["showing_overlay"]
    assert_screenshot(shots / "desktop 1280x800.png", (1280, 800))
    assert_screenshot(shots / "tablet 800x1280.png", (800, 1280))
    assert_screenshot(shots / "pi 800x480.png", (800, 480))

    for state in (desktop, portrait, pi):
        assert_notice_visible(state)
        px, py, pw, ph = state["result_panel"]["rect"]
        ix, iy, iw, ih = state["image_rect"]
        assert state["result_panel"]["minimum_height"] <= ph + 0.5, state["window"]  # nothing squeezed
        assert px + pw <= state["window"][0] and py >= 0
        if state["window"][0] > state["window"][1]:
            assert px >= ix + iw  # landscape: results to the right of the image
        else:
            assert py + ph <= iy  # portrait: results below the image
        assert iw > 200 and ih > 200


@needs_kivy
@pytest.mark.long
def test_a_missing_model_is_reported_and_the_app_keeps_running(images, tmp_path):
    script = {
        "model": str(tmp_path / "no such model.tflite"),
        "size": [800, 480],
        "steps": [["state"], ["open", str(images["covid19"])], ["state"]],
    }
    start, after_open = run_app(tmp_path, script)["states"]
    assert start["status_kind"] == "error" and "Model not loaded" in start["status"]
    assert "no such model.tflite" in start["status"]
    assert after_open["status_kind"] == "error" and "choose a .tflite model" in after_open["status"]
    assert not after_open["has_result"]
    assert_notice_visible(after_open)


@needs_kivy
@pytest.mark.long
def test_app_image_argument_chooser_path_field_large_folder_and_remembered_folder(tiny_tflite, images, tmp_path):
    """`edgecxr app IMAGE` opens with the film analysed; the chooser starts where the last image came
    from (also in the next session), takes a typed path, and lists 2,000 films in a virtual list."""
    big = tmp_path / "two thousand films"
    (big / "a sub folder").mkdir(parents=True)
    film = images["covid19"].read_bytes()
    for i in range(2000):
        (big / f"film{i:04d}.PNG").write_bytes(film)  # upper-case suffix, as scanners write it
    (big / "notes.txt").write_text("not an image")
    first = {
        "model": str(tiny_tflite.uint8), "size": [800, 480], "image": str(images["covid19"]),
        "steps": [
            ["wait"], ["state"],
            ["choose"], ["wait_listing"], ["state"],
            ["type_path", str(big)], ["wait_listing"], ["state"],
            ["type_path", str(big / "no such folder")], ["state"],
            ["type_path", "film0007.PNG"], ["wait"], ["state"],
        ],
    }
    session = run_app(tmp_path, first)
    opened, chooser, large, typo, typed = session["states"]
    # typing into the path field does not make Kivy log an alarm about xclip/xsel
    assert "Cutbuffer" not in session["stderr"] and "CRITICAL" not in session["stderr"]
    assert opened["has_result"] and opened["image_name"] == images["covid19"].name
    assert opened["last_dir"] == str(images["covid19"].parent)

    assert chooser["chooser"]["path"] == str(images["covid19"].parent)
    assert chooser["chooser"]["path_field"] == str(images["covid19"].parent)
    assert chooser["chooser"]["rows"] == len(images)  # the four files, every one an image suffix

    listed = large["chooser"]
    assert listed["path"] == str(big) and not listed["listing"]
    assert listed["rows"] == 2001 and listed["status"] == "1 folders, 2000 files"
    assert listed["first_rows"] == ["a sub folder/", "film0000.PNG", "film0001.PNG"]
    assert listed["row_widgets"] < 60  # only the rows on screen are widgets

    assert typo["chooser"]["status_kind"] == "error" and "No such folder or file" in typo["chooser"]["status"]
    assert typo["chooser"]["path"] == str(big)  # still showing the folder

    # a file name typed relative to the folder shown opens it
    assert typed["popups"] == 0 and typed["image_name"] == "film0007.PNG" and typed["has_result"]

    # the next session's chooser opens in the folder the last image came from
    (tmp_path / "result.json").unlink()
    second = {"model": str(tiny_tflite.uint8), "size": [800, 480],
              "steps": [["choose"], ["wait_listing"], ["state"]]}
    (again,) = run_app(tmp_path, second)["states"]
    assert again["chooser"]["path"] == str(big) and again["last_dir"] == str(big)


def test_folder_listing_without_kivy(tmp_path):
    from edgecxr_app import browse

    (tmp_path / "B folder").mkdir()
    (tmp_path / "a folder").mkdir()
    (tmp_path / ".hidden").mkdir()
    for name in ("b.JPG", "a.png", "c.txt", ".d.png"):
        (tmp_path / name).write_bytes(b"x")
    listing = browse.list_folder(tmp_path, [".png", ".jpg"])
    assert listing.folders == ["a folder", "B folder"] and listing.files == ["a.png", "b.JPG"]
    assert "cannot open" in browse.list_folder(tmp_path / "gone", [".png"]).error
    assert browse.resolve("a.png", str(tmp_path)) == ("file", str(tmp_path / "a.png"))
    assert browse.resolve(str(tmp_path / "a folder"), "/") == ("folder", str(tmp_path / "a folder"))
    assert browse.resolve("nope", str(tmp_path))[0] == "missing"
    assert browse.start_folder(str(tmp_path / "a folder")) == str(tmp_path / "a folder")
    assert browse.start_folder(str(tmp_path / "gone")) in (os.getcwd(), str(Path.home()))


# --- the app's logic, without Kivy ----------------------------------------------------------------


def test_analyse_matches_the_runtime_and_keeps_the_aspect_ratio(tiny_tflite, tmp_path):
    from synthetic import synthetic_image

    from edgecxr.runtime import Classifier
    from edgecxr_app import analysis

    wide = tmp_path / "wide.png"
    gray = synthetic_image("viral", np.random.default_rng(0), 96)[:48]
    Image.fromarray(gray).save(wide)
    clf = Classifier(tiny_tflite.int8)
    result = analysis.analyse(clf, wide)
    assert result.display.shape == (48, 96, 3) and result.model_input.shape == (32, 32, 3)
    expected = clf.predict(wide)
    assert result.prediction.label == expected.label
    assert dict(result.bars) == pytest.approx(expected.probabilities, abs=1e-6)
    assert [name for name, _ in result.bars] == list(clf.spec.class_names)

    with_map = analysis.add_saliency(clf, result, fine=False)
    assert with_map.overlay.shape == result.display.shape and with_map.overlay.dtype == np.uint8
    assert with_map.saliency_ms > 0 and result.overlay is None  # the original is not modified


def test_display_image_follows_exif_rotation(tmp_path):
    from edgecxr_app import analysis

    path = tmp_path / "rotated.jpg"
    img = Image.new("RGB", (80, 40), (90, 90, 90))
    exif = img.getexif()
    exif[0x0112] = 6  # stored landscape, shown rotated by 90 degrees
    img.save(path, exif=exif.tobytes())
    assert analysis.display_image(path).shape == (80, 40, 3)


def test_xray_heuristic():
    from synthetic import synthetic_image

    from edgecxr_app import analysis

    gray = np.repeat(synthetic_image("normal", np.random.default_rng(0), 64)[..., None], 3, axis=-1)
    assert analysis.xray_warning(gray) == ""
    tinted = gray.copy()
    tinted[:4, :4] = (255, 0, 0)  # a small coloured marker on a real film is fine
    assert analysis.xray_warning(tinted) == ""
    photo = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert analysis.xray_warning(photo) == analysis.NOT_XRAY_COLOUR
    assert analysis.xray_warning(np.full((64, 64, 3), 128, np.uint8)) == analysis.NOT_XRAY_FLAT


def test_unreadable_files_raise_image_error_with_a_friendly_message(tiny_tflite, tmp_path):
    from edgecxr.errors import ImageError
    from edgecxr.runtime import Classifier
    from edgecxr_app import analysis

    broken = tmp_path / "scan.png"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(ImageError) as info:
        analysis.analyse(Classifier(tiny_tflite.uint8), broken)
    message = analysis.friendly_error(broken, info.value)
    assert "scan.png" in message and "\n" not in message
    gone = analysis.friendly_error(tmp_path / "gone.png", ImageError("gone.png: file not found"))
    assert "gone.png" in gone and "gone" in gone


# --- the `edgecxr app` command ----------------------------------------------------------------------


def test_cli_app_rejects_a_bad_model_in_one_line(tmp_path):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"junk")
    out = subprocess.run(
        [sys.executable, "-m", "edgecxr.cli", "app", "--model", str(bad)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1
    assert "Traceback" not in out.stderr


def test_cli_app_with_a_missing_image_fails_in_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "edgecxr.cli", "app", str(tmp_path / "no such film.png")],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr == f"error: {tmp_path / 'no such film.png'}: image not found\n"


def test_cli_app_without_kivy_says_so_in_one_line(tmp_path):
    fake = tmp_path / "site"
    (fake / "kivy").mkdir(parents=True)
    (fake / "kivy" / "__init__.py").write_text("raise ImportError('No module named kivy')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, "-m", "edgecxr.cli", "app"], capture_output=True, text=True, timeout=60, env=env,
    )
    assert out.returncode == 1
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1
    assert "kivy" in out.stderr.lower() and "edgecxr[app]" in out.stderr
