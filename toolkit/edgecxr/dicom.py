"""DICOM films to the 8-bit greyscale a radiology viewer shows, for ``edgecxr.preprocess``.

X-ray machines and PACS export DICOM, not PNG, so every place that reads an image reads DICOM
through ``preprocess.load_image``, which calls ``read_dicom`` here. The steps are a viewer's, in
its order: stored values (``BitsStored`` and ``PixelRepresentation`` respected), the modality LUT
(Rescale Slope/Intercept), the first VOI LUT or window (else the image's own min..max), and
``MONOCHROME1`` inverted so bone is bright as in every other input.

pydicom is imported only when a DICOM file is read (a PNG-only user pays nothing). Header fields
that identify the patient (name, id, birth date) are never read here, so no message, log or
prediction can carry them.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ImageError

DICOM_SUFFIXES = (".dcm", ".dicom")
# A DICOM Part 10 file has a 128-byte preamble followed by these four bytes.
MAGIC_OFFSET = 128
MAGIC = b"DICM"
# The optional extra that installs decoders for compressed transfer syntaxes.
DECODER_EXTRA = "dicom"


def looks_like_dicom(head: bytes) -> bool:
    """True when the first 132 bytes of a file carry the DICOM magic."""
    return head[MAGIC_OFFSET : MAGIC_OFFSET + 4] == MAGIC


def is_dicom(source) -> bool:
    """Whether ``source`` (path, bytes or binary file) is DICOM: by suffix, else by the magic."""
    if isinstance(source, (bytes, bytearray)):
        return looks_like_dicom(bytes(source[: MAGIC_OFFSET + 4]))
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix.lower() in DICOM_SUFFIXES:
            return True
        try:
            with path.open("rb") as fh:
                return looks_like_dicom(fh.read(MAGIC_OFFSET + 4))
        except OSError:
            return False  # missing or unreadable: the image opener reports it
    if hasattr(source, "read") and hasattr(source, "seek"):
        try:
            start = source.tell()
            head = source.read(MAGIC_OFFSET + 4)
            source.seek(start)
        except (OSError, ValueError):
            return False
        return looks_like_dicom(head)
    return False


def image_size(path) -> tuple[int, int] | None:
    """``(width, height)`` from the header alone (for display at the film's aspect ratio), or None."""
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        return int(ds.Columns), int(ds.Rows)
    except Exception:  # unreadable: load_image raises the proper one-line ImageError for it
        return None


def read_dicom(source, name: str = "<image>") -> Image.Image:
    """Decode a single-frame greyscale DICOM to an 8-bit ``L`` image, as a viewer displays it.

    Raises ImageError (one line, naming the file) for a damaged file, no pixel data, several
    frames, a colour film, or a compressed transfer syntax without an installed decoder (the
    message names the extra that installs one).
    """
    from .errors import require

    pydicom = require("pydicom", "dicom")
    from pydicom.errors import InvalidDicomError

    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        with warnings.catch_warnings():  # pydicom's notes on odd headers are not actionable
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(source, force=True)
    except FileNotFoundError:
        raise ImageError(f"{name}: file not found") from None
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        raise ImageError(f"{name}: damaged DICOM file ({exc.__class__.__name__})") from None
    if "PixelData" not in ds:
        raise ImageError(f"{name}: DICOM file without an image (no Pixel Data)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(f"{name}: multi-frame DICOM ({frames} frames); export the single film as its own file")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageError(f"{name}: DICOM {photometric} image; only greyscale (MONOCHROME1/2) films are read")
    stored = _stored_values(ds, name)
    values = _modality(ds, stored)
    grey = _voi(ds, values)
    if photometric == "MONOCHROME1":  # low values are bright: invert so bone is bright
        grey = 255 - grey
    return Image.fromarray(np.ascontiguousarray(grey), mode="L")


def _stored_values(ds, name: str) -> np.ndarray:
    """The stored pixel values, sign-extended and masked at ``BitsStored`` (not assumed 16)."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    compressed = syntax is not None and syntax.is_compressed
    if compressed and not _decoder_available(syntax):
        raise ImageError(
            f"{name}: compressed DICOM ({syntax.name}) and no decoder for it is installed; "
            f"install one with: pip install 'edgecxr[{DECODER_EXTRA}]'"
        )
    try:
        with warnings.catch_warnings():  # pydicom's notes on odd headers are not actionable
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except Exception as exc:  # pydicom raises RuntimeError/NotImplementedError/ValueError by decoder
        kind = f"compressed ({syntax.name}) " if compressed else ""
        raise ImageError(f"{name}: damaged DICOM {kind}pixel data ({exc.__class__.__name__})") from None
    if arr.ndim != 2:
        raise ImageError(f"{name}: DICOM pixel data of shape {arr.shape}; expected one greyscale frame")
    bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8) or arr.dtype.itemsize * 8)
    values = arr.astype(np.int64)
    if 0 < bits < 64:
        values &= (1 << bits) - 1  # bits above BitsStored may hold overlays or garbage
        if int(ds.get("PixelRepresentation", 0)) == 1:  # two's complement at BitsStored
            sign = 1 << (bits - 1)
            values = (values ^ sign) - sign
    return values


def _decoder_available(syntax) -> bool:
    """Whether pydicom has a working decoder (Pillow, pylibjpeg, pyjpegls, gdcm) for ``syntax``."""
    try:
        from pydicom.pixels import get_decoder

        return bool(get_decoder(syntax).is_available)
    except (ImportError, NotImplementedError, ValueError):
        return False


def _modality(ds, values: np.ndarray) -> np.ndarray:
    """Rescale Slope/Intercept (the modality LUT) to the values the window is defined on."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return values.astype(np.float64) * slope + intercept


def _voi(ds, values: np.ndarray) -> np.ndarray:
    """The first VOI LUT, else the first window, else the image's own min..max, to uint8."""
    lut_seq = ds.get("VOILUTSequence")
    if lut_seq:
        item = lut_seq[0]
        n_entries, first, bits = (int(v) for v in item.LUTDescriptor)
        n_entries = n_entries or 65536
        raw = item.LUTData
        table = np.asarray(raw if not isinstance(raw, (bytes, bytearray)) else np.frombuffer(raw, "<u2"),
                           dtype=np.float64)[:n_entries]
        index = np.clip(np.round(values).astype(np.int64) - first, 0, len(table) - 1)
        top = float((1 << bits) - 1) if bits > 0 else float(table.max() or 1)
        return np.clip(table[index] * (255.0 / top), 0, 255).round().astype(np.uint8)
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper()
        if function == "SIGMOID":
            y = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        elif function == "LINEAR_EXACT":
            y = (values - center) / width + 0.5
        else:  # LINEAR (PS3.3 C.11.2.1.2.1)
            y = (values - (center - 0.5)) / max(width - 1.0, 1.0) + 0.5
        return (np.clip(y, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    lo, hi = float(values.min()), float(values.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return ((values - lo) * scale).round().clip(0, 255).astype(np.uint8)


def _first(value) -> float | None:
    """The first of a multi-valued window attribute (viewers show the first window by default)."""
    if value is None or value == "":
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None
