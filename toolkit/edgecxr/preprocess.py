"""Image loading shared by training, export calibration, the runtime and the app.

One function, ``load_image``, turns a file into the uint8 RGB array the model sees. Training caches
its output and the runtime calls it per image, so the deployed model is fed exactly what it was
trained on. Only numpy and Pillow are imported here (and pydicom, from ``edgecxr.dicom``, when a
DICOM file is read).

It is also the loader's cost that a deployment pays per film on top of the model's ``invoke()``,
so greyscale films stay one channel until the last step (resize and equalize one band, then
repeat it) and JPEGs are decoded at the smallest libjpeg scale still >= the input size
(``benchmarks/LOADER_SPEED.md`` measures it against the model).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import dicom
from .errors import ImageError

Source = Union[str, Path, bytes, BinaryIO, Image.Image]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm",
                  *dicom.DICOM_SUFFIXES)



def is_image_file(path: str | Path) -> bool:
    """What a folder search counts as an image: a known suffix, or no suffix and the DICOM magic.

    PACS and modality exports often name films ``IM000001`` with no suffix; only suffix-less
    files pay the 132-byte read, so a folder of JPEGs is listed as fast as before.
    """
    path = Path(path)
    if path.name.startswith("."):
        return False
    suffix = path.suffix.lower()
    return suffix in IMAGE_SUFFIXES or (suffix == "" and dicom.is_dicom(path))


_ORIENTATION = 0x0112  # the EXIF tag that says how to turn the image upright

# What Pillow raises for damaged files; DecompressionBombError (a huge pixel count) is not an OSError.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError)


def _open(source: Source) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (str, Path)) and Path(source).suffix.lower() in dicom.DICOM_SUFFIXES:
        return dicom.read_dicom(source, _name(source))
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        img = Image.open(stream)
        return img
    except FileNotFoundError:
        raise ImageError(f"{source}: file not found") from None
    except Image.DecompressionBombError as exc:  # Pillow's limit against memory exhaustion
        raise ImageError(f"{_name(source)}: image too large to decode safely ({exc})") from None
    except (UnidentifiedImageError, *_DECODE_ERRORS) as exc:
        # Pillow has no DICOM plugin: a suffix-less PACS export is recognised by its DICM magic
        # here, after Pillow, so PNG and JPEG films do not pay for a second open.
        if dicom.is_dicom(source):
            return dicom.read_dicom(source, _name(source))
        raise ImageError(f"{_name(source)}: not a readable image ({exc.__class__.__name__})") from None


def _name(source) -> str:
    return str(source) if isinstance(source, (str, Path)) else "<image>"


def _to_grey_or_rgb(img: Image.Image) -> Image.Image:
    """Bring any mode real collections contain to 8-bit ``L`` (grey) or ``RGB``.

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
    return img if img.mode in ("L", "RGB") else img.convert("RGB")


def load_image(source: Source, size: int, equalize: bool = False) -> np.ndarray:
    """Decode, orient and squash-resize an image to a ``(size, size, 3)`` uint8 RGB array.

    Raises ImageError (one line, naming the file) for missing, truncated or non-image files.
    DICOM files (``.dcm``, or any file with the DICM magic) are read by ``edgecxr.dicom`` as a
    viewer shows them. Large JPEGs are decoded with Pillow's draft mode, which lets libjpeg scale
    by 1/2..1/8 while decoding, so a 3000 px film does not dominate the time of a 1 ms inference.

    ``equalize`` spreads the histogram after resizing. Collections differ in exposure and
    contrast (one pediatric hospital versus many adult ones), and a model can learn the source
    from them instead of the disease; equalizing removes most of that cue.
    """
    opened = img = _open(source)
    try:
        if img.format == "JPEG":
            # libjpeg scales by 1/2..1/8 while decoding; draft picks the smallest scale whose
            # result is still >= size on both sides (none when the file is already small).
            img.draft(img.mode, (size, size))
        if img.getexif().get(_ORIENTATION, 1) != 1:  # exif_transpose copies even when upright
            img = ImageOps.exif_transpose(img)
        img = _one_band_if_grey(_to_grey_or_rgb(img))
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        arr = _equalized_rgb(img, equalize)
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


def _one_band_if_grey(img: Image.Image) -> Image.Image:
    """An RGB image whose three channels are identical (most grey films saved as RGB) as ``L``.

    Resizing and equalizing work per channel, so doing them on one band and repeating it gives
    the same pixels as doing them on all three, at a third of the work. Checked before resizing,
    by comparing the bands' bytes (memcmp), so a colour photo stays in colour.
    """
    if img.mode != "RGB":
        return img
    bands = img.split()
    red = bands[0].tobytes()
    if red == bands[1].tobytes() and red == bands[2].tobytes():
        return bands[0]
    return img


def _equalized_rgb(img: Image.Image, equalize: bool) -> np.ndarray:
    """The (S, S, 3) uint8 array: ``L`` equalized as one band and repeated, RGB per channel."""
    if img.mode == "RGB":  # colour: all three channels, as they are
        arr = np.asarray(img, dtype=np.uint8)
        if not equalize:
            return arr
        hist = np.asarray(img.histogram(), dtype=np.int64).reshape(3, 256)
        return np.stack([equalize_lut(hist[c])[arr[..., c]] for c in range(3)], axis=2)
    if equalize:  # histogram and point run in C; only the 256-entry table is built here
        img = img.point(equalize_lut(img.histogram()).tolist())
    grey = np.asarray(img, dtype=np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def equalize_lut(hist) -> np.ndarray:
    """Pillow's ``ImageOps.equalize`` table for one band's 256-bin histogram, with numpy.

    Same integer arithmetic as Pillow (step = (total - last non-empty bin) // 255, entry i =
    (step // 2 + pixels below i) // step), so the output is identical; Pillow builds the table in a
    Python loop, which cost about as much as the resize.
    """
    hist = np.asarray(hist, dtype=np.int64)
    used = hist[hist > 0]
    identity = np.arange(256, dtype=np.uint8)
    if len(used) <= 1:
        return identity
    step = (int(used.sum()) - int(used[-1])) // 255
    if not step:
        return identity
    below = np.concatenate(([0], np.cumsum(hist)[:-1]))
    return np.clip((step // 2 + below) // step, 0, 255).astype(np.uint8)


NOT_XRAY_COLOUR = "This does not look like a chest X-ray (it is in colour): the result means nothing for it."
NOT_XRAY_FLAT = "This image is almost uniform; it does not look like a chest X-ray."


def xray_warning(rgb: np.ndarray) -> str:
    """A cheap guard against photos, screenshots and blanks: X-rays are grey and not flat.

    Given ``load_image`` output, so the app and ``edgecxr predict`` warn about the same inputs.
    More than 10% clearly coloured pixels (channel spread > 40 of 255) means a photo or a chart;
    a standard deviation under 4 grey levels means a blank or nearly blank image. Returns "" for
    a plausible film. Callers still classify; the model is confident on anything, so the warning
    is what tells the user the answer means nothing.
    """
    arr = np.asarray(rgb, dtype=np.uint8)
    band = arr
    if arr.ndim == 3 and arr.shape[2] >= 3:
        r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
        if np.array_equal(r, g) and np.array_equal(r, b):  # load_image output of a grey film
            band = r
        else:
            # Pairwise uint8 max/min (no int16 copy): 0.1 ms at 160 px instead of 3 ms.
            spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
            if np.count_nonzero(spread > 40) > 0.10 * spread.size:
                return NOT_XRAY_COLOUR
    # The standard deviation from the 256-bin histogram: exact, and no float copy of the image.
    hist = np.bincount(np.ascontiguousarray(band).ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    mean = float(hist @ levels) / max(band.size, 1)
    if float(hist @ (levels - mean) ** 2) / max(band.size, 1) < 16.0:  # std < 4 grey levels
        return NOT_XRAY_FLAT
    return ""


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
