"""Drive the real app from a script: how the tests exercise it and how the README screenshot is made.

    cd mobile_app && python -m edgecxr_app.autopilot script.json result.json

``script.json``::

    {"model": "../models/edgecxr_float16.tflite", "size": [800, 480], "synchronous": false, "timeout": 90,
     "image": "shown at start, as with `edgecxr app IMAGE` (optional)",
     "steps": [["drop", "x.png"], ["wait"], ["press", "overlay_toggle"], ["wait"],
               ["screenshot", "shot.png"], ["state"]]}

Steps run one after another on the Kivy clock, inside the running app, and go through the same
methods and events a user triggers: ``drop`` dispatches the window's ``on_drop_file`` event,
``choose`` opens the Open button's file chooser and ``pick`` types the file's folder into its path
field, taps the file and presses Open (``type_path`` types any path and presses Enter,
``wait_listing`` waits for the folder's list), ``press`` releases a button found by its kv id. ``wait`` waits until the app is idle;
``size`` resizes the window; ``state`` records what the UI shows. The result JSON holds the
recorded states and ``"completed": true`` once every step ran; the exit code is 0 only then.
Headless runs need SDL_VIDEODRIVER=offscreen (and a throw-away KIVY_HOME) in the environment.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

SETTLE_S = 0.25  # let a layout pass and a frame happen before looking at the screen


class Autopilot:
    def __init__(self, app, steps, result_path, timeout: float = 90.0):
        self.app = app
        self.steps = [list(s) for s in steps]
        self.result_path = Path(result_path)
        self.timeout = timeout
        self.result = {"completed": False, "states": [], "screenshots": [], "steps_run": 0}
        self._wait_started = None
        self._picking = False

    def start(self, *_args) -> None:
        from kivy.clock import Clock

        Clock.schedule_once(self._timed_out, self.timeout)
        Clock.schedule_once(self._next, SETTLE_S)

    # --- the loop ------------------------------------------------------------------------------

    def _next(self, _dt) -> None:
        from kivy.clock import Clock

        if not self.steps:
            self.result["completed"] = True
            self._finish()
            return
        op, *args = self.steps[0]
        try:
            delay = getattr(self, f"op_{op}")(*args)
        except BaseException:
            self.result["error"] = f"step {op} {args}: {traceback.format_exc()}"
            self._finish()
            raise
        if delay is None:  # the step is not done yet (waiting); try again shortly
            Clock.schedule_once(self._next, 0.05)
            return
        self.steps.pop(0)
        self.result["steps_run"] += 1
        Clock.schedule_once(self._next, delay)

    def _finish(self) -> None:
        from edgecxr.io import atomic_write_text

        self.result["tensorflow_imported"] = any(m.split(".")[0] == "tensorflow" for m in sys.modules)
        atomic_write_text(self.result_path, json.dumps(self.result, indent=2) + "\n")
        self.app.stop()

    def _timed_out(self, _dt) -> None:
        self.result["error"] = f"timed out after {self.timeout} s with steps left: {self.steps}"
        self._finish()

    # --- steps: each returns the seconds to wait before the next one, or None to be re-run -----

    def op_open(self, path):
        self.app.open_image(path)
        return 0.05

    def op_drop(self, path):
        from kivy.core.window import Window

        Window.dispatch("on_drop_file", str(path).encode("utf-8"), 10, 10)
        return 0.05

    def op_choose(self):
        self.app.root.ids.open_button.trigger_action(0)
        return SETTLE_S

    def op_pick(self, path):
        """In the open chooser: type the file's folder into the path field, wait for the list, tap
        the file's row (as a user taps it), then press Open."""
        popup = self._open_popup()
        if not self._picking:
            self._type(popup, str(Path(path).parent))
            self._picking = True
        if popup.listing:
            return None
        self._picking = False
        row = next(r for r in popup.rows if r["path"] == str(path))
        popup.tap(row["path"], row["is_dir"])
        popup.ids.open_button.trigger_action(0)
        return 0.05

    def op_type_path(self, text):
        """Type ``text`` into the open chooser's path field and press Enter."""
        self._type(self._open_popup(), text)
        return 0.05

    def op_wait_listing(self):
        """Wait until the open chooser has listed its folder."""
        return None if self._open_popup().listing else SETTLE_S

    def _type(self, popup, text):
        field = popup.ids.path_field
        field.text = text
        field.dispatch("on_text_validate")

    def op_press(self, widget_id):
        self.find(widget_id).trigger_action(0)
        return 0.05

    def op_press_history(self, index):
        """Tap the history row showing result ``index`` (0 = newest); the History screen must be shown."""
        rows = self.find("history_list").layout_manager.children
        row = next(r for r in rows if r.index == int(index))
        row.trigger_action(0)
        return SETTLE_S

    def op_wait(self):
        if self._wait_started is None:
            self._wait_started = time.monotonic()
        if self.app.busy or self.app._pending:
            return None
        self.result.setdefault("waits_s", []).append(round(time.monotonic() - self._wait_started, 3))
        self._wait_started = None
        return SETTLE_S

    def op_size(self, width, height):
        from kivy.core.window import Window

        Window.size = (int(width), int(height))
        return 2 * SETTLE_S

    def op_screen(self, name):
        self.app.screen = name
        return SETTLE_S

    def op_screenshot(self, path):
        from kivy.core.window import Window

        written = self.app.save_screenshot(path)
        self.result["screenshots"].append({"path": str(written), "size": list(Window.size)})
        return 0.05

    def op_state(self):
        self.result["states"].append(self.snapshot())
        return 0.05

    # --- looking at the UI -----------------------------------------------------------------

    def find(self, widget_id):
        """A widget by its kv id, wherever it sits (screens not shown are searched too)."""
        roots = [self.app.root, *self.app.root.ids.screens.screens]
        for root in roots:
            for widget in root.walk(restrict=True):
                if widget_id in widget.ids:
                    return widget.ids[widget_id]
        raise KeyError(f"no widget with id {widget_id!r}")

    def _open_popup(self):
        from kivy.core.window import Window
        from kivy.uix.modalview import ModalView

        popups = [w for w in Window.children if isinstance(w, ModalView)]
        if not popups:
            raise RuntimeError("no popup is open")
        return popups[0]

    def snapshot(self) -> dict:
        from kivy.core.text import Label as CoreLabel
        from kivy.core.window import Window
        from kivy.uix.modalview import ModalView

        app = self.app
        notice = app.root.ids.notice
        nx, ny = notice.to_window(*notice.pos)
        natural = CoreLabel(text=notice.text, font_size=notice.font_size, bold=notice.bold)
        natural.refresh()
        camera = self.find("camera_button")
        xray = self.find("xray")
        panel = self.find("result_panel")
        return {
            "window": list(Window.size),
            "screen": app.screen,
            "busy": app.busy,
            "model_name": app.model_name,
            "model_details": app.model_details,
            "has_result": app.has_result,
            "image_name": app.image_name,
            "result_label": app.result_label,
            "result_confidence": app.result_confidence,
            "bars": [dict(b) for b in app.bars],
            "bar_widgets": len(self.find("bars").layout_manager.children),
            "timing": app.timing,
            "warning": app.warning,
            "status": app.status,
            "status_kind": app.status_kind,
            "show_overlay": app.show_overlay,
            "overlay_ready": app.overlay_texture is not None,
            "showing_overlay": xray.texture is not None and xray.texture is app.overlay_texture,
            "image_texture_size": list(app.image_texture.size) if app.image_texture else None,
            "history": [{"name": r["name"], "summary": r["summary"]} for r in app.history],
            "camera_available": app.camera_available,
            "camera_button": {
                "opacity": camera.opacity,
                "disabled": camera.disabled,
                "width": camera.width,
            },
            "notice": {
                "text": notice.text,
                "rect": [nx, ny, notice.width, notice.height],
                "natural_text_width": natural.texture.size[0],  # unshortened
            },
            "image_rect": [*xray.to_window(*xray.pos), xray.width, xray.height],
            "result_panel": {
                "rect": [*panel.to_window(*panel.pos), panel.width, panel.height],
                "minimum_height": panel.minimum_height,
            },
            "threads": app.threads,
            "classifier_threads": getattr(app.classifier, "num_threads", None),
            "popups": sum(isinstance(w, ModalView) for w in Window.children),
            "last_dir": app._last_dir,
            "chooser": self._chooser_state(),
        }

    def _chooser_state(self):
        from kivy.core.window import Window

        from .app import FileChooserPopup

        popups = [w for w in Window.children if isinstance(w, FileChooserPopup)]
        if not popups:
            return None
        popup = popups[0]
        layout = popup.ids.listing.layout_manager
        return {
            "path": popup.path,
            "path_field": popup.ids.path_field.text,
            "listing": popup.listing,
            "rows": len(popup.rows),
            "row_widgets": len(layout.children),
            "first_rows": [r["text"] for r in popup.rows[:3]],
            "status": popup.status,
            "status_kind": popup.status_kind,
        }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m edgecxr_app.autopilot SCRIPT.json RESULT.json", file=sys.stderr)
        return 2
    script = json.loads(Path(argv[0]).read_text(encoding="utf-8"))

    from . import configure_kivy

    configure_kivy(size=script.get("size"))
    from .app import EdgeCXRApp

    app = EdgeCXRApp(
        model_path=script.get("model"),
        threads=script.get("threads"),
        synchronous=bool(script.get("synchronous", False)),
        image_path=script.get("image"),
    )
    pilot = Autopilot(app, script["steps"], argv[1], timeout=float(script.get("timeout", 90)))
    app.bind(on_start=pilot.start)
    app.run()
    return 0 if pilot.result["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
