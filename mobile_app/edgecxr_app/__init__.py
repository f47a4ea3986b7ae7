"""The EdgeCXR Kivy app for desktop, Raspberry Pi and Android.

``run()`` starts it. Importing this package imports no Kivy, so ``edgecxr app`` can report a
missing Kivy in one line; the app itself lives in ``edgecxr_app.app`` and its layout in
``edgecxr_app/edgecxr.kv``.
"""

from __future__ import annotations

import os


def configure_kivy(size=None, fullscreen: bool = False) -> None:
    """Settings Kivy only honours before it opens its window; call before importing the app."""
    # Kivy parses sys.argv on import unless told not to; the options are ours, not Kivy's.
    os.environ.setdefault("KIVY_NO_ARGS", "1")
    from kivy.config import Config

    if size:
        width, height = (int(v) for v in size)
        Config.set("graphics", "width", str(width))
        Config.set("graphics", "height", str(height))
    if fullscreen:
        Config.set("graphics", "fullscreen", "auto")
    # A right click would otherwise leave red multitouch-emulation dots on a desktop.
    Config.set("input", "mouse", "mouse,multitouch_on_demand")


def run(model=None, threads=None, fullscreen: bool = False, size=None, image=None) -> None:
    """Open the app window (showing ``image`` analysed, if given) and block until it is closed."""
    configure_kivy(size=size, fullscreen=fullscreen)
    from .app import EdgeCXRApp

    EdgeCXRApp(model_path=model, threads=threads, image_path=image).run()
