"""DICOM input: the tests write their own small films with pydicom (uncompressed) and check each
step a radiology viewer applies, the refusals, and that patient identifiers never leave the file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, generate_uid  # noqa: E402

from edgecxr.errors import ImageError  # noqa: E402
from edgecxr.preprocess import NOT_XRAY_FLAT, load_image, xray_warning  # noqa: E402
from edgecxr.runtime import default_model_path  # noqa: E402
from synthetic import synthetic_image  # noqa: E402

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-4711-SECRET"


def write_dicom(path, pixels: np.ndarray, *, bits_stored: int = 12, signed: bool = False,
                photometric: str = "MONOCHROME2", syntax=ExplicitVRLittleEndian, preamble: bool = True,
                **attrs) -> str:
    """Write ``pixels`` (2-D, or 3-D for frames) as a DICOM file; extra keyword = DICOM attributes."""
    pixels = np.asarray(pixels)
    __import__("pathlib").Path(path).parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.Modality = "DX"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = pixels.astype("<i2" if signed else "<u2").tobytes()
    ds.save_as(str(path), enforce_file_format=preamble)
    return str(path)


def film(size: int = 64, seed: int = 0) -> np.ndarray:
    """A synthetic 8-bit film with a structure the model and the loader can be checked on."""
    return synthetic_image("covid19", np.random.default_rng(seed), size)


def grey(arr) -> np.ndarray:
    """load_image output is grey (all channels equal) for DICOM; return one channel as int."""
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
    return arr[..., 0].astype(int)


def test_stored_range_matches_the_png(tmp_path):
    """No window: the stored values are stretched over their own range, as the PNG is."""
    img = film()
    stored = img.astype(np.uint16) * 16  # 12-bit: 0..4080
    dcm = write_dicom(tmp_path / "a.dcm", stored)
    png = tmp_path / "a.png"
    Image.fromarray(((img - img.min()) * (255.0 / (img.max() - img.min()))).round().astype(np.uint8)).save(png)
    assert np.abs(grey(load_image(dcm, 64)) - grey(load_image(png, 64))).max() <= 1


def test_rescale_then_window(tmp_path):
    """Slope/intercept first, then the first window: values below/above it clip to black/white."""
    stored = np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (64, 1))  # 0..4032 across
    # values = 2*stored - 1000; window centre 3000 width 2000 -> 2000..4000 maps to 0..255
    path = write_dicom(tmp_path / "w.dcm", stored, RescaleSlope=2, RescaleIntercept=-1000,
                       WindowCenter=[3000, 500], WindowWidth=[2000, 100])
    row = grey(load_image(path, 64))[0]
    values = stored[0].astype(float) * 2 - 1000
    expected = np.clip((values - 2999.5) / 1999 + 0.5, 0, 1) * 255
    assert np.abs(row - expected).max() <= 1
    assert row[values < 2000].max() == 0 and row[values > 4000].min() == 255


def test_voi_lut_wins_over_the_window(tmp_path):
    """A VOI LUT Sequence (here: an inverting 8-bit table) is used before any window."""
    stored = np.tile(np.arange(0, 256, 4, dtype=np.uint16), (64, 1))
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.LUTData = np.arange(255, -1, -1, dtype="<u2").tobytes()
    path = write_dicom(tmp_path / "lut.dcm", stored, bits_stored=8, WindowCenter=128, WindowWidth=10)
    ds = pydicom.dcmread(path)
    ds.VOILUTSequence = [item]
    ds.save_as(path)
    row = grey(load_image(path, 64))[0]
    assert np.abs(row - (255 - stored[0])).max() <= 1


def test_monochrome1_is_inverted_so_bone_is_bright(tmp_path):
    img = film()
    stored = img.astype(np.uint16) * 16
    m2 = grey(load_image(write_dicom(tmp_path / "m2.dcm", stored), 64))
    m1 = grey(load_image(write_dicom(tmp_path / "m1.dcm", 4080 - stored, photometric="MONOCHROME1"), 64))
    assert np.abs(m1 - m2).max() <= 1
    assert m2[20, 20] > m2[60, 60]  # the bright blob at (0.3, 0.3) stays bright


@pytest.mark.parametrize("bits", [10, 12, 14, 16])
def test_bits_stored_is_respected(tmp_path, bits):
    """Bits above BitsStored (overlays, garbage) are ignored; the range is BitsStored's own."""
    top = (1 << bits) - 1
    stored = np.tile(np.linspace(0, top, 64).round().astype(np.uint32), (64, 1))
    dirty = stored | (np.uint32(0xFFFF) & ~np.uint32(top)) if bits < 16 else stored
    clean = grey(load_image(write_dicom(tmp_path / "c.dcm", stored, bits_stored=bits), 64))
    noisy = grey(load_image(write_dicom(tmp_path / "d.dcm", dirty, bits_stored=bits), 64))
    assert np.array_equal(clean, noisy)
    assert clean[0, 0] == 0 and clean[0, -1] == 255
    # a window given in BitsStored units lands where it should
    windowed = grey(load_image(write_dicom(tmp_path / "w.dcm", dirty, bits_stored=bits,
                                           WindowCenter=top / 2, WindowWidth=top), 64))
    assert abs(int(windowed[0, 32]) - 128) <= 3


def test_signed_pixels(tmp_path):
    """PixelRepresentation 1: -2048..2047 (12-bit two's complement), negative is dark."""
    values = np.tile(np.linspace(-2048, 2047, 64).round().astype(np.int16), (64, 1))
    stored = (values.astype(np.int32) & 0xFFF).astype(np.uint16)  # 12-bit two's complement, high bits 0
    row = grey(load_image(write_dicom(tmp_path / "s.dcm", stored.view(np.int16), signed=True), 64))[0]
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0)


def test_dicom_without_suffix_is_found_by_its_magic(tmp_path):
    path = write_dicom(tmp_path / "IM000001", film().astype(np.uint16) * 16)
    assert load_image(path, 32).shape == (32, 32, 3)
    with open(path, "rb") as fh:
        data = fh.read()
    assert data[128:132] == b"DICM"
    assert np.array_equal(load_image(data, 32), load_image(path, 32))


def test_multi_frame_is_refused_by_name(tmp_path):
    frames = np.stack([film(32, s).astype(np.uint16) for s in range(3)])
    path = write_dicom(tmp_path / "cine.dcm", frames, bits_stored=8)
    with pytest.raises(ImageError, match=r"cine\.dcm: multi-frame DICOM \(3 frames\)"):
        load_image(path, 32)


def _compressed_file(path, syntax) -> str:
    write_dicom(path, film(32).astype(np.uint16), bits_stored=8)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])  # not a valid stream
    ds.save_as(path)
    return str(path)


def test_compressed_without_decoder_names_the_extra(tmp_path, monkeypatch):
    """JPEG-LS (no decoder unless the [dicom] extra is installed): one line naming the extra."""
    from pydicom.pixels import get_decoder

    from edgecxr import dicom

    if get_decoder(JPEGLSLossless).is_available:  # the extra is installed here: pretend it is not
        monkeypatch.setattr(dicom, "_decoder_available", lambda syntax: False)
    path = _compressed_file(tmp_path / "jls.dcm", JPEGLSLossless)
    with pytest.raises(ImageError) as info:
        load_image(path, 32)
    message = str(info.value)
    assert "\n" not in message and "jls.dcm" in message
    assert "compressed DICOM (JPEG-LS" in message and "pip install 'edgecxr[dicom]'" in message


def test_compressed_with_decoder_but_damaged_says_damaged(tmp_path, monkeypatch):
    from edgecxr import dicom

    monkeypatch.setattr(dicom, "_decoder_available", lambda syntax: True)
    with pytest.raises(ImageError, match=r"j2k\.dcm: damaged DICOM compressed \(JPEG 2000"):
        load_image(_compressed_file(tmp_path / "j2k.dcm", JPEG2000Lossless), 32)


def test_damaged_and_empty_dicom_are_one_line_errors(tmp_path):
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage")
    with pytest.raises(ImageError, match="broken.dcm"):
        load_image(str(broken), 32)
    nopix = tmp_path / "nopix.dcm"
    path = write_dicom(nopix, film(16).astype(np.uint16), bits_stored=8)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ImageError, match="no Pixel Data"):
        load_image(path, 32)


def test_flat_dicom_gets_the_same_warning(tmp_path):
    flat = write_dicom(tmp_path / "flat.dcm", np.full((32, 32), 700, np.uint16))
    assert xray_warning(load_image(flat, 32)) == NOT_XRAY_FLAT


SHIPPED_MODEL = default_model_path()


def test_same_film_same_label_as_png_and_no_patient_id_anywhere(tmp_path):
    """MONOCHROME2 and MONOCHROME1 12-bit DICOM and the 8-bit PNG get the same top label, and
    predict's output (text and JSON) never carries the patient's name or id."""
    from click.testing import CliRunner

    from edgecxr.cli import main
    from edgecxr.runtime import Classifier

    img = film(128)
    png = tmp_path / "film.png"
    Image.fromarray(img).save(png)
    lo, hi = int(img.min()), int(img.max())
    stored = np.round((img.astype(float) - lo) / (hi - lo) * 4095).astype(np.uint16)
    m2 = write_dicom(tmp_path / "m2.dcm", stored)
    m1 = write_dicom(tmp_path / "m1", 4095 - stored, photometric="MONOCHROME1")  # no suffix too
    clf = Classifier(SHIPPED_MODEL)
    labels = {clf.predict(p).label for p in (str(png), m2, m1)}
    assert len(labels) == 1

    runner = CliRunner()
    for args in (["predict", "--model", str(SHIPPED_MODEL), m2, m1],
                 ["predict", "--model", str(SHIPPED_MODEL), "--json", m2, m1]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0, result.output
        everything = result.output + result.stderr  # click 8.2+: output holds both streams
        assert PATIENT_ID not in everything and "Doe" not in everything
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["label"] for r in rows] == [labels.pop()] * 2


def test_colour_dicom_is_refused_by_name(tmp_path):
    path = write_dicom(tmp_path / "rgb.dcm", film(16).astype(np.uint16), bits_stored=8, photometric="RGB")
    with pytest.raises(ImageError, match=r"rgb\.dcm: DICOM RGB image; only greyscale"):
        load_image(path, 32)


@pytest.mark.filterwarnings("ignore:.*have no patient id")
def test_data_check_and_class_folders_read_dicom(tmp_path):
    """A class-folder data set of .dcm films: found, decoded by the loader's DICOM path, and a
    multi-frame file reported by name instead of 'not an image'."""
    from edgecxr import data
    from synthetic import CLASSES

    rng = np.random.default_rng(0)
    for label in CLASSES:
        for i in range(3):
            img = synthetic_image(label, rng, 32).astype(np.uint16) * 16
            write_dicom(tmp_path / label / f"{label}_{i}.dcm", img)
    write_dicom(tmp_path / "normal" / "cine.dcm", np.stack([film(16)] * 2).astype(np.uint16), bits_stored=8)
    records = data.load_records(tmp_path)
    assert len(records) == 13 and all(r.file.endswith(".dcm") for r in records)
    report = data.check_data(tmp_path)
    text = json.dumps(report.__dict__, default=str)
    assert "multi-frame DICOM (2 frames)" in text and "not an image" not in text
    assert PATIENT_ID not in text and "Doe" not in text


def test_predict_dicom_without_tensorflow(tmp_path):
    """`edgecxr predict x.dcm` on a runtime-only install: TensorFlow and Keras cannot be imported."""
    from no_tensorflow import run_without_tensorflow

    path = write_dicom(tmp_path / "x.dcm", film(96).astype(np.uint16) * 16)
    done = run_without_tensorflow(
        """
        from edgecxr.cli import main
        main(["predict", "--json", "--model", sys.argv[1], sys.argv[2]])
        """, SHIPPED_MODEL, path)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["file"] == path and record["label"] in record["probabilities"]
    assert PATIENT_ID not in done.stdout + done.stderr


def test_app_analysis_reads_dicom_at_its_aspect_ratio(tmp_path):
    """The app's Kivy-free analysis: a 64x32 DICOM displays 2:1 and is classified like predict does."""
    import sys
    from pathlib import Path

    from edgecxr.runtime import Classifier

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mobile_app"))
    from edgecxr_app import analysis

    wide = np.tile(film(64)[:32], (1, 1)).astype(np.uint16) * 16
    path = write_dicom(tmp_path / "wide.dcm", wide)
    clf = Classifier(SHIPPED_MODEL)
    result = analysis.analyse(clf, path)
    assert result.display.shape[:2] == (32, 64)
    assert result.prediction.label == clf.predict(path).label and result.warning == ""


def test_folders_find_suffixless_dicom_films(tmp_path):
    """PACS exports name films IM000001: predict FOLDER, class folders and data check find them by the
    magic, while other suffix-less files (notes, DICOMDIR-like text) are still skipped."""
    from edgecxr import data
    from edgecxr.preprocess import is_image_file
    from edgecxr.runtime import expand_images
    from synthetic import CLASSES

    rng = np.random.default_rng(1)
    for label in CLASSES:
        for i in range(3):
            write_dicom(tmp_path / label / f"IM{i:06d}", synthetic_image(label, rng, 32).astype(np.uint16) * 16)
    (tmp_path / "normal" / "README").write_text("exported by the PACS\n")
    (tmp_path / "normal" / ".IM000009").write_bytes((tmp_path / "normal" / "IM000000").read_bytes())
    assert is_image_file(tmp_path / "normal" / "IM000000")
    assert not is_image_file(tmp_path / "normal" / "README")
    assert not is_image_file(tmp_path / "normal" / ".IM000009")  # hidden files stay skipped
    files, problems = expand_images([tmp_path])
    assert len(files) == 12 and not problems and not any(f.endswith("README") for f in files)
    records = data.load_records(tmp_path)
    assert len(records) == 12 and {r.label for r in records} == set(CLASSES)
    report = data.check_data(tmp_path)
    assert report.n_images == 12 and report.unreadable == [] and report.sizes == {"32x32": 12}
