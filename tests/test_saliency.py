"""Occlusion saliency (edgecxr.saliency): where the map points, its shape and range, batching, overlay."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from edgecxr.saliency import colormap, occlusion_map, overlay

SIZE = 32
REGION = (slice(4, 12), slice(20, 28))  # rows, cols the fake model looks at


class SpotClassifier:
    """A numpy stand-in for runtime.Classifier whose class 1 depends only on one bright square.

    Covering that square with the image's mean grey must lower class 1, so the occlusion map has
    to peak there; every call is recorded to check the batching.
    """

    def __init__(self, size=SIZE):
        self.spec = SimpleNamespace(image_size=size, class_names=["normal", "covid19", "bacterial", "viral"])
        self.batches = []

    def predict_arrays(self, arrays):
        arrays = np.asarray(arrays)
        assert arrays.dtype == np.uint8 and arrays.shape[1:] == (self.spec.image_size,) * 2 + (3,)
        self.batches.append(len(arrays))
        spot = arrays[:, REGION[0], REGION[1]].mean(axis=(1, 2, 3)) / 255.0
        p1 = 0.2 + 0.7 * spot
        rest = (1.0 - p1) / 3
        return np.stack([rest, p1, rest, rest], axis=1).astype(np.float32)


def spot_image(height=SIZE, width=SIZE):
    img = np.full((height, width, 3), 60, np.uint8)
    rows = slice(REGION[0].start * height // SIZE, REGION[0].stop * height // SIZE)
    cols = slice(REGION[1].start * width // SIZE, REGION[1].stop * width // SIZE)
    img[rows, cols] = 250
    return img


def test_map_peaks_where_the_model_looks():
    heat = occlusion_map(SpotClassifier(), spot_image(), target_index=1, patch=4, stride=2)
    assert heat.shape == (SIZE, SIZE) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() == pytest.approx(1.0)
    spot = np.zeros(heat.shape, bool)
    spot[REGION] = True
    assert heat[spot].mean() > 0.5 and heat[~spot].mean() < 0.1
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    assert REGION[0].start <= row < REGION[0].stop and REGION[1].start <= col < REGION[1].stop


def test_map_has_the_image_size_when_the_image_is_not_model_sized():
    image = spot_image(48, 80)  # squashed to 32x32 for the model, like the runtime does
    heat = occlusion_map(SpotClassifier(), image, target_index=1, patch=4, stride=2)
    assert heat.shape == (48, 80)
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    assert 4 * 48 // SIZE <= row < 12 * 48 // SIZE and 20 * 80 // SIZE <= col < 28 * 80 // SIZE


def test_grayscale_input_is_accepted():
    heat = occlusion_map(SpotClassifier(), spot_image()[..., 0], target_index=1, patch=4, stride=2)
    assert heat.shape == (SIZE, SIZE) and heat.max() == pytest.approx(1.0)


def test_occluded_copies_go_through_in_batches_and_batching_does_not_change_the_map():
    clf = SpotClassifier()
    heat16 = occlusion_map(clf, spot_image(), 1, patch=8, stride=4, batch_size=16)
    # 7 x 7 patch positions = 49 occluded copies, plus the one unoccluded call first
    assert clf.batches == [1, 16, 16, 16, 1]
    heat1 = occlusion_map(SpotClassifier(), spot_image(), 1, patch=8, stride=4, batch_size=1)
    np.testing.assert_allclose(heat16, heat1, atol=1e-6)


def test_patches_cover_the_last_strip_when_the_stride_does_not_divide():
    heat = occlusion_map(SpotClassifier(), spot_image(), 1, patch=5, stride=4)
    assert heat.shape == (SIZE, SIZE) and np.isfinite(heat).all()


def test_a_model_that_ignores_the_image_gives_an_all_zero_map():
    clf = SpotClassifier()
    clf.predict_arrays = lambda a: np.tile(np.float32([[0.1, 0.6, 0.2, 0.1]]), (len(a), 1))
    heat = occlusion_map(clf, spot_image(), 1, patch=4, stride=4)
    assert heat.shape == (SIZE, SIZE) and not heat.any()


@pytest.mark.parametrize(
    "kwargs",
    [{"target_index": 7}, {"target_index": 1, "patch": 64}, {"target_index": 1, "stride": -1}],
)
def test_bad_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        occlusion_map(SpotClassifier(), spot_image(), **kwargs)


def test_float_images_are_rejected():
    with pytest.raises(ValueError, match="uint8"):
        occlusion_map(SpotClassifier(), spot_image().astype(np.float32), 1)


def test_overlay_tints_hot_regions_and_leaves_cold_ones_alone():
    image = np.full((40, 60), 100, np.uint8)  # grayscale in, RGB out
    heat = np.zeros((40, 60), np.float32)
    heat[10:20, 30:40] = 1.0
    out = overlay(image, heat)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    assert (out[0, 0] == 100).all()  # cold: the X-ray unchanged
    red, green, blue = (int(v) for v in out[15, 35])
    assert red > 150 and blue < 100  # hot: red on the ramp


def test_overlay_resizes_a_smaller_heat_map_to_the_image():
    image = np.full((64, 96, 3), 80, np.uint8)
    heat = np.zeros((8, 8), np.float32)
    heat[:, 4:] = 1.0
    out = overlay(image, heat)
    assert out.shape == (64, 96, 3)
    assert out[32, 90, 0] > out[32, 5, 0]


def test_zero_heat_returns_the_image():
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(overlay(image, np.zeros((16, 16), np.float32)), image)


def test_colormap_runs_from_blue_to_red():
    low, high = colormap(np.array([0.0, 1.0]))
    assert low[2] > low[0] and high[0] > high[2]
    assert colormap(np.linspace(0, 1, 50)).shape == (50, 3)


@pytest.mark.parametrize(
    "label, centre_xy", [("covid19", (0.3, 0.3)), ("bacterial", (0.7, 0.3)), ("viral", (0.5, 0.75))]
)
def test_with_the_tflite_model_the_map_points_at_the_class_blob(tiny_tflite, label, centre_xy):
    """The tiny int8 model learnt where each class's bright blob sits; the map must find it."""
    from synthetic import synthetic_image

    from edgecxr.runtime import Classifier

    clf = Classifier(tiny_tflite.uint8)
    gray = synthetic_image(label, np.random.default_rng(3), 64)
    image = np.asarray(Image.fromarray(gray).convert("RGB"))
    prediction = clf.predict(image)
    assert prediction.label == label
    heat = occlusion_map(clf, image, prediction.index)
    assert heat.shape == (64, 64) and heat.dtype == np.float32
    assert 0.0 <= heat.min() and heat.max() == pytest.approx(1.0) and np.isfinite(heat).all()
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    assert abs(col - centre_xy[0] * 64) <= 10 and abs(row - centre_xy[1] * 64) <= 10


def test_saliency_imports_no_tensorflow(tiny_tflite):
    code = (
        "import sys, numpy as np\n"
        "from edgecxr.runtime import Classifier\n"
        "from edgecxr.saliency import occlusion_map, overlay\n"
        f"clf = Classifier({str(tiny_tflite.uint8)!r})\n"
        "img = np.full((32, 32, 3), 90, np.uint8)\n"
        "overlay(img, occlusion_map(clf, img, 0))\n"
        "print(any(m.split('.')[0] == 'tensorflow' for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
