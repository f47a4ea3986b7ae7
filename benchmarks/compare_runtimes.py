#!/usr/bin/env python
"""Keras vs TFLite (float32, float16, dynamic, int8) vs ONNX Runtime: one network, one machine, one table.

The question a reader has is "what do I gain by exporting to int8 TFLite instead of just calling my
Keras model, and how does TFLite compare with another inference engine?". So every format runs the
same network on the same preprocessed images in the same run, and the table reports size, accuracy on
the validation split, top-1 agreement with Keras, batch-1 latency (p50/p90) at 1 and 2 threads and
batched throughput.

    python benchmarks/compare_runtimes.py                       # runs/shipped if trained, else --random
    python benchmarks/compare_runtimes.py --run runs/shipped --limit 300 --force
    python benchmarks/compare_runtimes.py --random --standard   # latency only, plus the hard-swish variant
    python benchmarks/compare_runtimes.py --run runs/long --run runs/std --limit 0 \
        --tflite runs/long/export/edgecxr_int8_uint8io.tflite      # two trained runs + an exported file

Writes ``benchmarks/RUNTIMES.md`` (``--out``; an existing file needs ``--force``) and prints it.

Why subprocesses: TensorFlow fixes its thread pools at its first op, so each Keras thread count is
timed in a fresh worker process. tf2onnx and onnxruntime live in their own venv, so installing them
(and whatever protobuf/numpy/onnx versions they pull in) can never change the packages TensorFlow
depends on; ONNX conversion and timing run in that venv's Python. Set it up with

    python -m venv --system-site-packages /opt/edgecxr-onnx-venv
    /opt/edgecxr-onnx-venv/bin/pip install onnxruntime onnx
    /opt/edgecxr-onnx-venv/bin/pip install --no-deps tf2onnx

A format that fails to convert or run becomes a row with its error, never a crash.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "benchmarks" / "recipes" / "shipped.json"
DEFAULT_RUN = REPO / "runs" / "shipped"
DEFAULT_OUT = REPO / "benchmarks" / "RUNTIMES.md"
ONNX_VENV_PYTHON = Path("/opt/edgecxr-onnx-venv/bin/python")
THROUGHPUT_BATCH = 32
THROUGHPUT_BATCHES = 5  # timed batches (after one warm-up batch) for images/s
RANDOM_EVAL_IMAGES = 64  # --random: noise images for throughput (no accuracy)
TFLITE_FORMATS = ("float32", "float16", "dynamic", "int8")


# --- results ---------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Batch-1 latency of one format at one thread count, in milliseconds."""

    p50_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    warmup: int


@dataclass
class Row:
    """One format. Missing numbers stay None and print as n/a; a failed row says why in ``error``."""

    key: str
    label: str
    runtime: str
    status: str = "ok"
    error: str = ""
    file: str = ""
    size_mb: float | None = None
    size_note: str = ""
    latency: dict = field(default_factory=dict)  # threads (str) -> Timing
    images_per_s: float | None = None
    accuracy: float | None = None
    n_scored: int | None = None
    agreement: float | None = None
    max_abs_dp: float | None = None
    probs_file: str = ""
    notes: list = field(default_factory=list)

    def fail(self, error: str) -> "Row":
        self.status, self.error = "failed", error
        return self


@dataclass
class Network:
    """The network under test and the images every format sees."""

    title: str
    cfg: object  # edgecxr.config.TrainConfig
    source: str  # where the weights came from
    data_note: str
    eval_images: np.ndarray  # uint8 (N, S, S, 3)
    records: list | None  # the Records of eval_images; None without labels (--random)
    calib: list  # Records to draw int8 calibration images from (the training split)
    calib_note: str
    notes: list = field(default_factory=list)


# --- timing (shared by the driver and the workers) ---------------------------------------------


def time_calls(fn, runs: int, warmup: int) -> Timing:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    p50, p90 = np.percentile(times, [50, 90])
    return Timing(float(p50), float(p90), float(np.mean(times)), runs, warmup)


def throughput(run_batch, images: np.ndarray) -> float:
    """Images/s over THROUGHPUT_BATCHES batches of THROUGHPUT_BATCH after one warm-up batch."""
    n = THROUGHPUT_BATCH * THROUGHPUT_BATCHES
    batch = images[np.arange(n) % len(images)]
    run_batch(batch[:THROUGHPUT_BATCH])
    t0 = time.perf_counter()
    for start in range(0, n, THROUGHPUT_BATCH):
        run_batch(batch[start : start + THROUGHPUT_BATCH])
    return n / (time.perf_counter() - t0)


def in_batches(run_batch, images: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(run_batch(images[i : i + THROUGHPUT_BATCH]))
                           for i in range(0, len(images), THROUGHPUT_BATCH)])


def write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, default=lambda o: asdict(o)) + "\n")


# --- workers: run in a subprocess, read inputs from --workdir, write <name>.json there -------------


def keras_worker(workdir: Path, threads: int, runs: int, warmup: int, with_eval: bool) -> dict:
    """Time three ways to call the Keras model with TensorFlow on ``threads`` threads.

    ``model.predict`` is what most users write; it builds a data pipeline per call, so the eager
    ``model(x, training=False)`` and a ``tf.function`` graph (the fastest plain-TensorFlow way) are
    timed too: the comparison should be with Keras at its best, not at its slowest.
    """
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    model = load_keras(workdir)
    size = int(model.input_shape[1])
    graph = tf.function(lambda x: model(x, training=False),
                        input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])
    calls = {
        "predict": lambda b: model.predict(b, batch_size=THROUGHPUT_BATCH, verbose=0),
        "call": lambda b: model(b, training=False),
        "graph": graph,
    }
    x1 = np.load(workdir / "latency.npy").astype(np.float32)
    out = {name: {"latency": time_calls(lambda: fn(x1), runs, warmup)} for name, fn in calls.items()}
    if with_eval:
        images = np.load(workdir / "eval.npy").astype(np.float32)
        np.save(workdir / "probs-keras.npy", calls["predict"](images))
        for name, fn in calls.items():
            out[name]["images_per_s"] = throughput(fn, images)
    return out


def load_keras(workdir: Path):
    """The Keras model from the work folder, laid out as a run directory (config + best checkpoint)."""
    from edgecxr.model import load_run_model

    return load_run_model(workdir)[0]


def onnx_worker(workdir: Path, threads: list[int], runs: int, warmup: int) -> dict:
    """Convert with tf2onnx (from the Keras model, and from the float32 .tflite) and time ONNX Runtime.

    Both conversion routes are tried and reported: from_keras is what a Keras user would run;
    from_tflite avoids TensorFlow graph parsing, the part most likely to break on a new TensorFlow.
    """
    from importlib import metadata

    out = {"versions": {}, "routes": {}}
    for dist in ("onnxruntime", "onnx", "tf2onnx", "numpy", "protobuf"):
        try:
            out["versions"][dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out["versions"][dist] = "not installed"
    for route in ("from_keras", "from_tflite"):
        path = workdir / f"model-{route}.onnx"
        result = {"file": str(path)}
        out["routes"][route] = result
        t0 = time.perf_counter()
        try:
            convert_onnx(route, workdir, path)
        except Exception as exc:  # noqa: BLE001 - tf2onnx raises anything; the failure is the result
            result["error"] = f"conversion failed: {one_line(exc)}"
            continue
        result["convert_s"] = time.perf_counter() - t0
        try:
            result.update(time_onnx(path, workdir, threads, runs, warmup, route))
        except Exception as exc:  # noqa: BLE001 - onnxruntime errors vary; report, don't crash
            result["error"] = f"onnxruntime failed: {one_line(exc)}"
    return out


def convert_onnx(route: str, workdir: Path, path: Path) -> None:
    import tf2onnx

    if route == "from_tflite":
        tf2onnx.convert.from_tflite(str(workdir / "float32.tflite"), output_path=str(path))
        return
    import tensorflow as tf

    model = load_keras(workdir)
    size = int(model.input_shape[1])
    signature = (tf.TensorSpec((None, size, size, 3), tf.float32, name="image"),)
    tf2onnx.convert.from_keras(model, input_signature=signature, output_path=str(path))


def time_onnx(path: Path, workdir: Path, threads: list[int], runs: int, warmup: int, route: str) -> dict:
    import onnx
    import onnxruntime as ort

    opset = max((o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")),
                default=None)
    x1 = np.load(workdir / "latency.npy").astype(np.float32)
    images = np.load(workdir / "eval.npy").astype(np.float32)
    result = {"opset": opset, "latency": {}}
    for n in threads:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = n
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        result["latency"][str(n)] = time_calls(lambda: sess.run(None, {name: x1}), runs, warmup)
        if n == max(threads):
            fixed = sess.get_inputs()[0].shape[0] == 1
            result["fixed_batch"] = fixed

            def run_batch(b):
                if fixed:  # a graph converted with batch 1 (from a batch-1 .tflite): one image per run
                    return np.concatenate([sess.run(None, {name: b[i : i + 1]})[0] for i in range(len(b))])
                return sess.run(None, {name: b})[0]

            np.save(workdir / f"probs-onnx-{route}.npy", in_batches(run_batch, images))
            result["images_per_s"] = throughput(run_batch, images)
    return result


def worker_main(args) -> int:
    workdir = Path(args.workdir)
    threads = parse_threads(args.threads)
    if args.worker == "keras":
        result = keras_worker(workdir, threads[0], args.runs, args.warmup, args.with_eval)
        write_json(workdir / f"keras-t{threads[0]}.json", result)
    else:
        write_json(workdir / "onnx.json", onnx_worker(workdir, threads, args.runs, args.warmup))
    return 0


# --- the driver: prepare the network, convert, measure, write the table ------------------------


def prepare_network(args, workdir: Path, run: str | None, standard: bool) -> Network:
    """Load a trained run (val images, train images for calibration) or build the recipe at random."""
    from edgecxr.config import TrainConfig

    if run:
        return prepare_run(Path(run), args, workdir)
    recipe = json.loads(RECIPE.read_text())
    recipe["weights"] = "none"
    if standard:
        recipe["minimalistic"] = False
    cfg = TrainConfig.from_dict(recipe, source=str(RECIPE))
    import tf_keras as keras

    from edgecxr.model import build_model

    keras.utils.set_random_seed(args.seed)
    save_keras(build_model(cfg), cfg, workdir)
    images = np.random.default_rng(args.seed).integers(
        0, 256, size=(RANDOM_EVAL_IMAGES, cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    variant = "standard (hard-swish, SE)" if standard else "minimalistic (ReLU, no SE)"
    return Network(
        title=f"{describe_arch(cfg)} with random weights",
        cfg=cfg,
        source=f"{RECIPE.relative_to(REPO)} built with weights=none, seed {args.seed}, {variant}",
        data_note=f"none: {RANDOM_EVAL_IMAGES} uniform-noise images (seeded); latency only, "
                  "accuracy and agreement are n/a (an untrained network outputs ~uniform probabilities)",
        eval_images=images,
        records=None,
        calib=noise_records(images, workdir),
        calib_note=f"{len(images)} uniform-noise images (latency only: calibration quality is irrelevant)",
    )


def noise_records(images: np.ndarray, workdir: Path) -> list:
    """Calibration "training images" for a random network: the noise images, saved as PNG files,
    so int8 conversion goes through the same file-based path as for a trained run."""
    from PIL import Image

    from edgecxr.data import Record

    folder = workdir / "noise"
    folder.mkdir()
    records = []
    for i, image in enumerate(images):
        path = folder / f"noise_{i:03d}.png"
        Image.fromarray(image).save(path)
        records.append(Record(file=str(path), label="normal", patient_id=f"noise-{i}", source="noise",
                              group="unknown"))
    return records


def prepare_run(run_dir: Path, args, workdir: Path) -> Network:
    """The run's val split (a seeded sample of --limit images) from its own splits.csv, which lists
    every file with its label and source, so the run's data is found wherever it was trained."""
    from edgecxr import data as data_mod
    from edgecxr.errors import DataError
    from edgecxr.model import load_run_model

    model, cfg = load_run_model(run_dir)
    save_keras(model, cfg, workdir)
    splits_csv = run_dir / "splits.csv"
    notes: list[str] = []
    records = data_mod.load_records(splits_csv, notes=notes)
    splits = data_mod.load_splits(splits_csv, records)
    val = [r for r, s in zip(records, splits) if s == "val"]
    if not val:
        raise DataError(f"{splits_csv} has no val split")
    sample = seeded_sample(val, args.limit, args.seed)
    images, kept = data_mod.load_split_arrays(sample, ["v"] * len(sample), "v", cfg.image_size,
                                              on_error=lambda f, m: notes.append(f"skipped: {m}"),
                                              equalize=cfg.equalize)
    if not kept:
        raise DataError(f"none of the validation images listed in {splits_csv} could be read")
    finished = (run_dir / "metrics.json").is_file()
    if not finished:
        notes.append(f"{run_dir} has no metrics.json: its training had not finished, so this is an "
                     "intermediate best checkpoint")
    sources = ", ".join([str(cfg.data), *map(str, cfg.extra_data)])
    return Network(
        title=f"{describe_arch(cfg)}, trained ({run_dir.name})",
        cfg=cfg,
        source=f"{run_dir}/checkpoints/best.weights.h5 (config {run_dir}/config.json)",
        data_note=f"val split of {splits_csv}: {len(kept)} of {len(val)} images "
                  f"(seeded sample, seed {args.seed}, --limit {args.limit}) from {sources}"
                  + (training_val_note(run_dir) if finished else ""),
        eval_images=images,
        records=kept,
        calib=[r for r, s in zip(records, splits) if s == "train"],
        calib_note=f"up to {args.calib} train-split images",
        notes=notes,
    )


def training_val_note(run_dir: Path) -> str:
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        acc = metrics["accuracy"]["value"]
        n = metrics["accuracy"].get("n")
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    n_text = f" of {n} images" if n else ""
    return f"; the run's own metrics.json reports val accuracy {acc:.3f} (whole val split{n_text})"


def seeded_sample(items: list, limit: int, seed: int) -> list:
    if limit <= 0 or limit >= len(items):
        return list(items)
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=limit, replace=False))
    return [items[i] for i in keep]


def save_keras(model, cfg, workdir: Path) -> None:
    """Lay the work folder out as a run directory (config.json, checkpoints/best.weights.h5), so the
    workers and edgecxr.export rebuild the model the way they rebuild any run, without the network."""
    from edgecxr.config import TrainConfig

    TrainConfig.from_dict({**cfg.__dict__, "weights": "none"}).save(workdir / "config.json")
    (workdir / "checkpoints").mkdir(exist_ok=True)
    model.save_weights(str(keras_weights(workdir)))


def keras_weights(workdir: Path) -> Path:
    return workdir / "checkpoints" / "best.weights.h5"


def describe_arch(cfg) -> str:
    kind = "minimalistic" if cfg.minimalistic else "standard"
    return (f"MobileNetV3{cfg.architecture.capitalize()} {kind} (alpha {cfg.alpha}), {cfg.image_size} px, "
            f"head {cfg.head_width}")


# --- TFLite conversion -----------------------------------------------------------------------------


def convert_tflite(net: Network, workdir: Path, args) -> tuple[dict, str]:
    """Write float32/float16/dynamic/int8 ``.tflite`` files (spec embedded); return rows and the route.

    edgecxr.export's conversion is used when it is there (the files are then what `edgecxr export`
    makes, minus its accuracy guard); otherwise a plain TFLiteConverter with the same settings.
    """
    export_mod = find_export()
    route = ("edgecxr.export.convert (the conversion `edgecxr export` runs; int8 with uint8 I/O)"
             if export_mod else "tf.lite.TFLiteConverter.from_keras_model + edgecxr.spec.embed_spec "
             "(edgecxr.export not available)")
    model = load_keras(workdir)
    rows = {}
    for quant in TFLITE_FORMATS:
        row = Row(key=f"tflite-{quant}", label=f"TFLite {quant}", runtime="tflite")
        path = workdir / f"{quant}.tflite"
        t0 = time.perf_counter()
        try:
            if export_mod:
                blob = export_bytes(export_mod, model, net, workdir, quant, args, row.notes)
            else:
                blob = converter_bytes(model, net, quant, args)
            path.write_bytes(blob)
        except Exception as exc:  # noqa: BLE001 - converters raise many types; a failed row is the result
            rows[quant] = row.fail(f"conversion failed: {one_line(exc)}")
            continue
        row.file, row.size_mb = str(path), path.stat().st_size / 1e6
        row.notes.insert(0, f"converted in {time.perf_counter() - t0:.1f} s")
        rows[quant] = row
    return rows, route


def exported_rows(paths: list[str], run: str | None, only_run: bool) -> dict:
    """Rows for ``.tflite`` files made beforehand (e.g. by `edgecxr export --qat`) that belong to
    this run: a file inside the run directory, or any file when only one run is measured."""
    rows = {}
    for text in paths:
        path = Path(text)
        inside = run is not None and path.resolve().is_relative_to(Path(run).resolve())
        if run is None or not (inside or only_run):
            continue
        row = Row(key=f"file-{path.name}", label=f"TFLite file {path.name}", runtime="tflite")
        if not path.is_file():
            rows[row.key] = row.fail(f"{path} not found")
            continue
        row.file, row.size_mb = str(path), path.stat().st_size / 1e6
        row.notes.append(f"exported beforehand: {path}")
        rows[row.key] = row
    return rows



def find_export():
    """edgecxr.export when it offers the pieces used here, else None (then the fallback converter)."""
    if importlib.util.find_spec("edgecxr.export") is None:
        return None
    import edgecxr.export as export_mod

    needed = ("ExportOptions", "GuardData", "convert")
    return export_mod if all(hasattr(export_mod, name) for name in needed) else None


def export_bytes(export_mod, model, net: Network, workdir: Path, quant: str, args, notes: list) -> bytes:
    from edgecxr.model import model_spec

    mode = "none" if quant == "float32" else quant
    opts = export_mod.ExportOptions(quantize=mode, **({"representative": args.calib} if quant == "int8" else {}))
    opts = opts.validated()
    guard_data = export_mod.GuardData(
        records=net.calib, splits=["train"] * len(net.calib), val_images=net.eval_images, val_records=[],
        image_size=net.cfg.image_size, equalize=net.cfg.equalize, source="calibration", data_args=[],
        summary={})
    info: dict = {}
    # The standard MobileNetV3's int8 graph is rebuilt with a delegate-friendly hard-swish by export.
    rewrite = getattr(export_mod, "_graph_for_conversion", None)
    graph = rewrite(model, workdir, net.cfg, opts, info, log) if rewrite else model
    blob = export_mod.convert(graph, net.cfg, opts, guard_data, info, log)
    if "calibration" in info:
        notes.append(f"calibrated on {info['calibration'].get('images')} images")
    if "hard_swish" in info:
        notes.append(f"hard-swish as {info['hard_swish']}")
    spec = model_spec(net.cfg, quantization=opts.quantize, io_dtype=opts.io, name=opts.stem)
    return embed(blob, spec)


def embed(blob: bytes, spec) -> bytes:
    from edgecxr.spec import embed_spec

    return embed_spec(blob, spec)


def converter_bytes(model, net: Network, quant: str, args) -> bytes:
    """Fallback conversion: the settings edgecxr.export uses, with the public TFLiteConverter API."""
    import tensorflow as tf

    from edgecxr import data as data_mod
    from edgecxr.model import model_spec

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    io_dtype = "float32"
    if quant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quant == "int8":
        picked = seeded_sample(net.calib, args.calib, args.seed)
        images, _ = data_mod.load_split_arrays(picked, ["t"] * len(picked), "t", net.cfg.image_size,
                                               equalize=net.cfg.equalize)

        def representative():
            for image in images:
                yield [image[None].astype(np.float32)]

        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.uint8
        io_dtype = "uint8"
    spec = model_spec(net.cfg, quantization="none" if quant == "float32" else quant, io_dtype=io_dtype)
    return embed(converter.convert(), spec)


# --- measuring -------------------------------------------------------------------------------------


def measure_tflite(rows: dict, net: Network, threads: list[int], args, workdir: Path) -> None:
    from edgecxr.runtime import Classifier

    x1 = net.eval_images[:1]
    for row in rows.values():
        if row.status != "ok":
            continue
        try:
            for n in threads:
                clf = Classifier(row.file, num_threads=n)
                row.latency[str(n)] = time_calls(lambda: clf.predict_arrays(x1), args.runs, args.warmup)
                if n == max(threads):
                    if not clf.resize_batch(THROUGHPUT_BATCH):
                        row.notes.append("input fixed at batch 1: batches run one image per invoke")
                    probs = clf.predict_arrays(net.eval_images)
                    row.probs_file = str(workdir / f"probs-{row.key}.npy")  # never next to a user's file
                    np.save(row.probs_file, probs)
                    row.images_per_s = throughput(clf.predict_arrays, net.eval_images)
            row.runtime = f"{clf.interpreter_name} {clf.interpreter_version}"
            row.notes.append(f"input {clf.input_dtype}, XNNPACK {fmt_bool(clf.xnnpack)}")
        except Exception as exc:  # noqa: BLE001 - interpreter errors vary; a failed row is the result
            row.fail(f"interpreter failed: {one_line(exc)}")


KERAS_CALLS = {"predict": "Keras model.predict", "call": "Keras model(x, training=False)",
               "graph": "Keras model in tf.function"}


def measure_keras(net: Network, workdir: Path, threads: list[int], args) -> list[Row]:
    import tensorflow as tf
    import tf_keras

    runtime = f"TensorFlow {tf.__version__}, tf_keras {tf_keras.__version__}"
    rows = {name: Row(key=f"keras-{name}", label=label, runtime=runtime) for name, label in KERAS_CALLS.items()}
    size = keras_weights(workdir).stat().st_size / 1e6
    for row in rows.values():
        row.file, row.size_mb, row.size_note = str(keras_weights(workdir)), size, "weights .h5"
        row.probs_file = str(workdir / "probs-keras.npy")
    for n in threads:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "keras", "--workdir",
                   str(workdir), "--threads", str(n), "--runs", str(args.runs), "--warmup", str(args.warmup)]
        if n == max(threads):
            command.append("--with-eval")
        error = run_worker(command, workdir / f"keras-t{n}.log")
        if error:
            return [row.fail(f"Keras worker ({n} threads) failed: {error}") for row in rows.values()]
        result = json.loads((workdir / f"keras-t{n}.json").read_text())
        for name, row in rows.items():
            row.latency[str(n)] = Timing(**result[name]["latency"])
            row.images_per_s = result[name].get("images_per_s", row.images_per_s)
    rows["call"].notes.append("same weights as model.predict; accuracy columns score model.predict's output")
    rows["graph"].notes.append("tf.function with a (None, S, S, 3) float32 signature: traced once, then graph calls")
    return list(rows.values())


def measure_onnx(workdir: Path, threads: list[int], args) -> tuple[list[Row], dict]:
    labels = {"from_keras": "ONNX Runtime (tf2onnx from_keras)",
              "from_tflite": "ONNX Runtime (tf2onnx from_tflite float32)"}
    rows = [Row(key=f"onnx-{route}", label=label, runtime="onnxruntime") for route, label in labels.items()]
    python = onnx_python(args)
    if python is None:
        for row in rows:
            row.fail("onnxruntime/tf2onnx not found in this Python nor in /opt/edgecxr-onnx-venv "
                     "(see this script's docstring for the venv setup)")
        return rows, {}
    command = [str(python), str(Path(__file__).resolve()), "--worker", "onnx", "--workdir", str(workdir),
               "--threads", ",".join(map(str, threads)), "--runs", str(args.runs), "--warmup", str(args.warmup)]
    error = run_worker(command, workdir / "onnx.log")
    if error:
        for row in rows:
            row.fail(f"ONNX worker failed: {error}")
        return rows, {"python": str(python)}
    result = json.loads((workdir / "onnx.json").read_text())
    versions = result["versions"]
    for row, route in zip(rows, labels):
        info = result["routes"][route]
        row.runtime = f"onnxruntime {versions.get('onnxruntime')}"
        if "convert_s" in info:
            path = Path(info["file"])
            row.file, row.size_mb = str(path), path.stat().st_size / 1e6
            row.notes.append(f"tf2onnx {versions.get('tf2onnx')} {route} in {info['convert_s']:.1f} s, "
                             f"opset {info.get('opset')}")
        if "error" in info:
            row.fail(info["error"])
            continue
        row.latency = {k: Timing(**v) for k, v in info["latency"].items()}
        if info.get("fixed_batch"):
            row.notes.append("input fixed at batch 1: batches run one image per call")
        row.images_per_s = info["images_per_s"]
        row.probs_file = str(workdir / f"probs-onnx-{route}.npy")
    return rows, {"python": str(python), **versions}


def onnx_python(args) -> Path | None:
    if args.onnx_python:
        return Path(args.onnx_python)
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("tf2onnx"):
        return Path(sys.executable)
    return ONNX_VENV_PYTHON if ONNX_VENV_PYTHON.is_file() else None


def run_worker(command: list[str], log: Path) -> str:
    """Run a worker, its output to ``log``; return '' on success, else the error's last line."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    with log.open("w") as fh:
        try:
            code = subprocess.call(command, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        except OSError as exc:  # e.g. --onnx-python names no program
            return f"cannot start {command[0]}: {exc.strerror}"
    if code == 0:
        return ""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or [f"exit code {code}"])[-1][:300]


def score_rows(rows: list[Row], net: Network) -> None:
    """Accuracy (same scorer as `edgecxr evaluate`), top-1 agreement and max |dp| against Keras."""
    from edgecxr.evaluate import score

    keras_file = next((r.probs_file for r in rows if r.key == "keras-predict" and r.status == "ok"), "")
    reference = np.load(keras_file) if keras_file else None
    for row in rows:
        if row.status != "ok" or not row.probs_file or net.records is None:
            continue
        probs = np.load(row.probs_file).astype(np.float32)
        metrics = score(net.records, probs, net.cfg.class_names)
        row.accuracy, row.n_scored = metrics["accuracy"]["value"], metrics["accuracy"].get("n")
        if reference is not None:
            row.agreement = float(np.mean(probs.argmax(1) == reference.argmax(1)))
            row.max_abs_dp = float(np.abs(probs - reference).max())


def benchmark_network(args, threads: list[int], run: str | None,
                      standard: bool) -> tuple[Network, list[Row], dict]:
    """Every format of one network, in a temporary work folder (removed afterwards unless --keep)."""
    workdir = Path(tempfile.mkdtemp(prefix="edgecxr-runtimes-", dir=args.workdir))
    log(f"[{run or ('random standard' if standard else 'random')}] working in {workdir}")
    try:
        net, rows, onnx_info = measure_all(args, threads, run, standard, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.keep:
        net.notes.append(f"artifacts kept in {workdir}")
    return net, rows, onnx_info


def measure_all(args, threads: list[int], run: str | None, standard: bool,
                workdir: Path) -> tuple[Network, list[Row], dict]:
    net = prepare_network(args, workdir, run, standard)
    np.save(workdir / "eval.npy", net.eval_images)
    np.save(workdir / "latency.npy", net.eval_images[:1])
    log(f"network: {net.title}; {len(net.eval_images)} eval images")
    tflite, route = convert_tflite(net, workdir, args)
    tflite.update(exported_rows(args.tflite, run, only_run=len(args.run) == 1))
    net.notes.append(f"TFLite conversion: {route}; int8 calibration: {net.calib_note}")
    log("converted TFLite: " + ", ".join(f"{k} {r.status}" for k, r in tflite.items()))
    keras_rows = measure_keras(net, workdir, threads, args)
    log("Keras measured")
    measure_tflite(tflite, net, threads, args, workdir)
    log("TFLite measured")
    onnx_rows, onnx_info = measure_onnx(workdir, threads, args)
    log("ONNX Runtime measured")
    rows = [*keras_rows, *tflite.values(), *onnx_rows]
    score_rows(rows, net)
    return net, rows, onnx_info


# --- the Markdown report ---------------------------------------------------------------------------


def render(sections: list, args, threads: list[int], env: dict, onnx_info: dict, elapsed_s: float) -> str:
    others = env["other_load"].cores()
    busy = (others or 0) > 0.2 or env["load_start"] > 1.0
    lines = ["# Runtimes compared: Keras vs TFLite vs ONNX Runtime", "",
             f"Reproduce with `{env['command']}` (run {env['date']}, took {elapsed_s / 60:.1f} min).", "",
             f"- CPU: {env['cpu']}, {env['cores']}; {env['platform']}",
             f"- other load: the rest of the machine used {fmt(others, 2)} cores on average while this ran "
             f"(load average {env['load_start']:.2f} at the start)"
             + ("; other work was competing for the CPU, so latencies are pessimistic and noisier" if busy
                else "; the machine was otherwise idle"),
             f"- main environment: {env['packages']}",
             f"- ONNX environment: {format_onnx_env(onnx_info)}",
             f"- batch-1 latency: one call from a preprocessed uint8 image (the output of "
             f"`edgecxr.preprocess.load_image`) to probabilities, {args.runs} timed runs after "
             f"{args.warmup} warm-up, per thread count; image decoding/resizing excluded (the same for every format)",
             f"- images/s: {THROUGHPUT_BATCHES} batches of {THROUGHPUT_BATCH} after one warm-up batch, "
             f"{max(threads)} threads",
             ""]
    lines += tflite_summary(sections, threads)
    for net, rows in sections:
        lines += render_network(net, rows, threads)
    lines += ["## How each format was run", "",
              "- Keras: the tf_keras model rebuilt from the run's config and weights, in a fresh process per "
              "thread count (TensorFlow's intra- and inter-op threads set to N), float32 input. "
              "`model.predict` is what most users call; it builds a data pipeline on every call, so the eager "
              "`model(x, training=False)` and a `tf.function` graph of it are shown too.",
              "- TFLite: `edgecxr.runtime.Classifier(path, num_threads=N).predict_arrays`, i.e. the project's "
              "runtime, including the (de)quantization of uint8 input/output in numpy. float16 stores float16 "
              "weights (computed in float32 on CPU), dynamic stores int8 weights and quantizes activations at "
              "run time, int8 is full-integer with uint8 input/output (the shipped model's format).",
              "- ONNX Runtime: tf2onnx conversion in the separate ONNX venv, `CPUExecutionProvider`, "
              "`intra_op_num_threads=N`, `inter_op_num_threads=1`, all graph optimizations; float32 input.",
              "- Accuracy: the same scorer as `edgecxr evaluate` (4-class accuracy; partial-label images are "
              "excluded from it but kept for agreement). Agreement = share of images whose top-1 class equals "
              "Keras's; max |dp| = largest probability difference from Keras over those images.",
              ""]
    return "\n".join(lines)


def tflite_summary(sections: list, threads: list[int]) -> list[str]:
    """Every TFLite file of every network in one table: the export decision in one place."""
    header = ["network", "TFLite", "size MB", "val accuracy", "vs Keras (points)", "agreement",
              *(f"p50 ms {n}T" for n in threads), *(f"speed-up vs float32 {n}T" for n in threads)]
    body = []
    for net, rows in sections:
        keras = next((r for r in rows if r.key.startswith("keras-") and r.accuracy is not None), None)
        base = next((r for r in rows if r.key == "tflite-float32" and r.status == "ok"), None)
        for r in rows:
            if not r.key.startswith(("tflite-", "file-")):
                continue
            name = r.label.replace("TFLite ", "")
            if r.status != "ok":
                body.append([net.title, name, fmt(r.size_mb, 2), *["failed"] * (len(header) - 3)])
                continue
            drop = "n/a" if r.accuracy is None or keras is None else f"{100 * (r.accuracy - keras.accuracy):+.1f}"
            speed = []
            for n in threads:
                mine, ref = r.latency.get(str(n)), base and base.latency.get(str(n))
                speed.append(f"{ref.p50_ms / mine.p50_ms:.2f}x" if mine and ref else "n/a")
            body.append([net.title, name, fmt(r.size_mb, 2),
                         "n/a" if r.accuracy is None else f"{r.accuracy:.3f}", drop,
                         "n/a" if r.agreement is None else f"{r.agreement:.1%}",
                         *(fmt(r.latency.get(str(n)) and r.latency[str(n)].p50_ms, 2) for n in threads), *speed])
    if not body:
        return []
    return ["## TFLite side by side", "", md_table(header, body, left=2), "",
            "Speed-up = float32 p50 / this file's p50 for the same network (above 1: faster than float32). "
            "vs Keras = this file's val accuracy minus the Keras model's on the same images.", ""]


def render_network(net: Network, rows: list[Row], threads: list[int]) -> list[str]:
    lines = [f"## {net.title}", "",
             f"- weights: {net.source}",
             f"- images: {net.data_note}", ""]
    lines += ["### Headline", "", *headline(rows, threads, net)]
    header = ["format", "runtime", "size MB", "val accuracy", "top-1 agreement with Keras", "max abs dp vs Keras"]
    for n in threads:
        header += [f"p50 ms {n}T", f"p90 ms {n}T"]
    header.append(f"images/s (batch {THROUGHPUT_BATCH}, {max(threads)}T)")
    body = []
    for r in rows:
        if r.status != "ok":
            body.append([r.label, r.runtime, fmt(r.size_mb, 2), *["failed"] * (len(header) - 3)])
            continue
        acc = "n/a" if r.accuracy is None else f"{r.accuracy:.3f}" + (f" (n={r.n_scored})" if r.n_scored else "")
        cells = [r.label, r.runtime, fmt(r.size_mb, 2) + (f" ({r.size_note})" if r.size_note else ""), acc,
                 "n/a" if r.agreement is None else f"{r.agreement:.1%}", fmt(r.max_abs_dp, 4)]
        for n in threads:
            t = r.latency.get(str(n))
            cells += [fmt(t and t.p50_ms, 2), fmt(t and t.p90_ms, 2)]
        cells.append(fmt(r.images_per_s, 1))
        body.append(cells)
    lines += [md_table(header, body), ""]
    failed = [r for r in rows if r.status != "ok"]
    if failed:
        lines += ["### Failures", "", *(f"- {r.label}: {r.error}" for r in failed), ""]
    notes = [*net.notes, *(f"{r.label}: {'; '.join(r.notes)}" for r in rows if r.notes)]
    lines += ["### Notes", "", *(f"- {n}" for n in notes), ""]
    return lines


def headline(rows: list[Row], threads: list[int], net: Network) -> list[str]:
    """The ratios a reader came for: int8 vs float32, vs Keras, vs ONNX Runtime, as a small table."""
    by_key = {r.key: r for r in rows if r.status == "ok" and r.latency}
    int8 = by_key.get("tflite-int8")
    if int8 is None:
        return ["int8 TFLite failed, so there are no ratios (see Failures).", ""]
    onnx = by_key.get("onnx-from_keras") or by_key.get("onnx-from_tflite")
    header = ["int8 TFLite vs", *(f"p50 ms {n}T: other / int8 (speed-up)" for n in threads), "size: other / int8",
              "accuracy: int8 - other", "images/s: int8 / other"]
    body = []
    for key in ("tflite-float32", *(f"keras-{name}" for name in KERAS_CALLS), onnx.key if onnx else "onnx"):
        other = by_key.get(key)
        if other is None:
            label = next((r.label for r in rows if r.key == key), "ONNX Runtime")
            body.append([label, *["n/a (failed)"] * (len(header) - 1)])
            continue
        cells = [other.label]
        for n in threads:
            a, b = other.latency.get(str(n)), int8.latency.get(str(n))
            cells.append(f"{a.p50_ms:.2f} / {b.p50_ms:.2f} (**{a.p50_ms / b.p50_ms:.2f}x**)" if a and b else "n/a")
        cells.append(f"{other.size_mb / int8.size_mb:.1f}x" if other.size_mb and int8.size_mb else "n/a")
        cells.append(f"{100 * (int8.accuracy - other.accuracy):+.1f} points"
                     if other.accuracy is not None and int8.accuracy is not None else "n/a")
        cells.append(f"{int8.images_per_s / other.images_per_s:.2f}x"
                     if other.images_per_s and int8.images_per_s else "n/a")
        body.append(cells)
    lines = [md_table(header, body, left=1), "",
             "Speed-up = the other format's p50 latency divided by int8's: above 1, int8 is faster."]
    if int8.agreement is not None:
        lines.append(f"int8 TFLite gives Keras's top-1 class on {int8.agreement:.1%} of the {len(net.eval_images)} "
                     f"validation images (largest probability difference {int8.max_abs_dp:.3f}).")
    f32 = by_key.get("tflite-float32")
    if f32 is not None and onnx is not None:
        speed = ", ".join(f"{ratio(onnx, f32, n)} at {n}T" for n in threads)
        lines.append(f"Same float32 math, two engines: {onnx.label} p50 / TFLite float32 p50 = {speed} "
                     "(above 1, TFLite is faster).")
    return [*lines, ""]


def ratio(slow: Row, fast: Row, n: int) -> str:
    a, b = slow.latency.get(str(n)), fast.latency.get(str(n))
    return f"{a.p50_ms / b.p50_ms:.2f}x" if a and b else "n/a"


def format_onnx_env(info: dict) -> str:
    if not info:
        return "not available"
    return ", ".join([f"python {info.get('python')}",
                      *(f"{k} {v}" for k, v in info.items() if k != "python")])


def md_table(header: list[str], rows: list[list[str]], left: int = 2) -> str:
    """A Markdown table; the first ``left`` columns (names) align left, numbers right."""
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    align = "| " + " | ".join([":---"] * left + ["---:"] * (len(header) - left)) + " |"
    return "\n".join([line(header), align, *(line(r) for r in rows)])


# --- small helpers ---------------------------------------------------------------------------------


def environment(argv: list[str]) -> dict:
    from importlib import metadata

    versions = []
    for dist in ("tensorflow", "tf_keras", "ai-edge-litert", "numpy", "protobuf"):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist} not installed")
    script = os.path.relpath(Path(__file__).resolve(), Path.cwd())
    cpu = lscpu()
    return {
        "command": shlex.join(["python", script, *argv]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(cpu),
        "cores": core_count(cpu),
        "platform": f"{platform.system()} {platform.release()} {platform.machine()}",
        "packages": f"Python {platform.python_version()}, " + ", ".join(versions),
        "load_start": os.getloadavg()[0],
        "other_load": OtherLoad(),
    }


class OtherLoad:
    """CPU time the rest of the machine used while this script ran, in cores (Linux /proc/stat).

    A load average would count this script too; this subtracts our own and our workers' CPU time
    (os.times), so a number near 0 means the latencies were measured on an otherwise idle machine.
    """

    def __init__(self):
        self.start = self._snapshot()

    @staticmethod
    def _snapshot():
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            busy_ticks = sum(int(v) for i, v in enumerate(fields[:8]) if i not in (3, 4))  # minus idle, iowait
        except (OSError, ValueError, IndexError):
            return None
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        return busy_ticks / os.sysconf("SC_CLK_TCK"), own, time.monotonic()

    def cores(self) -> float | None:
        end = self._snapshot()
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        others = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return max(0.0, others / (end[2] - self.start[2]))


def lscpu() -> dict:
    """lscpu's fields (the CPU name the issue asks for); empty where lscpu is missing."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines())}


def cpu_name(info: dict) -> str:
    return info.get("Model name") or platform.processor() or platform.machine() or "unknown"


def core_count(info: dict) -> str:
    """``2 cores (2 CPUs, 1 thread per core)``: cores, not hyper-threads, bound the speed-up."""
    try:
        cores = int(info["Core(s) per socket"]) * int(info.get("Socket(s)", "1"))
        return f"{cores} cores ({info.get('CPU(s)', os.cpu_count())} CPUs, {info.get('Thread(s) per core', '?')} thread(s) per core)"
    except (KeyError, ValueError):
        return f"{os.cpu_count()} CPUs"


def trained_standard(run: str) -> bool:
    try:
        return not json.loads((Path(run) / "config.json").read_text()).get("minimalistic", True)
    except (OSError, ValueError):
        return False


def parse_threads(text: str) -> list[int]:
    try:
        threads = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        raise SystemExit(f"error: --threads wants positive integers like 1,2, not {text!r}")
    return threads


def one_line(exc: BaseException) -> str:
    text = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{exc.__class__.__name__}: {text[-1][:240] if text else ''}".rstrip(": ")


def fmt(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt_bool(value) -> str:
    return {True: "on", False: "off"}.get(value, "unknown")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--run", action="append", default=[],
                     help="a trained run directory; repeat to compare runs in one report "
                          "(default: runs/shipped when it has a checkpoint)")
    src.add_argument("--random", action="store_true",
                     help="build the shipped recipe with weights=none: latency only, accuracy n/a")
    p.add_argument("--standard", action="store_true",
                   help="also measure the standard (hard-swish, SE) variant of the recipe with random "
                        "weights, unless a --run already is one")
    p.add_argument("--tflite", action="append", default=[],
                   help="an exported .tflite to measure as one more row of the run whose directory holds it "
                        "(of the only run, when there is one)")
    p.add_argument("--limit", type=int, default=300, help="validation images to score (seeded sample; 0 = all)")
    p.add_argument("--calib", type=int, default=200, help="train images for int8 calibration (--run)")
    p.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    p.add_argument("--runs", type=int, default=150, help="timed batch-1 runs per format and thread count")
    p.add_argument("--warmup", type=int, default=10, help="untimed runs before timing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="the Markdown report (default benchmarks/RUNTIMES.md)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--onnx-python", help="a Python with onnxruntime + tf2onnx (default: this one, else "
                                         f"{ONNX_VENV_PYTHON})")
    p.add_argument("--workdir", help="where temporary models go (default: the system temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the converted models and logs")
    p.add_argument("--worker", choices=("keras", "onnx"), help=argparse.SUPPRESS)
    p.add_argument("--with-eval", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.limit < 0 or args.calib < 1:
        p.error("--runs and --calib must be positive, --warmup and --limit not negative")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    from edgecxr.errors import EdgeCXRError
    from edgecxr.io import atomic_write_text, refuse_overwrite

    started = time.perf_counter()
    threads = parse_threads(args.threads)
    try:
        refuse_overwrite(args.out, args.force)
        if not args.random and not args.run and (DEFAULT_RUN / "checkpoints" / "best.weights.h5").is_file():
            args.run = [str(DEFAULT_RUN.relative_to(Path.cwd()) if DEFAULT_RUN.is_relative_to(Path.cwd())
                            else DEFAULT_RUN)]
        log(f"networks: {', '.join(args.run) if args.run else 'random weights (shipped recipe)'}")
        env = environment(argv)
        sections, onnx_info = [], {}
        targets = [(run, False) for run in args.run] or [(None, False)]
        if args.standard and not any(trained_standard(run) for run in args.run):
            log("--standard: no --run is the standard variant; it is measured with random weights")
            targets.append((None, True))
        for run, standard in targets:
            net, rows, info = benchmark_network(args, threads, run, standard)
            sections.append((net, rows))
            onnx_info = onnx_info or info
    except EdgeCXRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    text = render(sections, args, threads, env, onnx_info, time.perf_counter() - started)
    atomic_write_text(args.out, text)
    print(text)
    log(f"wrote {args.out} in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
