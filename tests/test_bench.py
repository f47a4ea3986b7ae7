"""edgecxr.bench and `edgecxr bench`: benchmark_model-style latency, memory and shared-code accuracy."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

from edgecxr import CLASS_NAMES
from edgecxr.bench import BenchReport, LatencyStats, bench
from edgecxr.cli import main
from edgecxr.data import load_records, save_splits, split_by_patient
from edgecxr.errors import DataError
from edgecxr.preprocess import load_images
from edgecxr.runtime import Classifier

FAST = dict(runs=8, warmup=2)


def _assert_latency(stats: LatencyStats, runs: int, warmup: int) -> None:
    assert stats.runs == runs and stats.warmup_runs == warmup
    assert 0 < stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p99_ms <= stats.max_ms
    assert stats.first_ms > 0 and stats.warmup_mean_ms > 0 and stats.std_ms >= 0
    assert stats.images_per_s == pytest.approx(1000.0 / stats.mean_ms)


def test_latency_stats_follow_benchmark_model_definitions():
    stats = LatencyStats.from_times(9.0, [4.0, 2.0], [1.0, 2.0, 3.0, 4.0, 10.0])
    assert (stats.first_ms, stats.warmup_mean_ms, stats.warmup_runs) == (9.0, 3.0, 2)
    assert stats.mean_ms == 4.0 and stats.std_ms == pytest.approx(np.std([1, 2, 3, 4, 10]))
    assert stats.p50_ms == 3.0 and stats.p90_ms == pytest.approx(np.percentile([1, 2, 3, 4, 10], 90))
    assert stats.images_per_s == 250.0


def test_bench_without_data_times_model_only_and_end_to_end(tiny_tflite):
    report = bench([tiny_tflite.float32, tiny_tflite.uint8], **FAST)
    assert [r.name for r in report.rows] == ["tiny float32", "tiny uint8"]  # the spec's name, as predict shows it
    for row, io_dtype in zip(report.rows, ["float32", "uint8"]):
        assert row.status == "ok" and row.error == ""
        assert row.io_dtype == io_dtype and row.image_size == 32 and row.threads == 1
        assert row.init_ms > 0 and row.size_mb == pytest.approx(tiny_tflite.float32.stat().st_size / 1e6, rel=0.6)
        _assert_latency(row.model_only, **FAST)
        _assert_latency(row.end_to_end, **FAST)
        assert row.peak_rss_mb > 10  # a Python process with numpy holds more than 10 MB
        assert row.xnnpack is True  # ai_edge_litert applies XNNPACK by default
        assert row.accuracy is None and row.metrics is None
    h = report.header
    assert h.interpreter == "ai_edge_litert" and h.interpreter_version[0].isdigit()
    assert h.image_sizes == [32] and h.threads == [1] and h.runs == 8 and h.warmup == 2
    assert "synthetic" in h.data and "synthetic" in h.end_to_end_input
    assert h.cpu and "VmHWM" in h.memory


def test_bench_accuracy_is_the_evaluate_metrics_on_the_data(tiny_tflite, synthetic_folder):
    broken = synthetic_folder / "NORMAL" / "broken.png"
    broken.write_text("not an image")
    report = bench([tiny_tflite.int8], data=synthetic_folder, **FAST)
    row = report.rows[0]
    assert row.status == "ok", row.error
    records = [r for r in load_records(synthetic_folder, notes=[]) if r.file != str(broken)]
    images, ok = load_images([r.file for r in records], 32)
    predicted = Classifier(tiny_tflite.int8).predict_arrays(images).argmax(axis=1)
    truth = np.array([CLASS_NAMES.index(records[i].label) for i in ok])
    assert row.n_images == len(ok) == 48
    assert row.accuracy == pytest.approx((predicted == truth).mean(), abs=1e-6)
    assert row.accuracy > 0.5  # the synthetic cue is easy; chance is 0.25
    m = row.metrics
    for key in ("per_class", "confusion_matrix", "covid_vs_rest", "by_source", "macro"):
        assert key in m
    assert np.sum(m["confusion_matrix"]["matrix"]) == 48
    assert set(m["by_source"]) == {"kermany"}
    assert row.covid_sensitivity == m["covid_vs_rest"]["sensitivity"]["value"]
    assert row.macro_sensitivity == m["macro"]["sensitivity"]
    assert row.n_unreadable == 1 and any("1 unreadable image" in n for n in report.notes)
    assert "49 images" in report.header.data and "files from the data" in report.header.end_to_end_input


def test_split_and_limit_choose_the_images_scored(tiny_tflite, synthetic_folder, tmp_path):
    records = load_records(synthetic_folder, notes=[])
    splits = split_by_patient(records, 0.25, 0.25, seed=0)
    splits_csv = save_splits(tmp_path / "splits.csv", records, splits)
    report = bench([tiny_tflite.float32], data=synthetic_folder, split="test", splits_file=splits_csv, **FAST)
    assert report.rows[0].n_images == splits.count("test") < len(records)
    assert "split test" in report.header.data

    limited = bench([tiny_tflite.float32], data=synthetic_folder, limit=10, **FAST).rows[0]
    assert limited.n_images == 10
    assert len(set(np.nonzero(limited.metrics["confusion_matrix"]["matrix"])[0])) > 1  # not one class


def test_split_without_a_splits_file_is_a_data_error(tiny_tflite, synthetic_folder):
    with pytest.raises(DataError, match="splits"):
        bench([tiny_tflite.float32], data=synthetic_folder, split="test", **FAST)


def test_a_failing_model_becomes_a_row(tiny_tflite, tmp_path):
    text = tmp_path / "notes.tflite"
    text.write_text("not a model")
    missing = tmp_path / "gone.tflite"
    report = bench([text, tiny_tflite.int8, missing], **FAST)
    assert [r.status for r in report.rows] == ["failed", "ok", "failed"]
    assert "not a TensorFlow Lite model" in report.rows[0].error and "not found" in report.rows[2].error
    table = report.to_table()
    assert f"failed: {text}: " in table and f"failed: {missing}: " in table
    assert report.rows[0].model_only is None and report.rows[0].accuracy is None


def test_several_thread_counts_give_one_row_each(tiny_tflite, synthetic_folder):
    report = bench([tiny_tflite.uint8], data=synthetic_folder, threads=(1, 2), **FAST)
    one, two = report.rows
    assert (one.threads, two.threads) == (1, 2)
    assert two.accuracy == one.accuracy and two.metrics is None  # scored once per model
    _assert_latency(two.model_only, **FAST)


@pytest.fixture(scope="module")
def small_report(tiny_tflite, tmp_path_factory) -> BenchReport:
    bad = tmp_path_factory.mktemp("bad") / "broken.tflite"
    bad.write_bytes(b"\x00" * 64)
    return bench([tiny_tflite.float32, tiny_tflite.int8, bad], command="edgecxr bench a b c", **FAST)


def test_report_json_has_header_rows_and_latency_fields(small_report):
    data = json.loads(small_report.to_json())
    assert data["schema"] == "edgecxr.bench/1"
    for key in ("interpreter", "interpreter_version", "xnnpack", "cpu", "threads", "data", "image_sizes", "memory"):
        assert key in data["header"]
    ok = data["rows"][0]
    for key in ("model", "status", "quantization", "size_mb", "init_ms", "peak_rss_mb", "accuracy", "end_to_end"):
        assert key in ok
    for key in ("first_ms", "warmup_mean_ms", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p99_ms", "images_per_s"):
        assert ok["model_only"][key] > 0 or key == "std_ms"
    assert data["rows"][2]["status"] == "failed" and data["rows"][2]["model_only"] is None


def test_report_csv_has_one_flat_row_per_model(small_report):
    rows = list(csv.DictReader(io.StringIO(small_report.to_csv())))
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert float(rows[0]["p50_ms"]) <= float(rows[0]["p99_ms"]) and float(rows[1]["e2e_images_per_s"]) > 0
    assert rows[2]["p50_ms"] == "" and rows[2]["error"]


def test_report_table_and_markdown_name_the_setup(small_report):
    table = small_report.to_table()
    for text in ("interpreter: ai_edge_litert", "XNNPACK: on", "CPU: ", "threads: 1", "image size: 32 px",
                 "p50 ms", "images/s", "tiny int8", "model-only", "end-to-end"):
        assert text in table
    md = small_report.to_markdown()
    assert md.startswith("# edgecxr benchmark\n")
    assert "Reproduce with `edgecxr bench a b c`" in md
    assert "| model | status | quant |" in md and "| tiny float32 | ok | none |" in md


# --- edgecxr bench -----------------------------------------------------------------------------------


def test_cli_bench_json_on_two_models(tiny_tflite):
    args = ["bench", str(tiny_tflite.float32), str(tiny_tflite.uint8), "--json", "--runs", "5", "--warmup", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [r["status"] for r in data["rows"]] == ["ok", "ok"]
    assert data["rows"][1]["model_only"]["runs"] == 5
    command = data["header"]["command"]
    assert command.startswith("edgecxr bench '") and "tiny uint8.tflite' --runs 5 --warmup 1 --json" in command


def test_cli_bench_without_arguments_uses_the_default_model(tiny_tflite, monkeypatch):
    monkeypatch.setenv("EDGECXR_MODEL", str(tiny_tflite.int8))
    result = CliRunner().invoke(main, ["bench", "--runs", "3", "--warmup", "1"])
    assert result.exit_code == 0, result.stderr
    assert "tiny int8 " in result.stdout and "p50 ms" in result.stdout


def test_cli_bench_markdown_plot_and_out_file(tiny_tflite, synthetic_folder, tmp_path):
    out, plot = tmp_path / "BENCH.md", tmp_path / "tradeoff.png"
    args = ["bench", str(tiny_tflite.int8), "--data", str(synthetic_folder), "--threads", "1,2", "--md",
            "--runs", "3", "--warmup", "1", "--out", str(out), "--plot", str(plot)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.stderr
    text = out.read_text()
    assert text.startswith("# edgecxr benchmark") and "--threads 1,2" in text and "## Accuracy of tiny int8" in text
    pytest.importorskip("matplotlib")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "already exists" in again.stderr and "--force" in again.stderr


def test_cli_bench_rejects_bad_thread_counts(tiny_tflite):
    result = CliRunner().invoke(main, ["bench", str(tiny_tflite.int8), "--threads", "0,x"])
    assert result.exit_code == 2 and "thread counts" in result.stderr


def test_cli_bench_exits_nonzero_when_every_model_fails(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_text("nope")
    result = CliRunner().invoke(main, ["bench", str(bad), "--runs", "2"])
    assert result.exit_code == 1 and "failed" in result.stdout and "Traceback" not in result.stderr


def test_cli_bench_exits_nonzero_when_any_model_fails_and_still_reports_the_rest(tiny_tflite, tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_text("nope")
    result = CliRunner().invoke(main, ["bench", str(tiny_tflite.int8), str(bad), "--runs", "2", "--warmup", "0"])
    assert result.exit_code == 1
    assert "tiny int8 " in result.stdout and "bad.tflite" in result.stdout and "failed" in result.stdout
    assert "1 of 2 rows failed" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("extra_args, named", [
    (["--limit", "3"], "--limit"),
    (["--split", "val"], "--split"),
    (["--extra-data", "somewhere"], "--extra-data"),
])
def test_cli_bench_refuses_data_options_without_data(tiny_tflite, extra_args, named):
    result = CliRunner().invoke(main, ["bench", str(tiny_tflite.int8), "--runs", "2", *extra_args])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {named} needs --data DATA (labelled images)"


def test_cli_bench_plot_without_data_fails_before_benchmarking(tiny_tflite, tmp_path):
    result = CliRunner().invoke(main, ["bench", str(tiny_tflite.int8), "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 1 and "--plot" in result.stderr and "--data" in result.stderr
    assert result.stdout == "" and not (tmp_path / "p.png").exists()


def test_bench_with_splits_but_no_split_scores_the_test_split(tiny_tflite, synthetic_folder, tmp_path):
    records = load_records(synthetic_folder, notes=[])
    splits_csv = tmp_path / "splits.csv"
    splits = split_by_patient(records, 0.25, 0.25, seed=0)
    save_splits(splits_csv, records, splits)
    report = bench([tiny_tflite.int8], data=synthetic_folder, splits_file=splits_csv, **FAST)
    assert report.rows[0].n_images == splits.count("test") > 0
    assert splits.count("test") < len(records)
    assert any("scoring the test split" in note for note in report.notes)


# --- the closing recommendation ------------------------------------------------------------------


def _row(name, p50, accuracy=None, engine="ai_edge_litert 2.3.0", threads=1):
    from edgecxr.bench import BenchRow

    stats = LatencyStats.from_times(p50, [], [p50])
    return BenchRow(model=f"/m/{name}", name=name, threads=threads, engine=engine, model_only=stats,
                    accuracy=accuracy)


def test_recommend_names_the_fastest_file_within_the_tolerance_of_the_most_accurate():
    from edgecxr.bench import recommend

    rows = [_row("float32.tflite", 1.0, 0.803), _row("int8.tflite", 0.6, 0.797),
            _row("tiny.tflite", 0.2, 0.70), _row("f.onnx", 0.9, 0.803, engine="onnxruntime 1.32.0")]
    line = recommend(rows, tolerance=1.0)
    assert line.startswith("recommended on this machine: int8.tflite (ai_edge_litert 2.3.0, 1 thread(s), p50 0.60 ms")
    assert "float32.tflite is the most accurate at 80.3%" in line and "within 1 accuracy point" in line
    # A tighter tolerance rules the int8 file out; the faster of the two most accurate wins.
    assert recommend(rows, tolerance=0.5).startswith("recommended on this machine: f.onnx (onnxruntime 1.32.0")
    # The fastest-but-inaccurate file wins only when the tolerance covers its loss.
    assert "tiny.tflite" in recommend(rows, tolerance=11.0)


def test_recommend_without_accuracy_or_with_one_file():
    from edgecxr.bench import recommend

    assert recommend([_row("a.tflite", 1.0, 0.8), _row("a.tflite", 0.5, 0.8, threads=2)]) == ""
    line = recommend([_row("a.tflite", 1.0), _row("b.tflite", 0.5)])
    assert "b.tflite" in line and "accuracy not weighed" in line and "--data" in line


def test_cli_bench_of_several_models_ends_with_the_recommendation(tiny_tflite, synthetic_folder):
    args = ["bench", str(tiny_tflite.float32), str(tiny_tflite.int8), "--data", str(synthetic_folder),
            "--runs", "5", "--warmup", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("recommended on this machine: tiny ")
    report = json.loads(CliRunner().invoke(main, [*args, "--json"]).stdout)
    rows = report["rows"]
    best = max(r["accuracy"] for r in rows)
    eligible = [r for r in rows if (best - r["accuracy"]) * 100 <= 1.0]
    fastest = min(eligible, key=lambda r: r["model_only"]["p50_ms"])
    assert report["recommendation"].startswith(f"recommended on this machine: {fastest['name']} (")


# --- --peers: ONNX Runtime rows -------------------------------------------------------------------


def test_peers_without_the_extra_is_one_note(tiny_tflite, monkeypatch):
    import edgecxr.peers

    monkeypatch.setattr(edgecxr.peers, "PEER_MODULES", ("edgecxr_no_such_module",))
    result = CliRunner().invoke(main, ["bench", str(tiny_tflite.float32), "--peers", "--runs", "3", "--warmup", "0"])
    assert result.exit_code == 0, result.stderr
    assert "note: --peers: ONNX Runtime rows skipped, edgecxr_no_such_module not installed" in result.stdout
    assert "pip install 'edgecxr[peers]'" in result.stdout and "onnxruntime" not in result.stdout.split("note:")[0]


def test_peers_add_onnx_runtime_rows_timed_and_scored_like_ours(tiny_tflite, synthetic_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    pytest.importorskip("tf2onnx")
    records = load_records(synthetic_folder, notes=[])
    splits_csv = tmp_path / "splits.csv"
    save_splits(splits_csv, records, split_by_patient(records, 0.25, 0.25, seed=0))
    report = bench([tiny_tflite.int8], data=synthetic_folder, splits_file=splits_csv, split="all",
                   peers=True, **FAST)
    names = [r.name for r in report.rows]
    # The float32 twin next to the int8 file is found, benchmarked and converted.
    assert names == ["tiny int8", "tiny float32", "tiny float32.onnx (tf2onnx)",
                     "tiny float32_qdq_int8.onnx (QDQ per-channel)"], [r.error for r in report.rows]
    lite_f32, ort_f32, ort_int8 = report.rows[1:]
    for row in (ort_f32, ort_int8):
        assert row.status == "ok", row.error
        assert row.engine.startswith("onnxruntime ") and row.io_dtype == "float32" and row.xnnpack is None
        _assert_latency(row.model_only, **FAST)
        _assert_latency(row.end_to_end, **FAST)
        assert row.n_images == lite_f32.n_images == 48 and row.metrics is not None
    assert (ort_f32.quantization, ort_int8.quantization) == ("none", "int8")
    # Same network, same preprocessing: float32 ONNX Runtime scores what float32 LiteRT scores.
    assert ort_f32.accuracy == pytest.approx(lite_f32.accuracy, abs=1 / 48 + 1e-9)
    assert ort_f32.metrics["confusion_matrix"]["matrix"] == lite_f32.metrics["confusion_matrix"]["matrix"]
    assert ort_int8.accuracy > 0.5  # calibrated int8 still reads the synthetic cue; chance is 0.25
    # Size is the converted file's: float32 ONNX about the float32 .tflite, int8 clearly smaller.
    assert ort_f32.size_mb == pytest.approx(lite_f32.size_mb, rel=0.5) and ort_int8.size_mb < ort_f32.size_mb
    assert any(f"training split of {splits_csv}" in n for n in report.notes)
    assert any("float32 twin of tiny int8.tflite" in n for n in report.notes)
    assert report.recommendation.startswith("recommended on this machine: ")
    assert "XNNPACK: on (" in report.to_table()  # the ONNX rows do not blur the TFLite header


def test_onnx_classifier_matches_the_tflite_probabilities(tiny_tflite, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    pytest.importorskip("tf2onnx")
    from edgecxr.peers import OnnxClassifier, convert

    notes = []
    (name, path, spec), = convert(tiny_tflite.float32, tmp_path, None, notes)
    assert path.is_file() and "no images to calibrate" in notes[0]
    onnx_clf, lite = OnnxClassifier(path, spec, num_threads=1), Classifier(tiny_tflite.float32)
    images = tiny_tflite.images[:40]  # more than one batch of MAX_BATCH
    np.testing.assert_allclose(onnx_clf.predict_arrays(images), lite.predict_arrays(images), atol=1e-4)


def test_a_failed_onnx_conversion_is_a_failed_row_not_a_crash(tiny_tflite, monkeypatch):
    import edgecxr.peers

    monkeypatch.setattr(edgecxr.peers, "missing_extra", lambda: None)
    monkeypatch.setattr(edgecxr.peers, "_convert_float", lambda src, dst: "tf2onnx failed: KeyError: 'CUSTOM_OP'")
    result = CliRunner().invoke(main, ["bench", str(tiny_tflite.float32), "--peers", "--runs", "3", "--warmup", "0"])
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "tiny float32.onnx (tf2onnx)" in result.stdout and "tf2onnx failed: KeyError: 'CUSTOM_OP'" in result.stdout
    assert "1 of 2 rows failed" in result.stderr
def test_synthetic_end_to_end_films_compress_like_real_ones():
    """Without --data, bench decodes JPEGs of a real 512 px film's size (22-81 KB in the
    collection), not white noise (823 KB), so end-to-end figures are not a decoder worst case."""
    import io as _io

    from PIL import Image

    from edgecxr.bench import SYNTHETIC_FILES, SYNTHETIC_SIZE, _synthetic_jpegs

    films = _synthetic_jpegs()
    assert len(films) == SYNTHETIC_FILES
    for data in films:
        assert 15_000 < len(data) < 90_000
        with Image.open(_io.BytesIO(data)) as img:
            assert img.size == (SYNTHETIC_SIZE, SYNTHETIC_SIZE) and img.mode == "L"
    assert len({hash(d) for d in films}) == SYNTHETIC_FILES
