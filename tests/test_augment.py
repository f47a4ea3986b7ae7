"""Training augmentation: one affine warp per image, within the configured ranges, reproducible."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from edgecxr.config import TrainConfig
from edgecxr.train import augmenter

OFF = dict(flip=False, rotation_deg=0.0, zoom=0.0, shift=0.0, brightness=0.0, contrast=0.0)


def asymmetric(n=64, size=32):
    """Bright left half, a dot top-left: any flip or shift shows."""
    img = np.zeros((size, size, 3), np.uint8)
    img[:, : size // 2] = 120
    img[4:8, 4:8] = 255
    return np.repeat(img[None], n, axis=0)


def run(cfg, images, step=0):
    return augmenter(cfg, tf)(tf.constant(images), step).numpy()


def test_all_off_is_identity():
    images = asymmetric()
    np.testing.assert_allclose(run(TrainConfig(**OFF), images), images.astype(np.float32), atol=1e-3)


def test_flip_mirrors_about_half_of_the_images():
    images = asymmetric()
    out = run(TrainConfig(**{**OFF, "flip": True}), images)
    same = [np.allclose(o, images[0], atol=1e-3) for o in out]
    mirrored = [np.allclose(o, images[0][:, ::-1], atol=1e-3) for o in out]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 10 < sum(mirrored) < 54


def centroid(img):
    ys, xs = np.nonzero(img[..., 0] > 128)
    return ys.mean(), xs.mean()


def test_shift_moves_within_the_range():
    size, shift = 64, 0.1
    img = np.zeros((size, size, 3), np.uint8)
    img[30:34, 30:34] = 255
    images = np.repeat(img[None], 32, axis=0)
    out = run(TrainConfig(**{**OFF, "shift": shift}), images)
    moves = np.array([np.subtract(centroid(o), centroid(img)) for o in out])
    assert np.abs(moves).max() <= shift * size + 1
    assert np.abs(moves[:, 0]).max() > 2 and np.abs(moves[:, 1]).max() > 2  # both axes, independently
    assert not np.allclose(moves[:, 0], moves[:, 1])


def test_rotation_and_zoom_keep_the_centre_and_stay_in_range():
    size = 64
    img = np.zeros((size, size, 3), np.uint8)
    img[8:12, 30:34] = 255  # a dot straight above the centre
    images = np.repeat(img[None], 32, axis=0)
    out = run(TrainConfig(**{**OFF, "rotation_deg": 10.0, "zoom": 0.15}), images)
    centre = (size - 1) / 2
    angles, radii = [], []
    for o in out:
        y, x = centroid(o)
        angles.append(np.degrees(np.arctan2(x - centre, centre - y)))
        radii.append(np.hypot(x - centre, y - centre))
    r0 = np.hypot(*np.subtract(centroid(img), centre))
    assert max(np.abs(angles)) <= 11 and max(np.abs(angles)) > 3
    assert all(r0 / 1.15 - 1 <= r <= r0 / 0.85 + 1 for r in radii)


def test_same_step_same_images_other_step_others():
    cfg = TrainConfig()
    images = asymmetric(8)
    np.testing.assert_array_equal(run(cfg, images, 5), run(cfg, images, 5))
    assert not np.allclose(run(cfg, images, 5), run(cfg, images, 6))
    out = run(cfg, images, 5)
    assert out.min() >= 0 and out.max() <= 255


def test_keras_layers_augmentation_still_runs_for_old_recipes():
    cfg = TrainConfig(augmentation="keras_layers")
    images = asymmetric(8)
    out = run(cfg, images, 3)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255
    assert not np.allclose(out, images)
    np.testing.assert_allclose(run(TrainConfig(augmentation="keras_layers", **OFF), images), images, atol=1e-3)


def test_unknown_augmentation_is_a_config_error():
    from edgecxr.errors import EdgeCXRError

    with pytest.raises(EdgeCXRError, match="augmentation must be"):
        TrainConfig.from_dict({"augmentation": "fancy"})


def extent(img):
    ys, xs = np.nonzero(img[..., 0] > 128)
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


def test_aspect_stretches_width_against_height_within_the_range():
    size, aspect = 64, 0.3
    img = np.zeros((size, size, 3), np.uint8)
    img[16:48, 16:48] = 255  # a 32 x 32 square in the centre
    out = run(TrainConfig(**{**OFF, "aspect": aspect}), np.repeat(img[None], 32, axis=0))
    ratios = np.array([w / h for h, w in map(extent, out)])
    assert ratios.min() >= (1 - aspect) * 0.9 and ratios.max() <= (1 + aspect) * 1.1
    assert ratios.min() < 0.9 and ratios.max() > 1.1  # both ways
    areas = np.array([h * w for h, w in map(extent, out)])
    assert np.all(np.abs(areas / 32 ** 2 - 1) < 0.15)  # a stretch, not a zoom


def test_border_blacks_out_bands_at_the_edges_only():
    size, border = 64, 0.1
    images = np.full((32, size, size, 3), 200, np.uint8)
    out = run(TrainConfig(**{**OFF, "border": border}), images)
    band = int(np.ceil(border * size))
    inner = out[:, band:-band, band:-band]
    np.testing.assert_allclose(inner, 200.0, atol=1e-3)  # the middle is never touched
    widths = [(o[:, :, 0] == 0).all(axis=0)[: size // 2].sum() for o in out]  # black columns on the left
    assert max(widths) <= band and len(set(widths)) > 2  # random, independent per image


def test_gamma_bends_the_tone_curve_but_keeps_black_white_and_order():
    ramp = np.tile(np.linspace(0, 255, 32, dtype=np.float32).astype(np.uint8)[None, :, None], (32, 1, 3))
    out = run(TrainConfig(**{**OFF, "gamma": 0.4}), np.repeat(ramp[None], 16, axis=0))
    row = out[:, 0, :, 0]
    np.testing.assert_allclose(row[:, 0], 0.0, atol=1e-3)
    np.testing.assert_allclose(row[:, -1], 255.0, atol=1e-2)
    assert np.all(np.diff(row, axis=1) >= 0)  # monotonic: nothing turns from dark to light
    mid = row[:, 16]
    assert mid.min() < ramp[0, 16, 0] - 10 and mid.max() > ramp[0, 16, 0] + 10  # bent both ways


def test_cue_removal_needs_the_affine_augmentation():
    with pytest.raises(Exception, match="need augmentation=affine"):
        TrainConfig(augmentation="keras_layers", border=0.05).validate()
