"""Occlusion sensitivity: which parts of the image the deployed model's answer depends on.

Grad-CAM needs gradients, which a TFLite interpreter does not give, so the app (and anyone else on
the runtime path) asks the quantized model itself: cover one square of the X-ray at a time with the
image's mean grey, run all the covered copies through ``Classifier.predict_arrays`` in batches, and
record how much the probability of the predicted class drops. Squares whose covering hurts the
answer most are the ones the model looked at. Only numpy and Pillow are used; no TensorFlow.

The map explains the model, not the disease: a hot spot on a label or a wire is a warning sign about
the model, which is the point of showing it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# Anchor colours of the heat map (blue -> cyan -> green -> yellow -> red), a "jet"-like ramp that
# stays readable on a grey X-ray and needs no matplotlib.
_RAMP_POSITIONS = np.array([0.0, 0.25, 0.5, 0.75, 1.0], dtype=np.float32)
_RAMP_COLOURS = np.array(
    [[40, 60, 200], [30, 190, 230], [60, 210, 90], [250, 220, 40], [230, 40, 30]], dtype=np.float32
)


def occlusion_map(
    classifier,
    image_uint8: np.ndarray,
    target_index: int,
    patch: int | None = None,
    stride: int | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Return a float32 ``(H, W)`` heat map in 0..1 for ``image_uint8`` (H, W[, 3]) and one class.

    ``patch`` and ``stride`` are in model-input pixels; the defaults (1/7 of the input side, half a
    patch) give 13 x 13 = 169 model calls at 224 px, about a second for the int8 model on a
    Raspberry Pi 4. The image is squash-resized to the model's input like the runtime does, and the
    map is resized back to the image's own size so it can be laid over what the user sees.
    """
    rgb = _as_rgb(image_uint8)
    size = int(classifier.spec.image_size)
    model_input = _resize_rgb(rgb, size)
    patch = int(patch or max(2, size // 7))
    stride = int(stride or max(1, patch // 2))
    if not 0 < patch <= size or stride <= 0:
        raise ValueError(f"patch must be in 1..{size} and stride positive, got {patch}, {stride}")
    if not 0 <= target_index < len(classifier.spec.class_names):
        raise ValueError(f"target_index {target_index} is not a class of this model")

    base = float(classifier.predict_arrays(model_input[None])[0, target_index])
    fill = model_input.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    starts = _starts(size, patch, stride)
    boxes = [(y, x) for y in starts for x in starts]

    drop = np.zeros((size, size), np.float32)
    hits = np.zeros((size, size), np.float32)
    for first in range(0, len(boxes), batch_size):
        chunk = boxes[first : first + batch_size]
        batch = np.repeat(model_input[None], len(chunk), axis=0)
        for i, (y, x) in enumerate(chunk):
            batch[i, y : y + patch, x : x + patch] = fill
        probs = np.asarray(classifier.predict_arrays(batch), dtype=np.float32)[:, target_index]
        for (y, x), p in zip(chunk, probs):
            drop[y : y + patch, x : x + patch] += base - p
            hits[y : y + patch, x : x + patch] += 1.0

    # Average over the patches covering each pixel; only drops count (a patch whose covering makes
    # the class more likely is not evidence for it).
    heat = _box_blur(np.clip(drop / np.maximum(hits, 1.0), 0.0, None), stride)
    if float(heat.max()) <= 1e-6:  # the answer does not depend on any one region
        return np.zeros(rgb.shape[:2], np.float32)
    heat = _resize_map(heat, rgb.shape[:2])
    return heat / heat.max()  # peak at 1 at the image's own size, whatever the resampling did


def overlay(image_uint8: np.ndarray, heatmap: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a 0..1 heat map over an image; returns uint8 RGB with the image's height and width.

    Colour strength grows with the heat, so cold regions keep the X-ray readable and only the
    regions the model depended on are tinted.
    """
    rgb = _as_rgb(image_uint8).astype(np.float32)
    heat = _resize_map(np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0), rgb.shape[:2])
    colours = colormap(heat).astype(np.float32)
    weight = (alpha * heat)[..., None]
    return (rgb * (1.0 - weight) + colours * weight).round().clip(0, 255).astype(np.uint8)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in 0..1 to uint8 RGB colours on the blue-to-red ramp."""
    v = np.clip(np.asarray(values, np.float32), 0.0, 1.0)
    channels = [np.interp(v, _RAMP_POSITIONS, _RAMP_COLOURS[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def _box_blur(heat: np.ndarray, width: int) -> np.ndarray:
    """Soften the stride-sized steps overlapping patches leave, so a region reads as a region.

    A separable mean filter ``width`` px wide (made odd so it stays centred), edges repeated.
    """
    if width < 2:
        return heat
    k = width | 1
    out = heat.astype(np.float64)
    for axis in (0, 1):
        pad = [(k // 2, k // 2) if a == axis else (0, 0) for a in range(2)]
        sums = np.cumsum(np.pad(out, pad, mode="edge"), axis=axis)
        sums = np.concatenate([np.zeros_like(np.take(sums, [0], axis=axis)), sums], axis=axis)
        n = out.shape[axis]
        out = (np.take(sums, np.arange(k, k + n), axis=axis) - np.take(sums, np.arange(n), axis=axis)) / k
    return out.astype(np.float32)


def _starts(size: int, patch: int, stride: int) -> list[int]:
    """Patch origins that cover the whole side, including the last strip a plain range would miss."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def _as_rgb(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        return arr[..., :3]
    if arr.ndim == 3 and arr.shape[-1] == 3:
        return arr
    raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {arr.shape}")


def _resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    if rgb.shape[:2] == (size, size):
        return np.ascontiguousarray(rgb)
    img = Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _resize_map(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    height, width = shape
    if heat.shape == (height, width):
        return heat.astype(np.float32)
    img = Image.fromarray(heat.astype(np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
