"""``edgecxr export``: a run directory to a self-describing ``.tflite`` file, guarded by accuracy.

One call does the whole job a deployment needs:

1. rebuild the run's Keras model from ``config.json`` + ``checkpoints/best.weights.h5``;
2. convert it (:mod:`edgecxr.converter`) in one of four named quantization modes (:data:`MODES`):
   ``none`` (float32), ``float16``, ``dynamic`` (int8 weights) or ``int8`` (full integer,
   calibrated on a class- and source-stratified sample of the *training* split, with
   uint8/int8/float32 I/O);
3. embed the model spec (labels, input size, preprocessing, quantization, guard numbers) in the
   file and in a sidecar JSON, so ``edgecxr predict model.tflite`` needs nothing else; the sidecar
   also holds the training split's fingerprint (:mod:`edgecxr.fingerprint`), so bench and evaluate
   can say when they score training images;
4. **guard accuracy** (:mod:`edgecxr.guard`): run the exported file through the TF-free runtime
   and compare it with the Keras model on the validation split, overall, per class, per source
   and per age group. A drop above ``max_drop`` points fails the export;
5. write the model card ``<stem>.md`` next to ``<stem>.tflite`` and ``<stem>.json``
   (:mod:`edgecxr.card`) and print the next commands to try.

One name per export: ``ExportOptions.stem`` (:mod:`edgecxr.export_options`; e.g.
``edgecxr_int8_uint8io``, ``edgecxr_int8_uint8io_qat``, ``edgecxr_float16``) is the file stem, the
spec's ``name`` (what ``predict``, ``bench`` and the app show) and the card's title; every variant
has its own, so exporting one never overwrites another.

A failed guard does not leave a usable-looking model behind: the file is kept for inspection as
``<name>.guard-failed.tflite`` (never under the real name, which keeps any earlier passing export)
and :class:`~edgecxr.errors.GuardError` names the remedy to try next (:func:`remedy`):
``--keep-float auto`` (:mod:`edgecxr.selective`: the most damaged layers stay float) or
``--qat N`` (:mod:`edgecxr.qat`: quantization-aware fine-tuning).

Speed: standard MobileNetV3's int8 ``HARD_SWISH`` op is not delegated to XNNPACK, which makes a
naive int8 model *slower* than float on x86 (see benchmarks/QUANT_SPEED.md). Full-integer exports
of the standard architecture therefore rebuild the graph with hard-swish written as
``(x / 6) * relu6(x + 3)`` - the same function and the same weights, but ops XNNPACK runs in int8.

TensorFlow, tf_keras and tfmot are imported only inside the functions that convert.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from . import metrics as metrics_mod
from .card import render_model_card
from .converter import (
    check_io_types,
    fold_head_batchnorm,
    load_model,
    make_converter,
    quiet_converter,
    representative_dataset,
    require_tf,
)
from .data import representative_sample  # noqa: F401 - also edgecxr.export's public name
from .delegation import delegation_note
from .errors import DataError, EdgeCXRError, GuardError
from .export_options import DEFAULT_REPRESENTATIVE, MODES, ExportOptions, QuantMode  # noqa: F401 - public here too
from .fingerprint import FINGERPRINT_KEY, fingerprint
from .guard import GuardData, GuardReport, keras_probabilities, load_guard_data, run_guard
from .io import atomic_temp_path, atomic_write_bytes, atomic_write_text, refuse_overwrite
from .qat import quantization_aware
from .selective import selective_int8
from .spec import ModelSpec, embed_spec, sidecar_path
from .tables import counts, mb, pct

# Fewer calibration images than this and int8 activation ranges get noisy (TFLite suggests 100-500).
MIN_REPRESENTATIVE = 100
FAILED_SUFFIX = ".guard-failed"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- results -------------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """What ``export`` wrote and measured."""

    path: Path
    spec: ModelSpec
    guard: GuardReport
    size_bytes: int
    seconds: float
    latency_ms: float | None
    sidecar: Path
    model_card: Path
    run_dir: Path
    data_args: list[str]
    bench_split: str  # the held-out split to benchmark on: test if the run has one, else val
    notes: dict = field(default_factory=dict)

    def summary_line(self) -> str:
        g = self.guard.total
        return (f"exported {self.path} ({mb(self.size_bytes)}, {MODES[self.spec.quantization].label}, "
                f"{self.spec.io_dtype} I/O) in {self.seconds:.1f} s: {self.guard.split} accuracy "
                f"{pct(g.tflite)} (Keras {pct(g.keras)}), top-1 agreement {pct(g.agreement)}")

    @property
    def warning(self) -> str:
        """Empty, or why this model is useless (exported only because of --force)."""
        return metrics_mod.useless_warning(self.notes["useless"]) if self.notes.get("useless") else ""

    def next_commands(self) -> list[str]:
        """Commands to try with the file; none for a useless model (nothing is worth doing with it)."""
        if self.warning:
            return []
        bench = ["edgecxr", "bench", str(self.path), "--data", self.data_args[0]]
        for extra in self.data_args[1:]:
            bench += ["--extra-data", extra]
        bench += ["--splits", str(self.run_dir / "splits.csv"), "--split", self.bench_split, "--threads", "1,2"]
        return [shlex.join(["edgecxr", "predict", "--model", str(self.path)]) + " IMAGE", shlex.join(bench)]


# --- the pipeline ---------------------------------------------------------------------------------


def export(run_dir: str | Path, quant: str | ExportOptions = "int8", *,
           log: Callable[[str], None] | None = None, **options) -> ExportResult:
    """Export a run's best checkpoint as ``RUN_DIR/export/<stem>.tflite`` with ``<stem>.json`` and the
    model card ``<stem>.md`` (``stem``: :attr:`ExportOptions.stem`); return what was written.

    ``quant`` is a mode name (``none``, ``float16``, ``dynamic``, ``int8``) with keyword options
    (see :class:`ExportOptions`), or an ExportOptions. Progress and the guard table go to ``log``
    (stderr by default). Raises OutputExistsError without ``force`` when the export exists, or
    EdgeCXRError when the Keras model is useless on validation (:func:`metrics.useless_reasons`),
    GuardError when the exported model loses more than ``max_drop`` accuracy points, and
    ModelFileError / DataError for a run directory or data it cannot use.
    """
    t0 = time.time()
    log = log or _log
    opts = (quant if isinstance(quant, ExportOptions) else ExportOptions(quantize=quant, **options)).validated()
    run_dir = Path(run_dir)
    out_path = run_dir / "export" / opts.file_name
    refuse_overwrite(out_path, opts.force)
    if (run_dir / "config.json").is_file() and not (run_dir / "splits.csv").is_file():
        raise DataError(f"{run_dir}: no splits.csv; the accuracy guard needs the run's validation split")

    model, cfg = load_model(run_dir)
    guard_data = load_guard_data(run_dir, cfg, opts.data, log)
    # The reference, computed before anything (QAT shares layers with it) can touch the model.
    guard_data.keras_probs = keras_probabilities(model, guard_data.val_images)
    notes: dict = {"quantize": {"mode": opts.quantize, "io": opts.io, "summary": opts.mode.summary}}
    useless = _useless_reasons(guard_data, cfg)
    if useless and not opts.force:
        raise EdgeCXRError(f"{metrics_mod.useless_warning(useless)} (the run's best checkpoint on its validation "
                           "split): not exporting it; retrain (edgecxr data check DATA first), or pass --force to "
                           "export it anyway")
    if useless:
        notes["useless"] = useless  # in the file's spec and on the model card
    convert_model = _graph_for_conversion(model, run_dir, cfg, opts, notes, log)
    tflite = convert(convert_model, cfg, opts, guard_data, notes, log)
    notes["xnnpack"] = delegation_note(tflite)

    spec = _spec(cfg, opts, notes, run_dir)
    candidate = atomic_temp_path(out_path)
    try:
        candidate.write_bytes(embed_spec(tflite, spec))
        guard = run_guard(candidate, guard_data, name=opts.stem, max_drop=opts.max_drop,
                          keras_size_bytes=4 * int(model.count_params()))
        latency = quick_latency(candidate, guard_data.val_images[:1]) if opts.latency else None
    finally:
        candidate.unlink(missing_ok=True)
    log(guard.to_table())

    notes["guard"] = guard.summary()
    spec = replace(spec, notes=dict(spec.notes, guard=notes["guard"], latency_ms_p50_1thread=latency))
    if not guard.passed:
        failed = out_path.with_name(opts.stem + FAILED_SUFFIX + ".tflite")
        _write_model(failed, tflite, replace(spec, name=failed.stem))
        raise GuardError(f"{opts.file_name} lost too much accuracy ({_guard_reason(guard)}); kept for "
                         f"inspection as {failed}; {remedy(opts, cfg, notes)}")

    # hashed from the records that were split (the run's own files, or --data where they moved)
    _write_model(out_path, tflite, spec, fingerprint([r.file for r in guard_data.train_records()]))
    out_path.with_name(opts.stem + FAILED_SUFFIX + ".tflite").unlink(missing_ok=True)
    sidecar_path(out_path.with_name(opts.stem + FAILED_SUFFIX + ".tflite")).unlink(missing_ok=True)
    card = card_path(out_path)
    size = out_path.stat().st_size
    atomic_write_text(card, render_model_card(spec, guard, cfg=cfg, model_file=out_path.name, size_bytes=size,
                                              latency_ms=latency, data_summary=guard_data.summary,
                                              notes=notes))
    return ExportResult(out_path, spec, guard, size, time.time() - t0, latency, sidecar_path(out_path), card,
                        run_dir, guard_data.data_args, "test" if "test" in guard_data.splits else "val", notes)


def card_path(model_path: Path) -> Path:
    """``<stem>.md`` beside ``<stem>.tflite``: one card per export, named like the file it describes."""
    return Path(model_path).with_suffix(".md")


def _useless_reasons(guard_data: GuardData, cfg) -> list[str]:
    """metrics.useless_reasons for the Keras model on the validation split, before any conversion."""
    from .evaluate import score

    return metrics_mod.useless_reasons(score(guard_data.val_records, guard_data.keras_probs, cfg.class_names,
                                             cfg.partial_labels))


def _write_model(path: Path, tflite: bytes, spec: ModelSpec, training_fingerprint: list[str] | None = None) -> None:
    """The model with its spec inside, then the sidecar (the spec plus the training fingerprint,
    see edgecxr.fingerprint for why only there): both atomic."""
    atomic_write_bytes(path, embed_spec(tflite, spec))
    sidecar = json.loads(spec.to_json())
    if training_fingerprint:
        sidecar[FINGERPRINT_KEY] = training_fingerprint
    atomic_write_text(sidecar_path(path), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")


def _spec(cfg, opts: ExportOptions, notes: dict, run_dir: Path) -> ModelSpec:
    from .model import model_spec

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = {"exported": stamp, "run": run_dir.name, "trained_on": cfg.data, **notes}
    return model_spec(cfg, quantization=opts.quantize, io_dtype=opts.io, name=opts.stem,
                      notes=metrics_mod.json_safe(meta))


def _guard_reason(guard: GuardReport) -> str:
    worst = guard.worst_subgroup
    parts = [f"{guard.total.drop:+.1f} points in total"]
    if worst is not None:
        parts.append(f"{worst.drop:+.1f} in {worst.subset}")
    return ", ".join(parts) + f"; allowed {guard.max_drop:g}"


def remedy(opts: ExportOptions, cfg, notes: dict | None = None) -> str:
    """The next thing to try after a failed guard, for this mode and what was already tried.

    On a small validation split one flipped image can be worth more than --max-drop points; no
    remedy can pass such a guard, so that is said first.
    """
    too_few = _one_image_exceeds_max_drop(opts, (notes or {}).get("guard") or {})
    return f"{too_few}; otherwise {_remedy(opts, cfg, notes)}" if too_few else _remedy(opts, cfg, notes)


def _one_image_exceeds_max_drop(opts: ExportOptions, guard: dict) -> str:
    worst = (guard.get("worst_subgroup") or {}).get("subset")
    n = (guard.get("subgroups", {}).get(worst) or {}).get("n") or guard.get("images")
    if not n or 100.0 / n <= opts.max_drop:
        return ""
    return (f"{worst or 'the validation split'} has only {n} images, so one image is {100.0 / n:.1f} "
            f"points, more than --max-drop {opts.max_drop:g}: judge it with a larger --max-drop")


def _remedy(opts: ExportOptions, cfg, notes: dict | None = None) -> str:
    if opts.quantize == "int8":
        tips = []
        if not opts.keep_float:
            tips.append("--keep-float auto (keeps the most damaged layers in float)")
        elif opts.keep_float[0].startswith("auto"):
            kept = len((notes or {}).get("keep_float", {}).get("layers", [])) or 1
            tips.append(f"--keep-float auto:{max(3, 2 * kept)} (keep more layers in float)")
        if not opts.qat_epochs:
            scope = "whole model" if cfg.minimalistic else "head only; the minimalistic model allows whole-model QAT"
            tips.append(f"--qat 3 (quantization-aware fine-tuning, {scope})")
        else:
            tips.append(f"--qat {2 * opts.qat_epochs} (more fine-tuning)")
        if (opts.representative or 200) < 100:
            tips.append(f"--representative 200 (calibrate on more than {opts.representative} images)")
        tips.append("--quantize float16")
        if not cfg.minimalistic:
            # measured: the standard model's int8 was slower than float and lost adult normals
            tips.append("retraining with --minimalistic (its int8 is faster and keeps accuracy: "
                        "benchmarks/RUNTIMES.md)")
        return "try " + ", or ".join(tips)
    if opts.quantize == "dynamic":
        return "try --quantize float16, or --quantize int8 --qat 3"
    if opts.quantize == "float16":
        return "try --quantize none (float32)"
    return ("a float32 export should match Keras: check that --data points at the data the run was "
            "trained on, and report the run if it does")


# --- int8 calibration --------------------------------------------------------------------------


def calibration_images(guard_data: GuardData, n: int, seed: int, log) -> tuple[np.ndarray, dict]:
    """The representative data set for int8: a stratified sample of the training split."""
    train = guard_data.train_records()
    if not train:
        raise DataError("the training split is empty: int8 calibration needs training images")
    picked = [train[i] for i in representative_sample(train, n, seed)]
    images, kept = guard_data.load(picked, log)
    if not kept:
        raise DataError("none of the calibration images could be read")
    by_class = Counter(r.label for r in kept)
    by_source = Counter(r.source for r in kept)
    info = {"images": len(kept), "requested": n, "split": "train", "from": guard_data.source,
            "by_class": dict(by_class), "by_source": dict(by_source)}
    log(f"calibrating int8 on {len(kept)} training images from {guard_data.source}, stratified by class "
        f"and source: {counts(by_class)}; {counts(by_source)}")
    if len(kept) < min(n, MIN_REPRESENTATIVE):
        log(f"warning: only {len(kept)} calibration images (asked for {n}; {MIN_REPRESENTATIVE}-500 is "
            "typical): int8 activation ranges may be off; the accuracy guard below will tell")
    return images, info


# --- conversion ------------------------------------------------------------------------------------


def _graph_for_conversion(model, run_dir: Path, cfg, opts: ExportOptions, notes: dict, log):
    """The Keras graph to convert. Float exports convert the run's model as it is; quantized ones
    convert the same function rearranged for int8: the head's BatchNorm folded through its ReLU
    (:func:`fold_head_batchnorm`) and, for int8 of the standard MobileNetV3, hard-swish spelled
    so XNNPACK runs it (:func:`delegate_friendly_hard_swish`). Checked against the run's model."""
    if opts.quantize in ("none", "float16"):
        return model
    wanted = opts.hard_swish_resolved
    source = model
    if wanted == "relu6" and not cfg.minimalistic:
        source, _ = load_model(run_dir, rewrite_hard_swish=True)
        notes["hard_swish"] = "(x/6)*relu6(x+3): int8 ops XNNPACK delegates (same weights, same function)"
        log("int8 graph: hard-swish written as (x/6)*relu6(x+3) so XNNPACK runs it in int8 "
            "(benchmarks/QUANT_SPEED.md)")
    graph = fold_head_batchnorm(source)
    notes["head_batchnorm"] = "folded through the head's ReLU into its Dense layers (exact)"
    probe = np.random.default_rng(0).uniform(0, 255, (2, cfg.image_size, cfg.image_size, 3)).astype(np.float32)
    diff = float(np.max(np.abs(graph(probe, training=False).numpy() - model(probe, training=False).numpy())))
    if diff > 1e-4:
        raise EdgeCXRError(f"internal: the int8-friendly graph changed the model's output by {diff:.2g}")
    return graph


def convert(model, cfg, opts: ExportOptions, guard_data: GuardData, notes: dict, log) -> bytes:
    """The bare ``.tflite`` flatbuffer for ``opts`` (no spec yet)."""
    tf = require_tf()
    size = cfg.image_size
    if opts.mode.calibrated:
        images, notes["calibration"] = calibration_images(guard_data, opts.representative, cfg.seed, log)
        if opts.qat_epochs:
            model = quantization_aware(model, cfg, guard_data, opts.qat_epochs, notes, log)
        if opts.keep_float:
            return selective_int8(model, size, images, opts, notes, log)
    converter = make_converter(model, size)
    if opts.quantize in ("float16", "dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if opts.quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if opts.quantize == "int8":
        converter.representative_dataset = representative_dataset(images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = getattr(tf, opts.io)
    with quiet_converter():
        tflite = converter.convert()
    check_io_types(tflite, opts.io)
    return tflite


# --- speed facts ------------------------------------------------------------------------------------


def quick_latency(model_path: Path, image: np.ndarray, runs: int = 20) -> float | None:
    """Median milliseconds per image, 1 thread, via the runtime: a model-card figure, not a benchmark."""
    from .runtime import Classifier

    if len(image) == 0:
        return None
    clf = Classifier(model_path, num_threads=1)
    for _ in range(3):
        clf.predict_arrays(image)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        clf.predict_arrays(image)
        times.append((time.perf_counter() - t0) * 1e3)
    return round(float(np.median(times)), 3)
