"""preprocess.load_image on the image modes real collections contain, and on broken files.

The writers below make one odd file each; test_data.py reuses them to build a messy data set.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgecxr.errors import ImageError
from edgecxr.preprocess import load_image, load_images

EXIF_ORIENTATION = 0x0112


def write_16bit_png(path: Path) -> Path:
    """A 16-bit grayscale PNG whose values only span 1000..3000 (as DICOM exports often do),
    brightening from left to right."""
    ramp = np.linspace(1000, 3000, 48, dtype=np.float64)
    Image.fromarray(np.tile(ramp, (24, 1)).astype(np.uint16)).save(path)
    return path


def write_rgba_png(path: Path) -> Path:
    """Left half opaque red, right half fully transparent white."""
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:, :16] = (255, 0, 0, 255)
    rgba[:, 16:] = (255, 255, 255, 0)
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def write_palette_png(path: Path) -> Path:
    """A palette image: top half palette entry 0 (green), bottom half entry 1 (blue)."""
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 200, 0, 0, 0, 220] + [0] * (256 * 3 - 6))
    img.paste(1, (0, 16, 32, 32))
    img.save(path)
    return path


def write_exif_rotated_jpeg(path: Path, width: int = 80, height: int = 40) -> Path:
    """Stored landscape with the left half white, EXIF orientation 6 (turn 90 degrees clockwise
    to view): shown upright, the white half is on top."""
    arr = np.zeros((height, width), np.uint8)
    arr[:, : width // 2] = 255
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=95)
    return path


def jpeg_bytes(size: int = 96, seed: int = 0) -> bytes:
    noise = np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_truncated_jpeg(path: Path) -> Path:
    data = jpeg_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_text_as_jpeg(path: Path) -> Path:
    path.write_text("this is not an image\n")
    return path


def write_empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def test_16bit_png_is_stretched_over_its_own_range(tmp_path):
    with Image.open(write_16bit_png(tmp_path / "a.png")) as img:
        assert img.mode.startswith("I")
    arr = load_image(tmp_path / "a.png", 32)
    assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
    # 1000..3000 mapped to the full 8-bit range (a plain convert would clip it all to white);
    # resizing 48 -> 32 px blends the extreme columns a little
    assert arr.min() < 10 and arr.max() > 245
    row = arr[10, :, 0].astype(int)
    assert np.all(np.diff(row) >= 0)  # the ramp still brightens left to right
    assert np.array_equal(arr[..., 0], arr[..., 2])  # gray stays gray


def test_rgba_transparent_part_becomes_black(tmp_path):
    arr = load_image(write_rgba_png(tmp_path / "a.png"), 32)
    assert arr[16, 4].tolist() == [255, 0, 0]
    assert arr[16, 28].tolist() == [0, 0, 0]


def test_palette_png_keeps_its_colours(tmp_path):
    arr = load_image(write_palette_png(tmp_path / "p.png"), 32)
    assert arr[4, 16].tolist() == [0, 200, 0]
    assert arr[28, 16].tolist() == [0, 0, 220]


@pytest.mark.parametrize("stored, size", [((80, 40), 16), ((400, 200), 32)])  # 2nd uses JPEG draft
def test_exif_rotation_is_applied(tmp_path, stored, size):
    arr = load_image(write_exif_rotated_jpeg(tmp_path / "r.jpg", *stored), size)[..., 0].astype(float)
    half = size // 2
    assert arr[:half].mean() > 200 and arr[half:].mean() < 50  # white on top after rotation
    assert abs(arr[:, :half].mean() - arr[:, half:].mean()) < 10  # not left/right any more


def test_grayscale_and_bytes_sources_give_rgb(tmp_path):
    arr = load_image(jpeg_bytes(), 48)
    assert arr.shape == (48, 48, 3)
    assert np.array_equal(arr[..., 0], arr[..., 1])


@pytest.mark.parametrize(
    "writer, message",
    [
        (write_truncated_jpeg, "truncated"),
        (write_text_as_jpeg, "not a readable image"),
        (write_empty, "not a readable image"),
    ],
)
def test_broken_files_raise_one_line_image_error(tmp_path, writer, message):
    path = writer(tmp_path / "broken file.jpg")
    with pytest.raises(ImageError, match=message) as info:
        load_image(path, 32)
    assert "broken file.jpg" in str(info.value) and "\n" not in str(info.value)


def test_missing_file_and_folder_raise_image_error(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "nope.png", 32)
    with pytest.raises(ImageError):
        load_image(tmp_path, 32)


def test_caller_file_object_is_left_open(tmp_path):
    path = write_palette_png(tmp_path / "p.png")
    with path.open("rb") as fh:
        load_image(fh, 16)
        assert not fh.closed
        fh.seek(0)
        assert load_image(fh, 8).shape == (8, 8, 3)


def test_load_images_skips_and_reports_unreadable(tmp_path):
    good = write_palette_png(tmp_path / "good.png")
    bad = write_truncated_jpeg(tmp_path / "bad.jpg")
    errors = []
    arrays, ok = load_images([bad, good, tmp_path / "gone.png"], 16, on_error=lambda p, m: errors.append(p))
    assert arrays.shape == (1, 16, 16, 3) and ok == [1]
    assert errors == [bad, tmp_path / "gone.png"]


def _rgb_throughout(path, size, equalize):
    """The loader as it was before greyscale films stayed one band: RGB from the start."""
    from PIL import ImageOps

    with Image.open(path) as img:
        img.draft(img.mode, (size, size))
        img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(ImageOps.equalize(img) if equalize else img)


@pytest.mark.parametrize("equalize", [False, True])
def test_one_band_fast_path_gives_what_rgb_throughout_gave(tmp_path, equalize):
    """Grey JPEG (draft-decoded), the same film saved as RGB, and a colour photo: same pixels as
    the RGB-throughout loader, colour kept (the not-an-X-ray check needs it)."""
    from synthetic import synthetic_image

    rng = np.random.default_rng(3)
    grey = synthetic_image("viral", rng, 200)
    colour = np.stack([grey, np.roll(grey, 7, axis=1), 255 - grey], axis=2)
    files = {"grey.jpg": Image.fromarray(grey), "grey_rgb.png": Image.fromarray(grey).convert("RGB"),
             "photo.jpg": Image.fromarray(colour)}
    for name, img in files.items():
        img.save(tmp_path / name)
        got = load_image(tmp_path / name, 48, equalize=equalize)
        np.testing.assert_array_equal(got, _rgb_throughout(tmp_path / name, 48, equalize))
    assert not np.array_equal(got[..., 0], got[..., 2])  # the photo is still in colour


def test_numpy_equalize_table_matches_pillow():
    """equalize_lut reproduces ImageOps.equalize exactly: smooth, sparse, two-level and flat bands."""
    from PIL import ImageOps

    from edgecxr.preprocess import equalize_lut

    rng = np.random.default_rng(0)
    bands = [rng.normal(100, 30, (40, 50)).clip(0, 255).astype(np.uint8),
             rng.choice([3, 90, 91, 250], (33, 17)).astype(np.uint8),
             np.where(rng.random((20, 20)) < 0.9, 10, 200).astype(np.uint8),
             np.full((8, 8), 77, np.uint8),
             rng.integers(0, 256, (160, 160), dtype=np.uint8)]
    for band in bands:
        expected = np.asarray(ImageOps.equalize(Image.fromarray(band)))
        hist = np.bincount(band.ravel(), minlength=256)
        np.testing.assert_array_equal(equalize_lut(hist)[band], expected)


def test_exif_rotated_jpeg_is_still_turned_upright(tmp_path):
    arr = np.zeros((40, 20), np.uint8)
    arr[:10] = 255  # bright top
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif)
    out = load_image(tmp_path / "r.jpg", 20)[..., 0].astype(int)
    assert out[:, -5:].mean() > 200 and out[:, :5].mean() < 50  # the bright side is now on the right


def test_xray_warning_flat_threshold_is_a_standard_deviation_of_four_levels():
    from edgecxr.preprocess import NOT_XRAY_COLOUR, NOT_XRAY_FLAT, xray_warning

    rng = np.random.default_rng(1)
    for sigma, expected in ((3.5, NOT_XRAY_FLAT), (4.6, "")):
        grey = np.round(rng.normal(120, sigma, (64, 64))).astype(np.uint8)
        assert (float(grey.std()) < 4.0) == (expected == NOT_XRAY_FLAT)
        assert xray_warning(np.repeat(grey[:, :, None], 3, axis=2)) == expected
    photo = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert xray_warning(photo) == NOT_XRAY_COLOUR
