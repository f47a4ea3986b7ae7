"""edgecxr export: every mode's tensor types and parity with Keras, the accuracy guard, the remedies
(keep-float, QAT), the spec inside the file, the model card and the CLI's one-line errors.

Exports are made once per module from a copy of the session's tiny trained run (32 px MobileNetV3Small)
and shared by the tests that inspect them.
"""

import json
import shutil
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("tf_keras")
pytest.importorskip("tensorflow_model_optimization")

from click.testing import CliRunner
from synthetic import CLASSES, synthetic_image

from edgecxr.cli import main
from edgecxr.errors import EdgeCXRError, GuardError, ModelFileError
from edgecxr.converter import fold_head_batchnorm, load_model
from edgecxr.delegation import delegation_summary
from edgecxr.export import ExportOptions, export, representative_sample
from edgecxr.guard import guard_report
from edgecxr.runtime import Classifier, interpreter_backend
from edgecxr.spec import read_spec, sidecar_path

QUIET = dict(log=lambda msg: None)


def held_out_images(n=48, size=32, seed=123):
    """Fresh synthetic films (not in the run's data set), as uint8 RGB, with their class indices."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(CLASSES)
    gray = [synthetic_image(CLASSES[i], rng, size) for i in labels]
    return np.stack([np.repeat(g[..., None], 3, axis=-1) for g in gray]), labels


def io_dtypes(path):
    interpreter_cls, _, _ = interpreter_backend()
    interp = interpreter_cls(model_path=str(path))
    return (np.dtype(interp.get_input_details()[0]["dtype"]).name,
            np.dtype(interp.get_output_details()[0]["dtype"]).name)


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
    """A private copy of the tiny run, so this module's exports do not leak into other tests."""
    copy = tmp_path_factory.mktemp("export runs") / "run to export"
    shutil.copytree(tiny_run, copy)
    return copy


@pytest.fixture(scope="module")
def exported(run):
    """The run exported in every mode (int8 with uint8 and int8 I/O), plus the Keras model."""
    results, cards = {}, {}
    for key, quant, options in (("float32", "none", {}), ("float16", "float16", {}), ("dynamic", "dynamic", {}),
                                ("int8_uint8", "int8", {}), ("int8_int8", "int8", {"io": "int8"})):
        results[key] = export(run, quant, **options, **QUIET)
    for key, result in results.items():  # one card per export, so every card survives the later exports
        cards[key] = result.model_card.read_text()
    model, cfg = load_model(run)
    images, labels = held_out_images()
    keras_probs = model(images.astype(np.float32), training=False).numpy()
    return SimpleNamespace(results=results, cards=cards, model=model, cfg=cfg, images=images, labels=labels,
                           keras_probs=keras_probs)


# --- every mode ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key, name, io", [
    ("float32", "edgecxr_float32.tflite", ("float32", "float32")),
    ("float16", "edgecxr_float16.tflite", ("float32", "float32")),
    ("dynamic", "edgecxr_dynamic.tflite", ("float32", "float32")),
    ("int8_uint8", "edgecxr_int8_uint8io.tflite", ("uint8", "uint8")),
    ("int8_int8", "edgecxr_int8_int8io.tflite", ("int8", "int8")),
])
def test_each_mode_writes_its_file_with_the_asked_tensor_types(exported, run, key, name, io):
    result = exported.results[key]
    assert result.path == run / "export" / name
    assert result.path.is_file() and result.size_bytes == result.path.stat().st_size
    assert io_dtypes(result.path) == io
    assert result.guard.passed


def test_one_name_per_export_file_spec_and_card(exported, run):
    """The file stem, spec.name (inside the file and in the sidecar) and the card's title are one name,
    and each of the five exports kept its own .tflite, .json and .md."""
    names = sorted(p.name for p in (run / "export").iterdir() if p.stem.startswith("edgecxr_"))
    stems = ["edgecxr_dynamic", "edgecxr_float16", "edgecxr_float32", "edgecxr_int8_int8io", "edgecxr_int8_uint8io"]
    assert set(names) >= {stem + ext for stem in stems for ext in (".json", ".md", ".tflite")}
    for key, result in exported.results.items():
        stem = result.path.stem
        assert result.spec.name == read_spec(result.path).name == stem
        assert json.loads(sidecar_path(result.path).read_text())["name"] == stem
        assert result.model_card == result.path.with_suffix(".md")
        assert exported.cards[key].startswith(f"# Model card: {stem}\n")
        assert Classifier(result.path).name == stem  # what predict, bench and the app show


def test_export_names_for_each_variant():
    """ExportOptions.stem: name, precision, the I/O type for int8 (always), then the remedy variant."""
    cases = [
        (ExportOptions.for_float32(), "edgecxr_float32"),
        (ExportOptions.for_float16(), "edgecxr_float16"),
        (ExportOptions.for_dynamic(), "edgecxr_dynamic"),
        (ExportOptions(quantize="int8"), "edgecxr_int8_uint8io"),
        (ExportOptions.for_int8(), "edgecxr_int8_uint8io"),
        (ExportOptions.for_int8(io="int8"), "edgecxr_int8_int8io"),
        (ExportOptions.for_int8(io="float32"), "edgecxr_int8_float32io"),
        (ExportOptions(quantize="int8", qat_epochs=3), "edgecxr_int8_uint8io_qat"),
        (ExportOptions(quantize="int8", keep_float="auto:2"), "edgecxr_int8_uint8io_keepfloat"),
        (ExportOptions(quantize="int8", io="int8", keep_float="conv_1"), "edgecxr_int8_int8io_keepfloat"),
        (ExportOptions.for_float16(name="chest-v2.1"), "chest-v2.1_float16"),
        # an explicit hard-swish spelling other than the mode's default is another graph, another file
        (ExportOptions(quantize="int8", hard_swish="keras"), "edgecxr_int8_uint8io_kerashswish"),
        (ExportOptions(quantize="dynamic", hard_swish="relu6"), "edgecxr_dynamic_relu6hswish"),
    ]
    for opts, stem in cases:
        assert opts.stem == stem and opts.validated().stem == stem
        assert opts.validated().file_name == stem + ".tflite"
    assert len({stem for _, stem in cases}) == len(cases) - 1  # for_int8() is the int8 default
    # the default spelling, named explicitly, is the default file; float exports ignore the option
    assert ExportOptions(quantize="int8", hard_swish="relu6").stem == "edgecxr_int8_uint8io"
    assert ExportOptions(quantize="dynamic", hard_swish="keras").stem == "edgecxr_dynamic"
    assert ExportOptions.for_float16(hard_swish="relu6").stem == "edgecxr_float16"
    for bad in ("", "a b", "../x", "x/y", "-x"):
        with pytest.raises(EdgeCXRError, match="--name"):
            ExportOptions(name=bad).validated()


def test_sizes_follow_the_precision(exported):
    size = {k: r.size_bytes for k, r in exported.results.items()}
    assert size["float16"] < 0.6 * size["float32"]
    assert size["int8_uint8"] < 0.4 * size["float32"]
    assert size["dynamic"] < 0.4 * size["float32"]


@pytest.mark.parametrize("key, atol", [("float32", 1e-5), ("float16", 2e-2)])
def test_float_exports_match_keras_on_held_out_images(exported, key, atol):
    probs = Classifier(exported.results[key].path).predict_arrays(exported.images)
    np.testing.assert_allclose(probs, exported.keras_probs, atol=atol)


@pytest.mark.parametrize("key", ["dynamic", "int8_uint8", "int8_int8"])
def test_quantized_exports_agree_with_keras_top1(exported, key):
    probs = Classifier(exported.results[key].path).predict_arrays(exported.images)
    agreement = np.mean(probs.argmax(1) == exported.keras_probs.argmax(1))
    assert agreement >= 0.9
    # The run learned the synthetic task, so agreement is not agreement on noise.
    assert np.mean(exported.keras_probs.argmax(1) == exported.labels) >= 0.75


def test_spec_travels_inside_the_file_and_in_the_sidecar(exported, tmp_path):
    result = exported.results["int8_uint8"]
    lonely = tmp_path / "copied without sidecar.tflite"
    shutil.copyfile(result.path, lonely)
    spec = read_spec(lonely)  # embedded: no sidecar next to the copy
    assert (spec.quantization, spec.io_dtype, spec.image_size) == ("int8", "uint8", 32)
    assert spec.class_names == list(CLASSES)
    assert spec.name == "edgecxr_int8_uint8io"
    assert spec.notes["guard"]["passed"] is True and spec.notes["guard"]["images"] == 16
    assert spec.notes["calibration"]["images"] == 48  # the whole (small) training split
    sidecar = json.loads(sidecar_path(result.path).read_text())
    assert sidecar["quantization"] == "int8" and sidecar["notes"]["guard"] == spec.notes["guard"]
    # the runtime classifies an image with nothing but the copied file
    pred = Classifier(lonely).predict(exported.images[1])
    assert pred.label in CLASSES


def test_int8_standard_model_runs_in_one_xnnpack_partition(exported, run):
    """The hard-swish rewrite: no HARD_SWISH op left, the whole graph delegated to XNNPACK."""
    interpreter_cls, _, _ = interpreter_backend()
    interp = interpreter_cls(model_path=str(exported.results["int8_uint8"].path))
    interp.allocate_tensors()
    rewritten = delegation_summary(interp)
    assert rewritten.partitions == 1
    assert "HARD_SWISH" not in rewritten.outside
    assert set(rewritten.outside) <= {"QUANTIZE", "SOFTMAX"}
    naive = export(run, "int8", hard_swish="keras", name="naive", latency=False, **QUIET)
    interp = interpreter_cls(model_path=str(naive.path))
    interp.allocate_tensors()
    plain = delegation_summary(interp)
    assert plain.outside.get("HARD_SWISH", 0) > 5 and plain.partitions > 5


def test_hard_swish_rewrite_keeps_the_function(exported, run):
    rewritten, _ = load_model(run, rewrite_hard_swish=True)
    kinds = [type(layer).__name__ for layer in rewritten.get_layer(index=1).layers]
    assert kinds != [type(layer).__name__ for layer in exported.model.get_layer(index=1).layers]
    probs = rewritten(exported.images.astype(np.float32), training=False).numpy()
    np.testing.assert_allclose(probs, exported.keras_probs, atol=1e-5)


def test_head_batchnorm_folds_through_relu_exactly(exported):
    folded = fold_head_batchnorm(exported.model)
    assert "head_bn" not in [layer.name for layer in folded.layers]
    probs = folded(exported.images.astype(np.float32), training=False).numpy()
    np.testing.assert_allclose(probs, exported.keras_probs, atol=1e-5)
    # the BatchNorm scale went into the first Dense; the last keeps its weights up to sign
    before = exported.model.get_layer("probabilities").get_weights()[0]
    after = folded.get_layer("probabilities").get_weights()[0]
    np.testing.assert_allclose(np.abs(after), np.abs(before), rtol=1e-6)


def test_model_card_reports_data_metrics_and_limits(exported, run):
    card = exported.cards["int8_uint8"]
    result = exported.results["int8_uint8"]
    assert result.model_card == run / "export" / "edgecxr_int8_uint8io.md"
    assert card.startswith("# Model card: edgecxr_int8_uint8io\n")
    assert "- File: `edgecxr_int8_uint8io.tflite`" in card and "`edgecxr_int8_uint8io.json`" in card
    assert "not a medical device" in card
    assert "| kermany (pediatric) |" in card and "| ieee8023 (adult) |" in card
    assert "Calibration: 48 training images" in card
    assert "(0." in card  # confidence intervals
    assert "source/age shortcut" in card
    assert "- Splits are by patient (no patient in two splits)." in card  # the synthetic names carry patient ids
    assert "ms per image" in card and result.latency_ms > 0
    assert "full-integer" not in exported.cards["float32"] and "Calibration" not in exported.cards["float32"]


def test_success_line_and_next_commands(exported):
    result = exported.results["int8_uint8"]
    assert result.summary_line().startswith(f"exported {result.path} (")
    predict, bench = result.next_commands()
    assert predict.startswith("edgecxr predict --model ") and predict.endswith(" IMAGE")
    assert bench.startswith("edgecxr bench ") and "--split val" in bench  # the tiny run has no test split


# --- calibration data --------------------------------------------------------------------------------


def test_representative_sample_is_stratified_by_class_and_source():
    R = SimpleNamespace
    records = ([R(label="normal", source="kermany")] * 300 + [R(label="covid19", source="ieee8023")] * 12
               + [R(label="normal", source="nih")] * 40)
    picked = representative_sample(records, 60, seed=1)
    strata = Counter((records[i].label, records[i].source) for i in picked)
    assert len(picked) == len(set(picked)) == 60
    assert strata[("covid19", "ieee8023")] == 12  # the rare stratum is all in
    assert strata[("normal", "kermany")] == strata[("normal", "nih")] == 24
    assert len(representative_sample(records[:10], 200)) == 10


# --- the accuracy guard ------------------------------------------------------------------------------


def test_guard_judges_the_worst_subgroup_not_just_the_total():
    R = SimpleNamespace
    records = ([R(label="normal", source="kermany", group="pediatric")] * 80
               + [R(label="viral", source="ieee8023", group="adult")] * 40)
    keras = np.tile([0.9, 0.05, 0.0, 0.05], (120, 1))
    keras[80:] = [0.05, 0.05, 0.0, 0.9]
    tflite = keras.copy()
    tflite[80:85] = [0.9, 0.05, 0.0, 0.05]  # 5 of 40 adult images flip to "normal"
    report = guard_report(keras, tflite, records, list(CLASSES), model="m.tflite", max_drop=5.0,
                          size_bytes=1, keras_size_bytes=4)
    assert report.total.drop == pytest.approx(100 * 5 / 120)
    assert report.worst_subgroup.drop == pytest.approx(12.5)
    assert not report.passed  # the total (4.2 points) alone would have passed
    assert report.worst_subgroup.subset in ("class viral", "source ieee8023", "group adult")
    viral = next(r for r in report.rows if r.subset == "class viral")
    assert (viral.n, viral.keras, viral.tflite, viral.judged) == (40, 1.0, 0.875, True)
    assert any("87.5% of" in note for note in report.notes)
    assert "guard FAILED" in report.to_table()


def test_failed_guard_keeps_the_file_under_a_failed_name_and_names_remedies(exported, run):
    with pytest.raises(GuardError) as err:
        export(run, "int8", io="float32", max_drop=-1, **QUIET)
    message = str(err.value)
    assert "--keep-float auto" in message and "--qat" in message
    real = run / "export" / "edgecxr_int8_float32io.tflite"
    failed = run / "export" / "edgecxr_int8_float32io.guard-failed.tflite"
    assert not real.exists() and failed.is_file()
    assert io_dtypes(failed) == ("float32", "float32")
    assert read_spec(failed).notes["guard"]["passed"] is False
    # a passing export of the same model replaces the failed leftovers
    ok = export(run, "int8", io="float32", **QUIET)
    assert ok.path == real and real.is_file() and not failed.exists()
    assert ok.guard.model == real.stem == ok.spec.name  # the guard's table names the export by its one name
    assert not sidecar_path(failed).exists()


def test_existing_export_needs_force(exported, run):
    with pytest.raises(EdgeCXRError, match="--force"):
        export(run, "none", **QUIET)


def test_options_reject_flags_that_do_not_apply():
    for kwargs, flag in ((dict(quantize="float16", io="uint8"), "--io uint8"),
                         (dict(quantize="none", representative=50), "--representative"),
                         (dict(quantize="dynamic", keep_float="auto"), "--keep-float"),
                         (dict(quantize="none", qat_epochs=2), "--qat"),
                         (dict(quantize="int8", keep_float="auto", qat_epochs=1), "not both"),
                         (dict(quantize="int8", keep_float="auto:x"), "auto:K")):
        with pytest.raises(EdgeCXRError, match=flag):
            ExportOptions(**kwargs).validated()
    opts = ExportOptions.for_int8(io="int8").validated()
    assert (opts.file_name, opts.representative) == ("edgecxr_int8_int8io.tflite", 200)
    assert ExportOptions(quantize="int8", keep_float="auto").validated().keep_float == ("auto",)
    assert ExportOptions(quantize="int8", keep_float="auto:5").validated().keep_float == ("auto:5",)


# --- remedies ---------------------------------------------------------------------------------------


def test_keep_float_auto_keeps_the_worst_layers_in_float(exported, run):
    result = export(run, "int8", keep_float="auto:2", **QUIET)
    assert result.path == run / "export" / "edgecxr_int8_uint8io_keepfloat.tflite"
    assert read_spec(result.path).name == "edgecxr_int8_uint8io_keepfloat"
    # the plain int8 export of the same run survives, with its own card
    plain = exported.results["int8_uint8"]
    assert plain.path.is_file() and plain.model_card.read_text() == exported.cards["int8_uint8"]
    assert result.model_card.read_text().startswith("# Model card: edgecxr_int8_uint8io_keepfloat\n")
    kept = result.notes["keep_float"]["layers"]
    assert len(kept) == 2 and kept[0]["rmse_per_scale"] >= kept[1]["rmse_per_scale"] > 0
    assert io_dtypes(result.path) == ("uint8", "uint8")
    interpreter_cls, _, _ = interpreter_backend()
    interp = interpreter_cls(model_path=str(result.path))
    ops = Counter(op["op_name"] for op in interp._get_ops_details())
    assert ops["DEQUANTIZE"] >= 2  # float islands inside the int8 graph
    # naming a layer keeps exactly that one
    named = export(run, "int8", keep_float=kept[0]["name"], name="kf1", latency=False, **QUIET)
    assert [l["name"] for l in named.notes["keep_float"]["layers"]] == [kept[0]["name"]]
    with pytest.raises(EdgeCXRError, match="no quantized layer matches"):
        export(run, "int8", keep_float="no_such_layer", name="kf2", **QUIET)


def test_qat_on_standard_model_is_head_only_and_leaves_the_run_alone(exported, run):
    before = [w.copy() for w in exported.model.get_weights()]
    result = export(run, "int8", qat_epochs=1, **QUIET)
    assert result.path.name == "edgecxr_int8_uint8io_qat.tflite" and result.spec.name == "edgecxr_int8_uint8io_qat"
    assert result.model_card.name == "edgecxr_int8_uint8io_qat.md" and exported.results["int8_uint8"].path.is_file()
    qat = result.notes["qat"]
    assert qat["scope"] == "head-only" and "TFOpLambda" in qat["why"] and qat["epochs"] == 1
    assert read_spec(result.path).notes["qat"]["scope"] == "head-only"
    assert io_dtypes(result.path) == ("uint8", "uint8")
    probs = Classifier(result.path).predict_arrays(exported.images)
    assert np.mean(probs.argmax(1) == exported.keras_probs.argmax(1)) >= 0.8
    for a, b in zip(before, exported.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_qat_on_minimalistic_model_is_whole_model(tiny_run_factory, tmp_path):
    run = tmp_path / "minimalistic run"
    shutil.copytree(tiny_run_factory(minimalistic=True), run)
    result = export(run, "int8", qat_epochs=1, **QUIET)
    assert result.notes["qat"]["scope"] == "whole-model"
    assert result.guard.total.agreement >= 0.75
    assert io_dtypes(result.path) == ("uint8", "uint8")
    assert "hard_swish" not in result.notes  # nothing to rewrite in the ReLU-only model


# --- the command line --------------------------------------------------------------------------------


def cli(*args):
    return CliRunner().invoke(main, ["export", *map(str, args)])


def assert_one_line_error(result, *needles):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0]


def test_cli_wrong_and_corrupt_run_directories(tmp_path, tiny_run):
    assert_one_line_error(cli(tmp_path / "no such run"), "run directory not found")
    assert_one_line_error(cli(tmp_path), "not an edgecxr run directory")
    broken = tmp_path / "broken run"
    shutil.copytree(tiny_run, broken)
    (broken / "checkpoints" / "best.weights.h5").write_bytes(b"not hdf5 at all")
    assert_one_line_error(cli(broken), "cannot load checkpoint")
    (broken / "config.json").write_text("{ not json")
    assert_one_line_error(cli(broken), "config")


def test_cli_run_without_splits_is_a_one_line_error(tmp_path, tiny_run):
    no_splits = tmp_path / "no splits"
    shutil.copytree(tiny_run, no_splits)
    (no_splits / "splits.csv").unlink()
    assert_one_line_error(cli(no_splits, "--quantize", "none"), "no splits.csv")


def one_class_run(tiny_run, where):
    """A copy of the tiny run whose checkpoint calls every image covid19 (the output layer's kernel
    zeroed, its bias pinned): the useless model a run that collapses to one class produces."""
    from edgecxr.model import load_run_model

    run = where / "one class run"
    shutil.copytree(tiny_run, run)
    model, cfg = load_run_model(run)
    layer = model.get_layer("probabilities")
    kernel, bias = layer.get_weights()
    layer.set_weights([np.zeros_like(kernel), np.eye(len(bias))[cfg.class_names.index("covid19")] * 10])
    model.save_weights(str(run / "checkpoints" / "best.weights.h5"))
    return run


def test_cli_refuses_a_useless_model_unless_forced(tmp_path, tiny_run):
    """One class for everything passed the guard and got a model card with next: hints."""
    run = one_class_run(tiny_run, tmp_path)
    refused = cli(run, "--quantize", "none")
    assert_one_line_error(refused, "this model looks useless: it never predicts normal, bacterial, viral on 16 "
                                   "validation images", "macro sensitivity 0.250 is at chance", "--force")
    assert not (run / "export").exists()

    forced = cli(run, "--quantize", "none", "--force")
    assert forced.exit_code == 0, forced.output
    assert "next:" not in forced.output
    assert "warning: this model looks useless: it never predicts normal" in forced.stderr
    card = (run / "export" / "edgecxr_float32.md").read_text()
    assert "**Warning: this model looks useless: it never predicts normal, bacterial, viral" in card
    assert "next:" not in card
    spec = read_spec(run / "export" / "edgecxr_float32.tflite")
    assert spec.notes["useless"][0].startswith("it never predicts normal")


def test_train_ends_with_a_warning_for_a_useless_model(tmp_path, tiny_run):
    """train.finish (the end of every run) warns instead of suggesting the export."""
    import tf_keras as keras

    from edgecxr import train as train_mod
    from edgecxr.config import TrainConfig
    from edgecxr.data import Record

    images, labels = held_out_images(n=16)
    records = [Record(f"/val/{i}.png", CLASSES[c], f"p{i}") for i, c in enumerate(labels)]
    val = train_mod.SplitArrays(images, np.eye(4, dtype=np.float32)[labels], records, list(CLASSES))
    for run, useless in ((one_class_run(tiny_run, tmp_path), True), (tiny_run, False)):
        copy = tmp_path / f"finish {useless}"
        shutil.copytree(run, copy)
        cfg = TrainConfig.load(copy / "config.json")
        summary = train_mod.finish(copy, cfg, val, keras, train_images=48, fit_seconds=1.0, steps=3,
                                   global_batch=16, epochs_run=1)
        assert ("warning: this model looks useless: it never predicts normal, bacterial, viral" in summary) == useless
        assert ("next: edgecxr export" in summary) != useless


def test_next_hint_names_a_quantization_that_works_for_the_network():
    """int8 collapses on the standard network (hard-swish, squeeze-excite): its hint is float16."""
    from edgecxr import train as train_mod
    from edgecxr.config import TrainConfig

    assert train_mod.suggested_quantization(TrainConfig(data="d", minimalistic=True)) == "int8"
    assert train_mod.suggested_quantization(TrainConfig(data="d", minimalistic=False)) == "float16"


def test_cli_rejects_flags_by_name(tmp_path):
    assert_one_line_error(cli(tmp_path, "--quantize", "float16", "--io", "uint8"), "--io uint8")
    assert_one_line_error(cli(tmp_path, "--quantize", "dynamic", "--representative", "10"), "--representative")
    assert_one_line_error(cli(tmp_path, "--keep-float", "auto", "--qat", "1"), "not both")


def test_cli_refuses_to_overwrite_without_force(exported, run):
    path = exported.results["float32"].path
    before = path.read_bytes()
    refused = cli(run, "--quantize", "none")
    assert_one_line_error(refused, "already exists", "--force")
    assert path.read_bytes() == before
    forced = cli(run, "--quantize", "none", "--force")
    assert forced.exit_code == 0, forced.output
    assert f"exported {path} (" in forced.stdout
    assert "next: edgecxr predict --model" in forced.stdout
    assert path.is_file() and read_spec(path).quantization == "none"


def test_cli_name_sets_the_prefix_of_every_file(exported, run):
    assert_one_line_error(cli(run, "--quantize", "none", "--name", "chest x"), "--name")
    result = cli(run, "--quantize", "none", "--name", "chest")
    assert result.exit_code == 0, result.output
    path = run / "export" / "chest_float32.tflite"
    assert f"exported {path} (" in result.stdout
    assert read_spec(path).name == "chest_float32" and path.with_suffix(".md").is_file()
    assert exported.results["float32"].path.is_file()  # edgecxr_float32.tflite is still there


def test_cli_guard_failure_exits_non_zero_with_remedy(exported, run):
    result = cli(run, "--quantize", "dynamic", "--max-drop", "-1", "--force")
    assert_one_line_error(result, "lost too much accuracy", "try")
    assert "accuracy guard:" in result.output  # the table came first
    assert (run / "export" / "edgecxr_dynamic.guard-failed.tflite").is_file()
    assert (run / "export" / "edgecxr_dynamic.tflite").is_file()  # the earlier passing export stays


def test_remedy_follows_what_was_tried_and_the_variant():
    from types import SimpleNamespace

    from edgecxr.export import ExportOptions, remedy

    minimal, standard = SimpleNamespace(minimalistic=True), SimpleNamespace(minimalistic=False)
    first = remedy(ExportOptions(quantize="int8").validated(), minimal)
    assert "--keep-float auto " in first and "--qat 3 (quantization-aware fine-tuning, whole model)" in first
    assert "--minimalistic" not in first
    after_qat = remedy(ExportOptions(quantize="int8", qat_epochs=2).validated(), standard)
    assert "--qat 4" in after_qat and "--minimalistic" in after_qat
    assert remedy(ExportOptions(quantize="float16").validated(), minimal) == "try --quantize none (float32)"
    few_calibration = remedy(ExportOptions(quantize="int8", representative=8).validated(), minimal)
    assert "--representative 200 (calibrate on more than 8 images)" in few_calibration
    tiny_val = {"guard": {"images": 40, "worst_subgroup": {"subset": "class viral", "drop_points": 12.5},
                          "subgroups": {"class viral": {"n": 8}}}}
    tip = remedy(ExportOptions(quantize="int8").validated(), minimal, tiny_val)
    assert tip.startswith("class viral has only 8 images, so one image is 12.5 points, more than --max-drop 1")
    assert "otherwise try --keep-float auto" in tip
    large_val = {"guard": {"images": 900, "worst_subgroup": {"subset": "class viral"},
                           "subgroups": {"class viral": {"n": 190}}}}
    assert remedy(ExportOptions(quantize="int8").validated(), minimal, large_val) == first


def test_run_model_errors_are_model_file_errors(tmp_path):
    with pytest.raises(ModelFileError):
        export(tmp_path / "missing", "none", **QUIET)


def test_the_card_claims_patient_level_splits_only_when_patients_are_known():
    from edgecxr.card import split_line
    from edgecxr.data import Record
    from edgecxr.guard import _split_summary

    known = [Record("/a.png", "normal", "kermany-IM-1", "kermany", "pediatric"),
             Record("/b.png", "viral", "kermany-person2", "kermany", "pediatric")]
    assert split_line(_split_summary(known, ["train", "val"])) == "- Splits are by patient (no patient in two splits)."
    guessed = known + [Record("/c.png", "normal", "file:x/c.png", "unknown", "unknown")]
    line = split_line(_split_summary(guessed, ["train", "val", "test"]))
    assert "1 of 3 images had none" in line and "may be in two splits" in line
    assert split_line(None).startswith("- Splits are by patient (")  # cards of older exports
