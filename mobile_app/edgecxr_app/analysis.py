"""What the app does with one X-ray, without any Kivy: load, check, classify, explain.

The app runs these functions in a worker thread and hands the results to the UI thread, and the
tests call them directly. Inference goes through ``edgecxr.runtime`` and saliency through
``edgecxr.saliency``, so the app feeds the model exactly what ``edgecxr predict`` does.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgecxr import dicom
from edgecxr.preprocess import NOT_XRAY_COLOUR, NOT_XRAY_FLAT, load_image, xray_warning  # noqa: F401

DISPLAY_SIDE = 768  # px; enough for a 1280x800 screen, small enough to keep 10 results in memory
HISTORY_LENGTH = 10

# xray_warning and its messages live in edgecxr.preprocess: `edgecxr predict` warns with the same check.


@dataclass
class Analysis:
    """One classified image: what the UI shows and the history keeps."""

    file: str
    name: str
    display: np.ndarray  # uint8 RGB at the image's own aspect ratio, at most DISPLAY_SIDE px
    model_input: np.ndarray  # uint8 (S, S, 3): what the model saw
    prediction: object  # edgecxr.runtime.Prediction
    class_names: list[str]
    warning: str = ""
    overlay: np.ndarray | None = None  # display-sized uint8 RGB with the saliency heat map
    saliency_ms: float = 0.0

    @property
    def bars(self) -> list[tuple[str, float]]:
        """(label, probability) in the model's own class order."""
        probs = self.prediction.probabilities
        return [(name, float(probs.get(name, 0.0))) for name in self.class_names]


def analyse(classifier, path: str | Path) -> Analysis:
    """Load, sanity-check and classify one image file; raises ImageError for unreadable files."""
    path = Path(path)
    display = display_image(path)
    model_input = load_image(path, int(classifier.spec.image_size))
    prediction = classifier.predict(model_input)
    if getattr(prediction, "file", None) is None and dataclasses.is_dataclass(prediction):
        prediction = dataclasses.replace(prediction, file=str(path))
    return Analysis(
        file=str(path),
        name=path.name,
        display=display,
        model_input=model_input,
        prediction=prediction,
        class_names=list(classifier.spec.class_names),
        warning=xray_warning(model_input),
    )


def add_saliency(classifier, analysis: Analysis, fine: bool = True) -> Analysis:
    """Compute the occlusion map for the predicted class and blend it over the display image.

    ``fine`` uses half-patch strides (169 model calls at 224 px); coarse uses whole-patch strides
    (49 calls), for slow boards.
    """
    from edgecxr.saliency import occlusion_map, overlay

    size = int(classifier.spec.image_size)
    patch = max(2, size // 7)
    stride = max(1, patch // 2) if fine else patch
    start = time.perf_counter()
    heat = occlusion_map(classifier, analysis.model_input, analysis.prediction.index, patch, stride)
    blended = overlay(analysis.display, heat)
    elapsed = (time.perf_counter() - start) * 1000.0
    return dataclasses.replace(analysis, overlay=blended, saliency_ms=elapsed)


def display_image(path: str | Path, max_side: int = DISPLAY_SIDE) -> np.ndarray:
    """The image as the user should see it: upright, true aspect ratio, uint8 RGB.

    Decoding goes through ``load_image`` (square) so every odd format the model copes with also
    displays, and unreadable files raise the same one-line ImageError; the square is then
    stretched back to the file's own aspect ratio.
    """
    width, height = _upright_size(path)
    side = max(8, min(max_side, max(width, height)))
    square = load_image(path, side)
    scale = side / max(width, height)
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    if shape == (side, side):
        return square
    return np.asarray(Image.fromarray(square).resize(shape, Image.Resampling.BILINEAR))


def friendly_error(path: str | Path, exc: Exception) -> str:
    """One sentence for the status line; the details stay in the log."""
    name = Path(path).name or str(path)
    if "not found" in str(exc):
        return f"Could not open {name}: the file is gone. Choose another chest X-ray."
    return f"Could not open {name}: it is not a readable image. Choose a PNG, JPEG or DICOM chest X-ray."


def _upright_size(path: str | Path) -> tuple[int, int]:
    """Width and height after EXIF rotation, read from the header only."""
    if dicom.is_dicom(path):
        return dicom.image_size(path) or (DISPLAY_SIDE, DISPLAY_SIDE)
    try:
        with Image.open(path) as img:
            width, height = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, ValueError, SyntaxError):
        # Unreadable: load_image will raise the proper one-line ImageError for it.
        return DISPLAY_SIDE, DISPLAY_SIDE
    if orientation in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
        width, height = height, width
    return width, height


def thumbnail(rgb: np.ndarray, side: int) -> np.ndarray:
    """A copy at most ``side`` px on its long edge, for the history list."""
    img = Image.fromarray(rgb)
    img.thumbnail((side, side), Image.Resampling.BILINEAR)
    return np.asarray(img)
