"""edgecxr.runtime and `edgecxr predict`: TF-free inference that matches training and Keras."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgecxr import runtime
from edgecxr.cli import main
from edgecxr.errors import ImageError, MissingExtraError, ModelFileError
from edgecxr.preprocess import load_image
from edgecxr.runtime import Classifier
from edgecxr.spec import ModelSpec, embed_spec, sidecar_path
from no_tensorflow import run_without_tensorflow


def _write_images(folder: Path, images: np.ndarray, labels) -> list[Path]:
    """One PNG per image, named after its class index, in a folder with a space in its name."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (img, label) in enumerate(zip(images, labels)):
        path = folder / f"img {i:02d} class{label}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
    return paths


def _odd_images(folder: Path) -> dict[str, Path]:
    """Files real collections contain: a large EXIF-rotated JPEG, a 16-bit PNG, a palette GIF."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    big = rng.integers(0, 255, (300, 200, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    Image.fromarray(big).save(folder / "rotated.jpg", exif=exif, quality=90)
    deep = (rng.integers(0, 4096, (50, 70)) * 16).astype(np.uint16)
    Image.fromarray(deep).save(folder / "sixteen bit.png")
    Image.fromarray(big[:40, :40]).convert("P").save(folder / "palette.gif")
    return {p.stem: p for p in folder.iterdir()}


# --- no TensorFlow -----------------------------------------------------------------------------------


def test_runtime_predicts_and_benches_with_tensorflow_unimportable(tiny_tflite, tmp_path):
    image = tmp_path / "chest.png"
    Image.fromarray(tiny_tflite.images[1]).save(image)
    done = run_without_tensorflow(
        """
        import json
        from edgecxr.bench import bench
        from edgecxr.runtime import Classifier

        model, image = sys.argv[1], sys.argv[2]
        pred = Classifier(model, num_threads=1).predict(image)
        report = bench([model], runs=2, warmup=1)
        print(json.dumps({
            "label": pred.label,
            "backend": Classifier(model).interpreter_name,
            "bench_status": report.rows[0].status,
            "tensorflow_loaded": any(m.split(".")[0] in ("tensorflow", "tf_keras") for m in sys.modules),
        }))
        """, tiny_tflite.uint8, image)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "label": "covid19",  # image 1 is a covid19 training image the model fits
        "backend": "ai_edge_litert",
        "bench_status": "ok",
        "tensorflow_loaded": False,
    }


def test_falls_back_to_tflite_runtime_when_ai_edge_litert_is_missing(tiny_tflite, monkeypatch):
    from ai_edge_litert.interpreter import Interpreter

    fake = types.ModuleType("tflite_runtime.interpreter")
    fake.Interpreter = Interpreter
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import now fails
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fake)
    clf = Classifier(tiny_tflite.float32)
    assert clf.interpreter_name == "tflite_runtime"
    assert clf.predict(tiny_tflite.images[0]).label == "normal"


def test_no_interpreter_at_all_names_the_package_to_install(monkeypatch):
    for name in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtraError, match="pip install ai-edge-litert"):
        runtime.interpreter_backend()


# --- same input as training, same output as Keras ------------------------------------------------


@pytest.mark.parametrize("equalize", [False, True])
def test_interpreter_input_is_exactly_the_training_preprocessing(tiny_tflite, tmp_path, equalize):
    model = tmp_path / "model.tflite"
    model.write_bytes(embed_spec(tiny_tflite.flatbuffers["float32"], ModelSpec(image_size=32, equalize=equalize)))
    clf = Classifier(model)
    files = _odd_images(tmp_path / "odd files")
    for path in files.values():
        clf.predict(path)
        fed = clf.interpreter.get_tensor(clf.input_details["index"])
        expected = load_image(path, tiny_tflite.image_size, equalize=equalize)
        np.testing.assert_array_equal(fed, expected[None].astype(np.float32), err_msg=path.name)
    # an in-memory array takes the same path as a file
    with Image.open(files["palette"]) as im:
        raw = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(clf.load(raw), load_image(files["palette"], 32, equalize=equalize))


def test_float_tflite_matches_keras(tiny_tflite):
    keras_probs = tiny_tflite.keras_model.predict(tiny_tflite.images.astype(np.float32), verbose=0)
    tflite_probs = Classifier(tiny_tflite.float32).predict_arrays(tiny_tflite.images)
    assert np.allclose(tflite_probs, keras_probs, atol=1e-5)
    # the fixture model must have learned something, or parity would be trivially true
    assert (keras_probs.argmax(axis=1) == tiny_tflite.labels).mean() > 0.8


def test_every_kind_of_image_input_gives_the_same_prediction(tiny_tflite, tmp_path):
    clf = Classifier(tiny_tflite.float32)
    path = _write_images(tmp_path / "in put", tiny_tflite.images[2:3], [2])[0]
    by_path = clf.predict(path)
    with Image.open(path) as pil:
        others = [clf.predict(str(path)), clf.predict(path.read_bytes()), clf.predict(pil),
                  clf.predict(tiny_tflite.images[2])]
    for pred in others:
        assert pred.label == by_path.label
        assert pred.probabilities == pytest.approx(by_path.probabilities, abs=1e-6)
    assert by_path.file == str(path) and others[2].file is None
    assert by_path.time_ms >= by_path.inference_ms > 0


def test_a_larger_array_is_resized_like_a_file(tiny_tflite):
    clf = Classifier(tiny_tflite.float32)
    big = np.asarray(Image.fromarray(tiny_tflite.images[3]).resize((96, 80)))
    fed = clf.load(big)
    np.testing.assert_array_equal(fed, load_image(Image.fromarray(big), tiny_tflite.image_size))
    with pytest.raises(ImageError, match="uint8"):
        clf.predict(big.astype(np.float32) / 255)


# --- quantized models --------------------------------------------------------------------------------


@pytest.mark.parametrize("io_dtype", ["uint8", "int8"])
def test_quantized_model_takes_its_own_dtype_and_returns_probabilities(tiny_tflite, io_dtype):
    clf = Classifier(getattr(tiny_tflite, io_dtype))
    assert clf.input_dtype == io_dtype and clf.spec.quantization == "int8"
    probs = clf.predict_arrays(tiny_tflite.images)
    float_probs = Classifier(tiny_tflite.float32).predict_arrays(tiny_tflite.images)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == float_probs.argmax(axis=1)).mean() >= 0.9
    assert np.abs(probs - float_probs).max() < 0.1
    assert probs.max(axis=1).mean() > 0.5  # not uniform


@pytest.mark.parametrize("io_dtype", ["uint8", "int8"])
def test_quantized_input_uses_the_tensor_scale_and_zero_point(tiny_tflite, io_dtype):
    clf = Classifier(getattr(tiny_tflite, io_dtype))
    scale, zero_point = clf.input_details["quantization"]
    assert scale > 0
    clf.predict(tiny_tflite.images[5])
    fed = clf.interpreter.get_tensor(clf.input_details["index"])[0]
    info = np.iinfo(io_dtype)
    expected = np.clip(np.round(tiny_tflite.images[5] / scale + zero_point), info.min, info.max)
    assert fed.dtype == np.dtype(io_dtype)
    np.testing.assert_array_equal(fed, expected.astype(io_dtype))


def test_batch_prediction_equals_one_by_one_and_skips_bad_files(tiny_tflite, tmp_path):
    clf = Classifier(tiny_tflite.int8)
    paths = _write_images(tmp_path / "batch", tiny_tflite.images[:40], tiny_tflite.labels[:40])
    broken = tmp_path / "batch" / "broken.png"
    broken.write_text("not an image")
    problems = []
    preds = clf.predict_batch([*paths[:20], broken, *paths[20:]], on_error=lambda f, m: problems.append(m))
    assert len(preds) == 40 and len(problems) == 1 and "broken.png" in problems[0]
    for path, pred in zip(paths, preds):
        single = clf.predict(path)
        assert pred.file == str(path) and pred.label == single.label
        assert pred.probabilities == pytest.approx(single.probabilities, abs=1e-6)
    with pytest.raises(ImageError, match="broken.png"):
        clf.predict_batch([paths[0], broken])


def test_threads_are_passed_to_the_interpreter(tiny_tflite):
    one = Classifier(tiny_tflite.float32, num_threads=1)
    two = Classifier(tiny_tflite.float32, num_threads=2)
    assert "threads 2" in two.describe()
    assert np.allclose(one.predict_arrays(tiny_tflite.images), two.predict_arrays(tiny_tflite.images), atol=1e-6)


# --- wrong model files -------------------------------------------------------------------------------


def _wrong_model(kind: str, tiny, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind} model.tflite"
    flat = tiny.flatbuffers["float32"]
    if kind == "text":
        path.write_text("this is not a model\n")
    elif kind == "truncated":
        path.write_bytes(tiny.float32.read_bytes()[: len(flat) // 2])
    elif kind == "no metadata":
        path.write_bytes(flat)
    elif kind == "wrong input shape":
        path.write_bytes(embed_spec(flat, ModelSpec(image_size=64)))
    elif kind == "wrong class count":
        path.write_bytes(embed_spec(flat, ModelSpec(class_names=["normal", "pneumonia"], image_size=32)))
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("text", "not a TensorFlow Lite model"),
        ("truncated", "damaged or truncated"),
        ("no metadata", "no edgecxr metadata"),
        ("wrong input shape", "wrong input shape"),
        ("wrong class count", "4 outputs but its spec names 2 classes"),
        ("missing", "not found"),
    ],
)
def test_wrong_model_file_raises_model_file_error_naming_it(tiny_tflite, tmp_path, kind, message):
    path = _wrong_model(kind, tiny_tflite, tmp_path / "bad models")
    with pytest.raises(ModelFileError, match=message) as info:
        Classifier(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_plain_tflite_with_a_sidecar_spec_loads(tiny_tflite, tmp_path):
    path = tmp_path / "plain model.tflite"
    path.write_bytes(tiny_tflite.flatbuffers["uint8"])
    sidecar_path(path).write_text(ModelSpec(image_size=32, quantization="int8", io_dtype="uint8").to_json())
    clf = Classifier(path)
    assert clf.input_dtype == "uint8" and clf.predict(tiny_tflite.images[1]).label == "covid19"


def test_default_model_comes_from_the_environment(tiny_tflite, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECXR_MODEL", str(tiny_tflite.int8))
    assert runtime.default_model_path() == tiny_tflite.int8
    assert Classifier().model_path == tiny_tflite.int8
    monkeypatch.setenv("EDGECXR_MODEL", str(tmp_path / "gone.tflite"))
    with pytest.raises(ModelFileError, match="EDGECXR_MODEL"):
        runtime.default_model_path()


def test_default_model_is_looked_for_in_the_repository_models_folder(monkeypatch):
    monkeypatch.delenv("EDGECXR_MODEL", raising=False)
    repo_models = Path(runtime.__file__).resolve().parents[2] / "models"
    try:
        assert runtime.default_model_path().parent in (repo_models, Path(runtime.__file__).parent / "models")
    except ModelFileError as exc:  # not shipped in this checkout yet: the message says where it looked
        assert str(repo_models / runtime.DEFAULT_MODEL_NAME) in str(exc)


# --- edgecxr predict ---------------------------------------------------------------------------------


@pytest.fixture
def predict_inputs(tiny_tflite, tmp_path):
    """Two good images in a folder, one loose good image, and three bad inputs."""
    folder = tmp_path / "x rays"
    good = _write_images(folder, tiny_tflite.images[:2], tiny_tflite.labels[:2])
    loose = _write_images(tmp_path / "loose", tiny_tflite.images[2:3], [2])[0]
    text = tmp_path / "notes.png"
    text.write_text("a text file with an image suffix")
    jpeg = tmp_path / "cut.jpg"
    Image.fromarray(np.repeat(tiny_tflite.images[3], 8, axis=0)).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[:400])
    missing = tmp_path / "missing.png"
    return types.SimpleNamespace(folder=folder, good=good, loose=loose, bad=[text, jpeg, missing])


def test_predict_prints_every_class_and_reports_bad_files_on_one_line(tiny_tflite, predict_inputs):
    args = ["predict", str(predict_inputs.folder), str(predict_inputs.bad[0]), str(predict_inputs.loose),
            *map(str, predict_inputs.bad[1:]), "--model", str(tiny_tflite.uint8), "--threads", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3  # both folder images and the loose one still ran
    assert lines[0].startswith(str(predict_inputs.good[0]) + ": normal ")
    assert lines[2].startswith(str(predict_inputs.loose) + ": bacterial ")
    for line in lines:
        assert all(f"{name} " in line for name in ("normal", "covid19", "bacterial", "viral"))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3
    for bad, line in zip(predict_inputs.bad, errors):
        assert str(bad) in line
    assert "Traceback" not in result.stderr


def test_predict_json_has_one_record_per_image(tiny_tflite, predict_inputs, monkeypatch):
    monkeypatch.setenv("EDGECXR_MODEL", str(tiny_tflite.int8))  # no --model: the default model
    result = CliRunner().invoke(main, ["predict", str(predict_inputs.folder), str(predict_inputs.loose), "--json"])
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["file"] for r in records] == [str(p) for p in [*predict_inputs.good, predict_inputs.loose]]
    assert [r["label"] for r in records] == ["normal", "covid19", "bacterial"]
    for r in records:
        assert set(r["probabilities"]) == {"normal", "covid19", "bacterial", "viral"}
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert r["confidence"] == r["probabilities"][r["label"]]
    assert result.stderr.startswith("model tiny int8: ")  # the spec's name, which is the file stem


def test_predict_with_a_wrong_model_is_a_one_line_error(tiny_tflite, tmp_path):
    model = _wrong_model("text", tiny_tflite, tmp_path)
    image = _write_images(tmp_path / "img", tiny_tflite.images[:1], [0])[0]
    result = CliRunner().invoke(main, ["predict", str(image), "--model", str(model)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"error: {model}: not a TensorFlow Lite model (no TFL3 identifier)"]


def test_predict_on_an_empty_folder_fails_after_the_others(tiny_tflite, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    image = _write_images(tmp_path / "img", tiny_tflite.images[:1], [0])[0]
    result = CliRunner().invoke(main, ["predict", str(empty), str(image), "--model", str(tiny_tflite.float32)])
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{image}: normal")
    assert f"error: {empty}: no images in this folder" in result.stderr


def test_predict_json_reports_failures_as_json_lines(tiny_tflite, predict_inputs):
    empty = predict_inputs.folder.parent / "empty"
    empty.mkdir()
    args = ["predict", str(predict_inputs.loose), str(predict_inputs.bad[0]), str(empty),
            "--model", str(tiny_tflite.int8), "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["file"] for r in records] == [str(empty), str(predict_inputs.loose), str(predict_inputs.bad[0])]
    assert "no images in this folder" in records[0]["error"] and "label" not in records[0]
    assert records[1]["label"] == "bacterial" and "error" not in records[1]
    assert "not a readable image" in records[2]["error"]
    assert "2 of 3 inputs failed" in result.stderr


def test_one_name_in_predict_bench_and_the_app_is_the_spec_name(tiny_tflite, tmp_path):
    """Classifier.name is spec.name (export makes it the file stem); a renamed file also names the file."""
    from edgecxr.bench import bench

    clf = Classifier(tiny_tflite.uint8)
    assert clf.spec.name == tiny_tflite.uint8.stem == clf.name == "tiny uint8"
    assert clf.describe().startswith("tiny uint8: int8 weights")
    result = CliRunner().invoke(main, ["predict", "--model", str(tiny_tflite.uint8), str(tmp_path / "none.png")])
    assert result.stderr.startswith("model tiny uint8: ")
    report = bench([tiny_tflite.uint8], threads=(1,), runs=2, warmup=0)
    assert [r.name for r in report.rows] == ["tiny uint8"]
    renamed = tmp_path / "copy.tflite"
    renamed.write_bytes(tiny_tflite.uint8.read_bytes())
    assert Classifier(renamed).name == "tiny uint8 (file copy.tflite)"


def test_describe_names_float_weights_as_float32(tiny_tflite):
    assert ": float32 weights, float32 input" in Classifier(tiny_tflite.float32).describe()
    assert ": int8 weights, uint8 input" in Classifier(tiny_tflite.uint8).describe()


def test_an_image_over_pillows_pixel_limit_is_called_too_large(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 40x40 image then counts as a bomb
    path = tmp_path / "huge.png"
    Image.new("L", (80, 80)).save(path)
    with pytest.raises(ImageError, match="huge.png: image too large to decode safely"):
        load_image(path, 32)


@pytest.mark.parametrize("io_dtype", ["uint8", "int8"])
def test_quantizing_by_lookup_table_equals_the_arithmetic_for_every_pixel_value(tiny_tflite, io_dtype):
    """The tiny models' inputs have real scales and zero points, so the table is not the identity."""
    clf = Classifier(getattr(tiny_tflite, io_dtype))
    io_dtype = np.dtype(clf.input_details["dtype"]).name
    every = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=3)
    np.testing.assert_array_equal(clf.to_input(every), clf._quantize(every))
    assert clf.to_input(every).dtype == np.dtype(io_dtype)


def test_predict_warns_on_a_flat_grey_image_and_still_predicts(tiny_tflite, tmp_path):
    """The app's check (preprocess.xray_warning): stderr and a JSON field; the film gets none."""
    from edgecxr.preprocess import NOT_XRAY_FLAT

    flat = tmp_path / "grey.png"
    Image.fromarray(np.full((48, 48), 128, np.uint8)).save(flat)
    film = _write_images(tmp_path / "films", tiny_tflite.images[:1], tiny_tflite.labels[:1])[0]
    args = ["predict", str(flat), str(film), "--model", str(tiny_tflite.uint8)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout.strip().splitlines()) == 2
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {flat}: {NOT_XRAY_FLAT}"]
    records = [json.loads(line) for line in CliRunner().invoke(main, [*args, "--json"]).stdout.splitlines()]
    assert [r["warning"] for r in records] == [NOT_XRAY_FLAT, ""]
    assert Classifier(tiny_tflite.uint8).predict(str(flat)).warning == NOT_XRAY_FLAT


def test_the_android_bundle_holds_every_module_the_app_imports(tiny_tflite, tmp_path):
    """prepare_android copies runtime_modules() only; the app's imports must all work from that copy."""
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location(
        "prepare_android", Path(__file__).resolve().parents[1] / "mobile_app" / "prepare_android.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    assert prepare.MODEL_NAME == runtime.DEFAULT_MODEL_NAME
    (tmp_path / "edgecxr").mkdir()
    for name in prepare.runtime_modules():
        shutil.copy2(prepare.PACKAGE / name, tmp_path / "edgecxr" / name)
    image = tmp_path / "chest.png"
    Image.fromarray(tiny_tflite.images[0]).save(image)
    done = run_without_tensorflow(
        """
        sys.path.insert(0, sys.argv[1])
        import edgecxr.runtime, edgecxr.saliency, edgecxr.dicom, edgecxr.io, edgecxr.errors, edgecxr.preprocess
        assert edgecxr.runtime.__file__.startswith(sys.argv[1]), edgecxr.runtime.__file__
        print(edgecxr.runtime.Classifier(sys.argv[2]).predict(sys.argv[3]).label)
        """, tmp_path, tiny_tflite.uint8, image)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == Classifier(tiny_tflite.uint8).predict(str(image)).label
