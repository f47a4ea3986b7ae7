"""Image loading shared by training, export calibration, the runtime and the app.

One function, ``load_image``, turns a file into the uint8 RGB array the model sees. Training caches
its output and the runtime calls it per image, so the deployed model is fed exactly what it was
trained on. Only numpy and Pillow are imported here.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

Source = Union[str, Path, bytes, BinaryIO, Image.Image]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm")

# What Pillow raises for damaged files; DecompressionBombError (a huge pixel count) is not an OSError.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def _open(source: Source) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        img = Image.open(source)
        return img
    except FileNotFoundError:
        raise ImageError(f"{source}: file not found") from None
    except Image.DecompressionBombError as exc:  # Pillow's limit against memory exhaustion
        raise ImageError(f"{_name(source)}: image too large to decode safely ({exc})") from None
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        raise ImageError(f"{_name(source)}: not a readable image ({exc.__class__.__name__})") from None


def _name(source) -> str:
    return str(source) if isinstance(source, (str, Path)) else "<image>"


def _to_rgb(img: Image.Image) -> Image.Image:
    """Bring any mode real collections contain to 8-bit RGB.

    16-bit and float grayscale (DICOM exports, some PNGs) are stretched over their own min..max
    because their bit depth is rarely the full 16 bits; alpha is composited onto black, which is
    what an X-ray viewer shows behind a transparent border.
    """
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr = ((arr - lo) * scale).round().clip(0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def load_image(source: Source, size: int, equalize: bool = False) -> np.ndarray:
    """Decode, orient and squash-resize an image to a ``(size, size, 3)`` uint8 RGB array.

    Raises ImageError (one line, naming the file) for missing, truncated or non-image files.
    Large JPEGs are decoded with Pillow's draft mode, which lets libjpeg scale by 1/2..1/8 while
    decoding, so a 3000 px film does not dominate the time of a 1 ms inference.

    ``equalize`` spreads the histogram after resizing. Collections differ in exposure and
    contrast (one pediatric hospital versus many adult ones), and a model can learn the source
    from them instead of the disease; equalizing removes most of that cue.
    """
    opened = img = _open(source)
    try:
        if img.format == "JPEG" and min(img.size) >= 2 * size:
            img.draft("RGB" if img.mode == "RGB" else img.mode, (size, size))
        img = ImageOps.exif_transpose(img)
        img = _to_rgb(img)
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        if equalize:
            img = ImageOps.equalize(img)
        arr = np.asarray(img, dtype=np.uint8)
    except ImageError:
        raise
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{_name(source)}: damaged or truncated image ({exc})") from None
    finally:
        if isinstance(source, (str, Path, bytes, bytearray)):  # we opened it, so we close it
            opened.close()
    if arr.shape != (size, size, 3):
        raise ImageError(f"{_name(source)}: decoded to unexpected shape {arr.shape}")
    return arr


def load_images(paths, size: int, on_error=None, equalize: bool = False,
                progress: str | None = None) -> tuple[np.ndarray, list[int]]:
    """Load many images; return the stacked array and the indices that loaded.

    Unreadable files are passed to ``on_error(path, message)`` and skipped, never raised. With a
    ``progress`` label a bar with ETA is drawn on a terminal (thousands of films take minutes);
    ``on_error`` is then called once the bar is done, so its messages do not break the bar's line.
    """
    from .progress import progress as progress_bar

    arrays, ok, failed = [], [], []
    with progress_bar(None if progress else False, len(paths), progress or "") as bar:
        for i, path in enumerate(paths):
            try:
                arrays.append(load_image(path, size, equalize=equalize))
                ok.append(i)
            except ImageError as exc:
                failed.append((path, str(exc)))
                if on_error is not None and not progress:
                    on_error(path, str(exc))
            bar.update(1)
    if on_error is not None and progress:
        for path, message in failed:
            on_error(path, message)
    if not arrays:
        return np.zeros((0, size, size, 3), np.uint8), ok
    return np.stack(arrays), ok
