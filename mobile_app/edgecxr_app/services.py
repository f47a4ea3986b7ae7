"""Platform features behind one small interface: picking a file, the camera, app storage.

The app calls ``services.pick_file(...)`` and ``services.has_camera()`` and never asks which
platform it is on. Desktop and Raspberry Pi use Kivy's own file chooser (the app shows it) and
drag-and-drop; Android uses the system picker, because under scoped storage (Android 10+) a plain
path to another app's file cannot be opened: the picked content URI is copied into the app's own
storage (``App.user_data_dir``) first, and the copy is what gets classified.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import time
from pathlib import Path


def is_android() -> bool:
    # python-for-android sets these; the same test as kivy.utils.platform, without importing Kivy.
    return "ANDROID_ARGUMENT" in os.environ or "ANDROID_PRIVATE" in os.environ


class DesktopServices:
    """Desktop and Raspberry Pi: the app's Kivy file chooser, drag-and-drop, V4L2 cameras."""

    name = "desktop"
    native_picker = False  # the app opens its own Kivy chooser popup
    supports_drop = True

    def __init__(self, storage_dir: str | Path):
        self.storage_dir = Path(storage_dir)

    def has_camera(self) -> bool:
        """True only when a camera device exists and Kivy has a provider that can read it.

        The device check comes first: probing Kivy's camera providers logs a traceback per
        missing backend (OpenCV, GStreamer), which a camera-less Pi should not pay for at start.
        """
        if sys.platform.startswith("linux") and not glob.glob("/dev/video*"):
            return False
        return _kivy_camera_provider() is not None

    def request_camera(self, on_ready) -> None:
        on_ready(True)

    def pick_file(self, mime_type: str, on_picked) -> None:
        raise NotImplementedError("desktop uses the app's own file chooser")

    def captured_photo_path(self) -> Path:
        folder = self.storage_dir / "captures"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / time.strftime("capture_%Y%m%d_%H%M%S.png")


class AndroidServices(DesktopServices):
    """Android: system picker via androidstorage4kivy, copy into app storage, runtime permissions."""

    name = "android"
    native_picker = True
    supports_drop = False

    def __init__(self, storage_dir: str | Path):
        super().__init__(storage_dir)
        self._chooser = None
        self._on_picked = None

    def has_camera(self) -> bool:
        from jnius import autoclass

        activity = autoclass("org.kivy.android.PythonActivity").mActivity
        manager = activity.getPackageManager()
        if not manager.hasSystemFeature("android.hardware.camera.any"):
            return False
        return _kivy_camera_provider() is not None

    def request_camera(self, on_ready) -> None:
        from android.permissions import Permission, request_permissions

        def answered(permissions, grants):
            _on_ui_thread(on_ready, bool(grants) and all(grants))

        request_permissions([Permission.CAMERA], answered)

    def pick_file(self, mime_type: str, on_picked) -> None:
        """Open the system picker; ``on_picked(path)`` runs on the Kivy thread with a private copy."""
        from androidstorage4kivy import Chooser

        self._on_picked = on_picked
        if self._chooser is None:  # one Chooser per app: it binds the activity-result callback
            self._chooser = Chooser(self._chosen)
        self._chooser.choose_content(mime_type)

    def _chosen(self, uris) -> None:
        from androidstorage4kivy import SharedStorage

        if not uris:
            return
        cached = SharedStorage().copy_from_shared(uris[0])  # into the app's private cache
        if not cached:
            return
        folder = self.storage_dir / "picked"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / Path(cached).name
        shutil.copyfile(cached, target)
        _on_ui_thread(self._on_picked, str(target))


def get_services(storage_dir: str | Path) -> DesktopServices:
    return AndroidServices(storage_dir) if is_android() else DesktopServices(storage_dir)


def _kivy_camera_provider():
    from kivy.core.camera import Camera

    return Camera


def _on_ui_thread(func, *args) -> None:
    """Android calls back on its own thread; Kivy widgets may only be touched from Kivy's."""
    from kivy.clock import Clock

    Clock.schedule_once(lambda _dt: func(*args), 0)
