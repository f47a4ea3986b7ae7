"""The EdgeCXR app: state in Kivy properties, layout in ``edgecxr.kv``, inference in edgecxr.runtime.

Every way of getting an image in (file chooser, drag-and-drop, camera, Android picker) ends in
``EdgeCXRApp.open_image(path)``. The work (decode, classify, occlusion map) runs in a worker thread
and posts its result back to the Kivy thread with ``Clock.schedule_once``; ``synchronous=True``
runs it inline so a test can step through the app without waiting. No TensorFlow is imported.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import numpy as np
from kivy.app import App
from kivy.clock import Clock
from kivy.core.window import Window
from kivy.graphics.texture import Texture
from kivy.logger import Logger
from kivy.properties import (
    BooleanProperty,
    ListProperty,
    NumericProperty,
    ObjectProperty,
    OptionProperty,
    StringProperty,
)
from kivy.uix.behaviors import ButtonBehavior
from kivy.uix.label import Label
from kivy.uix.popup import Popup

from edgecxr.errors import EdgeCXRError
from edgecxr.preprocess import IMAGE_SUFFIXES

from . import analysis, browse
from .services import get_services, is_android

NOTICE = "Research software – not a medical device and not a diagnosis. Ask a clinician."
THUMBNAIL_SIDE = 96  # px, history list
IMAGE_FILTERS = [f"*{s}" for s in IMAGE_SUFFIXES]  # matched ignoring case: scanners write .JPG


class ChooserRow(ButtonBehavior, Label):
    """One folder or file in the chooser's list (a RecycleView row: only visible rows exist)."""

    path = StringProperty("")
    is_dir = BooleanProperty(False)
    selected = BooleanProperty(False)

    def on_release(self):
        popup = self.parent
        while popup is not None and not isinstance(popup, FileChooserPopup):
            popup = popup.parent
        if popup is not None:
            popup.tap(self.path, self.is_dir)


class FileChooserPopup(Popup):
    """The desktop and Pi stand-in for a system picker: a path field, Up, and the folder's list.

    The folder is read in a worker thread (``browse.list_folder``) and shown in a RecycleView, so
    a folder of thousands of films neither freezes the window nor builds a widget per file. Type
    a folder or a file into the field and press Enter to go there or open it; tap a folder to
    enter it, a file to select it, the selected file again (or Open) to open it.
    """

    filters = ListProperty([])  # suffixes the list shows, e.g. [".png", ".jpg"]
    start_path = StringProperty("")
    callback = ObjectProperty(None)  # called with the chosen path
    path = StringProperty("")  # the folder shown
    rows = ListProperty([])
    selection = ListProperty([])
    status = StringProperty("")
    status_kind = OptionProperty("info", options=["info", "error"])
    listing = BooleanProperty(False)  # a worker is reading the folder
    synchronous = BooleanProperty(False)  # list inline (tests)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._generation = 0
        Clock.schedule_once(lambda _dt: self.go(self.start_path or browse.start_folder("")), 0)

    def go(self, text: str) -> None:
        """Show the folder ``text`` names, or open the file it names."""
        kind, path = browse.resolve(text, self.path or browse.start_folder(""))
        if kind == "file":
            self.choose([path])
        elif kind == "folder":
            self._show(path)
        else:
            self.status, self.status_kind = f"No such folder or file: {path}", "error"

    def go_up(self) -> None:
        if self.path:
            self._show(str(Path(self.path).parent))

    def tap(self, path: str, is_dir: bool) -> None:
        if is_dir:
            self._show(path)
        elif self.selection == [path]:
            self.choose(self.selection)
        else:
            self.selection = [path]
            self.rows = [{**row, "selected": row["path"] == path} for row in self.rows]

    def choose(self, selection) -> None:
        if selection:
            self.dismiss()
            self.callback(selection[0])

    def _show(self, folder: str) -> None:
        self._generation += 1
        generation = self._generation
        self.path, self.selection, self.rows = folder, [], []
        self.listing, self.status, self.status_kind = True, f"Listing {folder} ...", "info"
        suffixes = [f.lstrip("*") for f in self.filters]
        if self.synchronous:
            self._listed(generation, browse.list_folder(folder, suffixes))
            return

        def work():
            result = browse.list_folder(folder, suffixes)
            Clock.schedule_once(lambda _dt: self._listed(generation, result), 0)

        threading.Thread(target=work, daemon=True).start()

    def _listed(self, generation: int, result) -> None:
        if generation != self._generation:
            return  # the user went elsewhere meanwhile
        self.listing = False
        if result.error:
            self.status, self.status_kind = result.error, "error"
            return
        self.rows = ([{"text": f"{name}/", "path": str(Path(result.folder) / name), "is_dir": True,
                       "selected": False} for name in result.folders]
                     + [{"text": name, "path": str(Path(result.folder) / name), "is_dir": False,
                         "selected": False} for name in result.files])
        noun = "file" if len(result.files) == 1 else "files"
        self.status = f"{len(result.folders)} folders, {len(result.files)} {noun}"


class CameraPopup(Popup):
    """A live camera view with a capture button; only built when a camera was detected."""

    target = StringProperty("")
    callback = ObjectProperty(None)  # called with the captured PNG's path

    def capture(self) -> None:
        camera = self.ids.camera
        camera.export_to_png(self.target)
        camera.play = False
        self.dismiss()
        self.callback(self.target)

    def on_dismiss(self):
        self.ids.camera.play = False


class EdgeCXRApp(App):
    """Offline chest X-ray classification with the shipped or a chosen ``.tflite`` model."""

    title = "EdgeCXR"
    notice = StringProperty(NOTICE)
    screen = OptionProperty("main", options=["main", "history", "settings"])

    # model and settings
    model_path = StringProperty("")
    model_name = StringProperty("No model loaded")
    model_details = StringProperty("")
    threads = NumericProperty(0)
    fine_saliency = BooleanProperty(True)

    # the current result
    busy = BooleanProperty(False)
    busy_text = StringProperty("")
    has_result = BooleanProperty(False)
    image_name = StringProperty("")
    image_texture = ObjectProperty(None, allownone=True)
    overlay_texture = ObjectProperty(None, allownone=True)
    show_overlay = BooleanProperty(False)
    result_label = StringProperty("")
    result_confidence = NumericProperty(0.0)
    bars = ListProperty([])  # [{"label": str, "value": 0..1, "is_top": bool}] in the model's class order
    timing = StringProperty("")
    warning = StringProperty("")
    status = StringProperty("")
    status_kind = OptionProperty("info", options=["info", "error"])

    history = ListProperty([])  # RecycleView rows for the history screen, newest first
    camera_available = BooleanProperty(False)
    drop_supported = BooleanProperty(False)
    legend_texture = ObjectProperty(None, allownone=True)

    def __init__(self, model_path=None, threads=None, synchronous=False, image_path=None, **kwargs):
        super().__init__(**kwargs)
        self._requested_model = str(model_path) if model_path else ""
        self._requested_image = str(image_path) if image_path else ""
        self._requested_threads = threads
        self.synchronous = synchronous
        self.classifier = None
        self.current = None  # analysis.Analysis on screen
        self._analyses = []  # kept alongside self.history, newest first
        self._pending = None  # a path that arrived while busy; only the latest is kept
        self._last_dir = ""
        self.services = None

    # --- lifecycle ---------------------------------------------------------------------------

    def get_application_config(self):
        # The default puts the .ini next to the app's code, i.e. into the repository.
        _ensure_config_home()
        return str(Path(self.user_data_dir) / "edgecxr.ini")

    def build_config(self, config):
        # last_dir: the folder the last image came from, where the file chooser opens next time
        config.setdefaults("edgecxr", {"model": "", "threads": "0", "fine_saliency": "1", "last_dir": ""})

    def on_screen(self, _app, name):
        if self.root is not None:
            self.root.ids.screens.current = name

    def on_start(self):
        from edgecxr.saliency import colormap

        self.services = get_services(self.user_data_dir)
        _quiet_cut_buffer_probe()
        self.drop_supported = self.services.supports_drop
        self.camera_available = self.services.has_camera()
        Window.bind(on_drop_file=self._on_drop_file, on_keyboard=self._on_keyboard)
        ramp = np.repeat(colormap(np.linspace(0.0, 1.0, 256))[None], 4, axis=0)
        self.legend_texture = rgb_texture(ramp)

        saved = self.config.get("edgecxr", "model")
        threads = self._requested_threads
        self.threads = int(threads if threads is not None else self.config.getint("edgecxr", "threads"))
        self.fine_saliency = self.config.getboolean("edgecxr", "fine_saliency")
        self._last_dir = self.config.get("edgecxr", "last_dir")
        if self._requested_model:
            self.use_model(self._requested_model, remember=False)
        elif saved and Path(saved).is_file():
            self.use_model(saved, remember=False)
        else:
            self.use_model(None, remember=False)
        if self._requested_image:  # `edgecxr app IMAGE`
            self.open_image(self._requested_image)

    # --- getting an image in -----------------------------------------------------------------

    def choose_image(self) -> None:
        """The Open button: the system picker on Android, Kivy's file chooser elsewhere."""
        if self.services.native_picker:
            self.services.pick_file("image/*", self.open_image)
            return
        FileChooserPopup(
            title="Open a chest X-ray",
            filters=IMAGE_FILTERS,
            start_path=browse.start_folder(self._last_dir),
            callback=self.open_image,
            synchronous=self.synchronous,
        ).open()

    def open_camera(self) -> None:
        if not self.camera_available:
            return

        def ready(granted):
            if not granted:
                self._set_status("Camera permission was not granted.", "error")
                return
            target = str(self.services.captured_photo_path())
            CameraPopup(title="Capture an X-ray", target=target, callback=self.open_image).open()

        self.services.request_camera(ready)

    def _on_drop_file(self, _window, filename, *_args):
        path = filename.decode("utf-8") if isinstance(filename, bytes) else str(filename)
        self.open_image(path)

    def open_image(self, path) -> None:
        """Classify one image file; the single entry point for every way of choosing one."""
        path = str(path)
        self._remember_folder(str(Path(path).resolve().parent))
        if self.classifier is None:
            self._set_status("No model is loaded: choose a .tflite model in Settings.", "error")
            return
        if self.busy:
            self._pending = path
            return
        self.screen = "main"
        self._start(f"Analysing {Path(path).name} ...")
        classifier = self.classifier
        self._submit(
            lambda: analysis.analyse(classifier, path),
            self._show_analysis,
            lambda exc: self._analysis_failed(path, exc),
        )

    # --- results -------------------------------------------------------------------------------

    def _show_analysis(self, result) -> None:
        self.busy = False
        self._display(result)
        self._analyses.insert(0, result)
        del self._analyses[analysis.HISTORY_LENGTH :]
        self.history = [self._history_row(i, a) for i, a in enumerate(self._analyses)]
        self._set_status("")
        if self.show_overlay:
            self._compute_overlay()
        self._run_pending()

    def _display(self, result) -> None:
        prediction = result.prediction
        self.current = result
        self.result_label = prediction.label
        self.result_confidence = float(prediction.probabilities.get(prediction.label, 0.0))
        self.bars = [
            {"label": name, "value": value, "is_top": name == prediction.label}
            for name, value in result.bars
        ]
        self.image_name = result.name
        self.image_texture = rgb_texture(result.display)
        self.overlay_texture = rgb_texture(result.overlay) if result.overlay is not None else None
        self.has_result = True
        self.timing = timing_text(result)
        self.warning = result.warning

    def _analysis_failed(self, path, exc) -> None:
        self.busy = False
        Logger.warning(f"EdgeCXR: {exc}")
        if isinstance(exc, EdgeCXRError):
            self._set_status(analysis.friendly_error(path, exc), "error")
        else:
            self._set_status(f"Something went wrong with {Path(path).name}; see the log.", "error")
        self._run_pending()

    def show_history_entry(self, index: int) -> None:
        if 0 <= index < len(self._analyses):
            self._display(self._analyses[index])
            self.screen = "main"
            if self.show_overlay and self.current.overlay is None:
                self._compute_overlay()

    def _history_row(self, index, result) -> dict:
        small = analysis.thumbnail(result.display, THUMBNAIL_SIDE)
        top = result.prediction
        return {
            "index": index,
            "name": result.name,
            "summary": f"{top.label}  {100 * top.probabilities.get(top.label, 0.0):.0f}%",
            "details": f"{_inference_ms(top):.1f} ms" + ("   [!] not X-ray-like" if result.warning else ""),
            "thumb": rgb_texture(small),
        }

    # --- saliency overlay --------------------------------------------------------------------

    def set_overlay(self, on: bool) -> None:
        """The overlay toggle: show the occlusion map, computing it the first time it is asked for."""
        self.show_overlay = bool(on)
        if self.show_overlay and self.current is not None and self.current.overlay is None:
            self._compute_overlay()

    def _compute_overlay(self) -> None:
        if self.busy or self.classifier is None:
            return  # _show_analysis calls back here when the running job ends
        current, classifier, fine = self.current, self.classifier, self.fine_saliency
        if current.class_names != list(classifier.spec.class_names):
            return  # the model changed since; its classes would not match this result
        self._start("Computing the saliency map ...")
        self._submit(
            lambda: analysis.add_saliency(classifier, current, fine=fine),
            lambda updated: self._show_overlay(current, updated),
            lambda exc: self._analysis_failed(current.file, exc),
        )

    def _show_overlay(self, old, updated) -> None:
        self.busy = False
        self._analyses = [updated if a is old else a for a in self._analyses]
        if self.current is old:
            self.current = updated
            self.overlay_texture = rgb_texture(updated.overlay)
            self.timing = timing_text(updated)
        self._set_status("")
        self._run_pending()

    # --- model and settings ------------------------------------------------------------------

    def use_model(self, path=None, remember=True) -> bool:
        """Load ``path`` (None: the shipped default); labels and preprocessing come from its spec."""
        from edgecxr.runtime import Classifier, default_model_path

        try:
            model = Path(path) if path else default_model_path()
            classifier = Classifier(model, num_threads=self.threads or None)
        except EdgeCXRError as exc:
            self._set_status(f"Model not loaded: {exc}", "error")
            return False
        spec = classifier.spec
        self.classifier = classifier
        self.model_path = str(model)
        # One name, the same predict and bench print: the spec's, which export makes the file stem.
        self.model_name = classifier.name
        version = f"edgecxr {spec.version} | " if spec.version else ""
        self.model_details = (
            f"{spec.quantization} | {spec.image_size} px | {', '.join(spec.class_names)} | {version}"
            f"{classifier.interpreter_name} {classifier.interpreter_version} | "
            f"threads: {self.threads or 'auto'}"
        )
        self._clear_result()
        self.bars = [{"label": name, "value": 0.0, "is_top": False} for name in spec.class_names]
        self._set_status(f"Model loaded: {classifier.name}")
        if remember:
            self.config.set("edgecxr", "model", str(path or ""))
            self.config.write()
        return True

    def choose_model(self) -> None:
        if self.services.native_picker:
            self.services.pick_file("*/*", self.use_model)  # .tflite has no registered MIME type
            return
        start = browse.start_folder(str(Path(self.model_path).parent) if self.model_path else "")
        FileChooserPopup(
            title="Choose a .tflite model", filters=["*.tflite"], start_path=start,
            callback=self.use_model, synchronous=self.synchronous,
        ).open()

    def _remember_folder(self, folder: str) -> None:
        """Keep the folder of the last image (in edgecxr.ini in App.user_data_dir) for the chooser."""
        if folder == self._last_dir:
            return
        self._last_dir = folder
        if self.config is not None:
            self.config.set("edgecxr", "last_dir", folder)
            self.config.write()

    def set_threads(self, threads: int) -> None:
        self.threads = int(threads)
        self.config.set("edgecxr", "threads", str(self.threads))
        self.config.write()
        if self.model_path:
            self.use_model(self.model_path, remember=False)

    def set_fine_saliency(self, fine: bool) -> None:
        self.fine_saliency = bool(fine)
        self.config.set("edgecxr", "fine_saliency", "1" if fine else "0")
        self.config.write()

    # --- helpers ---------------------------------------------------------------------------------

    def save_screenshot(self, path) -> Path:
        """Write what the window shows (the app and any open popup) to ``path`` as a PNG.

        The widgets are drawn again into an off-screen framebuffer at the window's current size
        instead of reading the screen back, so a screenshot is right after a resize and in a
        headless (SDL offscreen) run too, where the screen's buffer keeps its first size.
        """
        import io

        from kivy.graphics import ClearBuffers, ClearColor, Fbo
        from PIL import Image as PILImage

        from edgecxr.io import atomic_write_bytes

        width, height = (int(v) for v in Window.size)
        fbo = Fbo(size=(width, height), with_stencilbuffer=True)
        with fbo:
            ClearColor(*Window.clearcolor)
            ClearBuffers()
        borrowed = []
        for widget in reversed(Window.children):  # children[0] is drawn last (on top)
            borrowed.append((Window.canvas.indexof(widget.canvas), widget.canvas))
            Window.canvas.remove(widget.canvas)
            fbo.add(widget.canvas)
        try:
            fbo.draw()
            pixels = fbo.pixels
        finally:
            for index, canvas in sorted(borrowed, key=lambda item: item[0]):
                fbo.remove(canvas)
                Window.canvas.insert(index, canvas)
        image = PILImage.frombytes("RGBA", (width, height), pixels)
        buf = io.BytesIO()
        image.transpose(PILImage.Transpose.FLIP_TOP_BOTTOM).convert("RGB").save(buf, "PNG")
        return atomic_write_bytes(Path(path), buf.getvalue())

    def _clear_result(self) -> None:
        self.current = None
        self.has_result = False
        self.image_texture = self.overlay_texture = None
        self.image_name = self.result_label = self.timing = self.warning = ""
        self.bars = []

    def _start(self, text: str) -> None:
        self.busy = True
        self.busy_text = text

    def _set_status(self, text: str, kind: str = "info") -> None:
        self.status = text
        self.status_kind = kind

    def _run_pending(self) -> None:
        if self._pending and not self.busy:
            path, self._pending = self._pending, None
            self.open_image(path)

    def _submit(self, work, on_done, on_error) -> None:
        """Run ``work`` off the UI thread and post its result (or error) back to it."""
        if self.synchronous:
            _run_job(work, on_done, on_error, post=lambda func: func())
            return
        thread = threading.Thread(
            target=_run_job, args=(work, on_done, on_error, _post_to_ui), daemon=True
        )
        thread.start()

    def _on_keyboard(self, _window, key, *_args):
        # Escape on desktop and the Android back button: leave History/Settings before the app.
        if key == 27 and self.screen != "main":
            self.screen = "main"
            return True
        return False


def _ensure_config_home() -> None:
    """Kivy makes ``user_data_dir`` with os.mkdir, which fails when ~/.config itself is missing
    (a fresh kiosk user, a CI container); create the parent first."""
    if sys.platform.startswith("linux") and not is_android():
        base = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
        Path(base).expanduser().mkdir(parents=True, exist_ok=True)


def _quiet_cut_buffer_probe() -> None:
    """Load Kivy's clipboard providers without the alarm they raise where xclip and xsel are missing.

    The chooser's path field is a TextInput; the first time one is used, Kivy looks for xclip or
    xsel (middle-click paste of the X selection) and, on a Linux machine without them, logs a
    CRITICAL with two tracebacks. Copy and paste still work through SDL2; only middle-click paste
    is missing, so the probe is run here once, with Kivy's log muted while it runs.
    """
    import logging
    import shutil

    if not sys.platform.startswith("linux") or is_android() or shutil.which("xclip") or shutil.which("xsel"):
        return
    level = Logger.level
    Logger.setLevel(logging.CRITICAL + 1)
    try:
        import kivy.core.clipboard  # noqa: F401  (selects the clipboard and cut-buffer providers)
    finally:
        Logger.setLevel(level)


def _run_job(work, on_done, on_error, post) -> None:
    try:
        result = work()
    except EdgeCXRError as exc:
        post(lambda err=exc: on_error(err))
        return
    except BaseException as exc:
        # A bug, not bad input: unblock the UI with a message, then let the traceback reach the log.
        post(lambda err=exc: on_error(err))
        raise
    post(lambda: on_done(result))


def _post_to_ui(func) -> None:
    Clock.schedule_once(lambda _dt: func(), 0)


def timing_text(result) -> str:
    """Model time only (decode excluded): what the hardware and quantization decide."""
    prediction = result.prediction
    text = f"Inference {_inference_ms(prediction):.1f} ms"
    if result.overlay is not None:
        text += f"  |  saliency map {result.saliency_ms:.0f} ms"
    return text


def _inference_ms(prediction) -> float:
    return float(getattr(prediction, "inference_ms", 0.0) or prediction.time_ms)


def rgb_texture(rgb: np.ndarray) -> Texture:
    """A Kivy texture from a uint8 (H, W, 3) array, top row first.

    Uploaded as RGBA so every row is 4-byte aligned whatever the width.
    """
    height, width = rgb.shape[:2]
    rgba = np.empty((height, width, 4), np.uint8)
    rgba[..., :3] = rgb[::-1]  # OpenGL textures start at the bottom row
    rgba[..., 3] = 255
    texture = Texture.create(size=(width, height), colorfmt="rgba")
    texture.blit_buffer(rgba.tobytes(), colorfmt="rgba", bufferfmt="ubyte")
    return texture
