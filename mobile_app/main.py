"""Start the EdgeCXR app: ``python mobile_app/main.py [--model M] [--threads N] [--fullscreen]``.

Buildozer packages this file as the Android entry point. In a source checkout the edgecxr
package comes from ``../toolkit`` (even when a copy made by ``prepare_android.py`` sits next to
this file); in the APK that bundled copy is the only one, and it carries the model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _use_checkout_toolkit() -> None:
    toolkit = HERE.parent / "toolkit"
    if (toolkit / "edgecxr" / "runtime.py").is_file():
        sys.path.insert(0, str(toolkit))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="EdgeCXR: offline chest X-ray classifier app.")
    parser.add_argument("--model", help=".tflite model (default: the shipped model)")
    parser.add_argument("--threads", type=int, help="interpreter threads (default: saved setting)")
    parser.add_argument("--fullscreen", action="store_true", help="fill the screen (kiosk, Pi)")
    parser.add_argument("--size", help="window size WIDTHxHEIGHT, e.g. 800x480")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x")) if args.size else None

    _use_checkout_toolkit()
    from edgecxr_app import run

    run(model=args.model, threads=args.threads, fullscreen=args.fullscreen, size=size)


if __name__ == "__main__":
    main()
