"""``edgecxr export``: a run directory to a self-describing ``.tflite`` file, guarded by accuracy.

One call does the whole job a deployment needs:

1. rebuild the run's Keras model from ``config.json`` + ``checkpoints/best.weights.h5``;
2. convert it in one of four named quantization modes (:data:`MODES`): ``none`` (float32),
   ``float16``, ``dynamic`` (int8 weights) or ``int8`` (full integer, calibrated on a
   class- and source-stratified sample of the *training* split, with uint8/int8/float32 I/O);
3. embed the model spec (labels, input size, preprocessing, quantization, guard numbers) in the
   file and in a sidecar JSON, so ``edgecxr predict model.tflite`` needs nothing else;
4. **guard accuracy**: run the exported file through the TF-free runtime and the Keras model on
   the validation split and compare accuracy, per-class sensitivity and top-1 agreement overall,
   per class, per source and per age group. A drop above ``max_drop`` points fails the export,
   in total or in any subgroup large enough for one image to move it by at most ``max_drop``;
5. write ``MODEL_CARD.md`` next to the model (it describes the latest successful export in that
   folder; each export rewrites it) and print the next commands to try.

A failed guard does not leave a usable-looking model behind: the file is kept for inspection as
``<name>.guard-failed.tflite`` (never under the real name, which keeps any earlier passing export)
and :class:`~edgecxr.errors.GuardError` names the remedy to try next:

- ``keep_float="auto"`` (``--keep-float auto``): selective quantization. The TFLite
  QuantizationDebugger measures every quantized layer's error (RMSE divided by the quantization
  step); the worst few are kept in float (``denylisted_nodes``), the rest stay int8;
- ``qat_epochs=N`` (``--qat N``): quantization-aware fine-tuning with
  tensorflow-model-optimization, on the training split at a low learning rate. Whole-model where
  tfmot can (the minimalistic MobileNetV3: ReLU only), head-only otherwise (tfmot cannot wrap the
  standard model's hard-swish ``TFOpLambda`` layers).

Speed: standard MobileNetV3's int8 ``HARD_SWISH`` op is not delegated to XNNPACK, which makes a
naive int8 model *slower* than float on x86 (see benchmarks/QUANT_SPEED.md). Full-integer exports
of the standard architecture therefore rebuild the graph with hard-swish written as
``(x / 6) * relu6(x + 3)`` - the same function and the same weights, but ops XNNPACK runs in int8.

TensorFlow, tf_keras and tfmot are imported only inside the functions that convert.
"""

from __future__ import annotations

import contextlib
import csv
import io as io_mod
import math
import os
import shlex
import sys
import time
import warnings
import weakref
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import data as data_mod
from . import metrics as metrics_mod
from .errors import DataError, EdgeCXRError, GuardError, ModelFileError, require
from .io import atomic_temp_path, atomic_write_bytes, atomic_write_text, refuse_overwrite
from .spec import ModelSpec, embed_spec, sidecar_path

DEFAULT_REPRESENTATIVE = 200
# Fewer calibration images than this and int8 activation ranges get noisy (TFLite suggests 100-500).
MIN_REPRESENTATIVE = 100
# Subgroups with fewer labelled validation images are shown but not judged: one flipped image in
# ten is a 10-point "drop" that says nothing about the quantization. See judged_size() too.
MIN_SUBGROUP = 30
AUTO_KEEP_FLOAT = 3
# --keep-float auto keeps layers whose int8 error is at least this many quantization steps (the
# cut-off the TensorFlow QuantizationDebugger guide uses), at most AUTO_KEEP_FLOAT and at least one.
AUTO_THRESHOLD = 0.7
# QAT fine-tunes at this fraction of the run's learning rate: it should nudge weights towards
# int8-friendly values, not retrain the model.
QAT_LR_FACTOR = 0.01
# Below this top-1 agreement with Keras in any subgroup, the guard adds a note even if it passes.
LOW_AGREEMENT = 0.9
# Up to this many QAT steps in all, train eagerly: tracing the fake-quantized step costs more.
EAGER_QAT_STEPS = 30
MODEL_CARD = "MODEL_CARD.md"
FAILED_SUFFIX = ".guard-failed"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- quantization modes and options -------------------------------------------------------------


@dataclass(frozen=True)
class QuantMode:
    """One way to store and run the model. Modes are data: the CLI, file names and checks read them."""

    name: str  # the --quantize value and ModelSpec.quantization
    precision: str  # goes into the file name
    io_types: tuple[str, ...]  # allowed --io values; the first is the default
    calibrated: bool  # needs a representative data set (and allows --keep-float / --qat)
    label: str  # for people: "full-integer int8"
    summary: str


MODES = {
    m.name: m
    for m in (
        QuantMode("none", "float32", ("float32",), False, "float32", "float32 weights and math"),
        QuantMode("float16", "float16", ("float32",), False, "float16", "float16 weights, float32 math"),
        QuantMode("dynamic", "dynamic", ("float32",), False, "dynamic-range int8",
                  "int8 weights, float activations (dynamic-range quantization)"),
        QuantMode("int8", "int8", ("uint8", "int8", "float32"), True, "full-integer int8",
                  "int8 weights and activations, calibrated on training images"),
    )
}


@dataclass
class ExportOptions:
    """What to export and how strictly to check it. ``None`` means "the mode's default"."""

    quantize: str = "int8"
    io: str | None = None  # input/output tensor type; int8 mode only (default uint8)
    force: bool = False
    max_drop: float = 1.0  # accuracy points the export may lose, in total and per subgroup
    representative: int | None = None  # calibration images (int8 only; default 200)
    keep_float: str | Sequence[str] | None = None  # "auto", "auto:K" or layer names (int8 only)
    qat_epochs: int | None = None  # quantization-aware fine-tuning epochs (int8 only)
    data: Sequence[str] = ()  # override the run's data location (first: data, rest: extra data)
    hard_swish: str = "auto"  # auto | keras | relu6: how int8 graphs spell hard-swish
    latency: bool = True  # time the exported model (1 thread) for the model card
    name: str = "edgecxr"

    @classmethod
    def for_float32(cls, **kw) -> "ExportOptions":
        return cls(quantize="none", **kw)

    @classmethod
    def for_float16(cls, **kw) -> "ExportOptions":
        return cls(quantize="float16", **kw)

    @classmethod
    def for_dynamic(cls, **kw) -> "ExportOptions":
        return cls(quantize="dynamic", **kw)

    @classmethod
    def for_int8(cls, io: str = "uint8", representative: int = DEFAULT_REPRESENTATIVE, **kw) -> "ExportOptions":
        return cls(quantize="int8", io=io, representative=representative, **kw)

    @property
    def mode(self) -> QuantMode:
        return MODES[self.quantize]

    @property
    def io_type(self) -> str:
        return self.io or self.mode.io_types[0]

    @property
    def stem(self) -> str:
        """``edgecxr_float32``, ``edgecxr_int8_uint8io``: precision and (for int8) the I/O type."""
        io_part = f"_{self.io_type}io" if self.mode.calibrated else ""
        return f"{self.name}_{self.mode.precision}{io_part}"

    @property
    def file_name(self) -> str:
        return self.stem + ".tflite"

    def validated(self) -> "ExportOptions":
        """Check the combination; flags that do not apply to the mode are rejected by name."""
        if self.quantize not in MODES:
            raise EdgeCXRError(f"unknown --quantize {self.quantize!r}; choose one of {', '.join(MODES)}")
        mode = self.mode
        if self.io is not None and self.io not in mode.io_types:
            if self.io in MODES["int8"].io_types:
                raise EdgeCXRError(
                    f"--io {self.io} applies only to --quantize int8 "
                    f"(a {mode.name} model takes {mode.io_types[0]} input)"
                )
            raise EdgeCXRError(f"unknown --io {self.io!r}; choose uint8, int8 or float32")
        if not mode.calibrated:
            for flag, value in (("--representative", self.representative), ("--keep-float", self.keep_float),
                                ("--qat", self.qat_epochs)):
                if value:
                    raise EdgeCXRError(f"{flag} applies only to --quantize int8, not {mode.name}")
        if self.keep_float and self.qat_epochs:
            raise EdgeCXRError("use --keep-float or --qat, not both: try one remedy at a time")
        if self.representative is not None and self.representative < 1:
            raise EdgeCXRError("--representative must be at least 1")
        if self.qat_epochs is not None and self.qat_epochs < 0:
            raise EdgeCXRError("--qat must be a positive number of epochs")
        if self.hard_swish not in ("auto", "keras", "relu6"):
            raise EdgeCXRError(f"hard_swish must be auto, keras or relu6, not {self.hard_swish!r}")
        if not math.isfinite(self.max_drop):
            raise EdgeCXRError("--max-drop must be a number of accuracy points")
        data = (self.data,) if isinstance(self.data, (str, Path)) else tuple(self.data or ())
        return replace(
            self,
            io=self.io_type,
            representative=(self.representative or DEFAULT_REPRESENTATIVE) if mode.calibrated else None,
            keep_float=_parse_keep_float(self.keep_float),
            qat_epochs=self.qat_epochs or 0,
            data=tuple(str(d) for d in data),
        )


def _parse_keep_float(value) -> tuple[str, ...] | None:
    """``"auto"`` -> ("auto",), ``"auto:5"`` -> ("auto:5",), ``"a,b"`` -> ("a", "b")."""
    if not value:
        return None
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    if not items:
        return None
    if items[0].lower().startswith("auto"):
        _, _, k = items[0].partition(":")
        if len(items) > 1 or (k and not k.isdigit()) or k == "0":
            raise EdgeCXRError(f"--keep-float takes auto, auto:K (K >= 1) or layer names, not {value!r}")
        return (f"auto:{int(k)}",) if k else ("auto",)
    return tuple(items)


# --- results -------------------------------------------------------------------------------------


@dataclass
class GuardRow:
    """One line of the guard table: a subset of the validation images, Keras vs TFLite."""

    subset: str  # "all", "source kermany", "group adult"
    n: int  # images the accuracy is computed on
    keras: float | None  # accuracy (partial labels: correct when called bacterial or viral)
    tflite: float | None
    agreement: float | None  # top-1 agreement between the two models
    sensitivity: dict[str, tuple[float | None, float | None]]  # class -> (Keras, TFLite)
    judged: bool  # counts towards pass/fail (all, or a subgroup of at least judged_size() images)

    @property
    def drop(self) -> float | None:
        """Accuracy lost, in percentage points (negative: the export is more accurate)."""
        if self.keras is None or self.tflite is None:
            return None
        return 100.0 * (self.keras - self.tflite)


@dataclass
class GuardReport:
    """The accuracy guard's verdict and the numbers behind it."""

    model: str
    split: str
    n_images: int
    max_drop: float
    rows: list[GuardRow]
    size_bytes: int
    keras_size_bytes: int
    keras_metrics: dict
    tflite_metrics: dict
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> GuardRow:
        return self.rows[0]

    @property
    def worst_subgroup(self) -> GuardRow | None:
        judged = [r for r in self.rows[1:] if r.judged and r.drop is not None]
        return max(judged, key=lambda r: r.drop) if judged else None

    @property
    def passed(self) -> bool:
        worst = self.worst_subgroup
        return self.total.drop <= self.max_drop and (worst is None or worst.drop <= self.max_drop)

    def verdict(self) -> str:
        worst = self.worst_subgroup
        worst_text = f"worst subgroup {worst.subset} {worst.drop:+.1f}" if worst else "no subgroup large enough to judge"
        word = "passed" if self.passed else "FAILED"
        return (f"guard {word}: accuracy drop {self.total.drop:+.1f} points in total, {worst_text} "
                f"(allowed {self.max_drop:g})")

    def to_table(self) -> str:
        names = list(self.keras_metrics["class_names"])
        header = ["subset", "n", "Keras", "TFLite", "drop", "agree", *(f"sens {c}" for c in names)]
        rows = []
        for r in self.rows:
            sens = [_pair(r.sensitivity.get(c)) for c in names]
            mark = "" if r.judged else " *"
            rows.append([r.subset + mark, str(r.n), _pct(r.keras), _pct(r.tflite),
                         "-" if r.drop is None else f"{r.drop:+.1f}", _pct(r.agreement), *sens])
        lines = [
            f"accuracy guard: {self.model} vs the Keras model on {self.n_images} {self.split} images",
            _text_table(header, rows),
            f"size {_mb(self.size_bytes)} (Keras float32 weights {_mb(self.keras_size_bytes)}); "
            "sens = per-class sensitivity Keras->TFLite %; accuracy counts partial-label images as "
            "correct when called bacterial or viral",
        ]
        if any(not r.judged for r in self.rows):
            lines.append(f"* fewer than {judged_size(self.max_drop)} images (one image would move it by more "
                         "than the allowed drop): shown, not judged")
        lines += [f"note: {n}" for n in self.notes]
        lines.append(self.verdict())
        return "\n".join(lines)

    def summary(self) -> dict:
        worst = self.worst_subgroup
        return metrics_mod.json_safe({
            "split": self.split, "images": self.n_images, "max_drop_points": self.max_drop,
            "passed": self.passed, "keras_accuracy": self.total.keras, "tflite_accuracy": self.total.tflite,
            "drop_points": self.total.drop, "agreement": self.total.agreement,
            "worst_subgroup": None if worst is None else {"subset": worst.subset, "drop_points": worst.drop},
            "subgroups": {r.subset: {"n": r.n, "keras": r.keras, "tflite": r.tflite, "agreement": r.agreement}
                          for r in self.rows[1:]},
        })


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
        return (f"exported {self.path} ({_mb(self.size_bytes)}, {MODES[self.spec.quantization].label}, "
                f"{self.spec.io_dtype} I/O) in {self.seconds:.1f} s: {self.guard.split} accuracy "
                f"{_pct(g.tflite)} (Keras {_pct(g.keras)}), top-1 agreement {_pct(g.agreement)}")

    def next_commands(self) -> list[str]:
        bench = ["edgecxr", "bench", str(self.path), "--data", self.data_args[0]]
        for extra in self.data_args[1:]:
            bench += ["--extra-data", extra]
        bench += ["--splits", str(self.run_dir / "splits.csv"), "--split", self.bench_split, "--threads", "1,2"]
        return [shlex.join(["edgecxr", "predict", "--model", str(self.path)]) + " IMAGE", shlex.join(bench)]


# --- the pipeline ---------------------------------------------------------------------------------


def export(run_dir: str | Path, quant: str | ExportOptions = "int8", *,
           log: Callable[[str], None] | None = None, **options) -> ExportResult:
    """Export a run's best checkpoint as ``RUN_DIR/export/<name>.tflite``; return what was written.

    ``quant`` is a mode name (``none``, ``float16``, ``dynamic``, ``int8``) with keyword options
    (see :class:`ExportOptions`), or an ExportOptions. Progress and the guard table go to ``log``
    (stderr by default). Raises OutputExistsError without ``force`` when the export exists,
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
    guard_data = load_guard_data(run_dir, cfg, opts, log)
    # The reference, computed before anything (QAT shares layers with it) can touch the model.
    guard_data.keras_probs = keras_probabilities(model, guard_data.val_images)
    notes: dict = {"quantize": {"mode": opts.quantize, "io": opts.io, "summary": opts.mode.summary}}
    convert_model = _graph_for_conversion(model, run_dir, cfg, opts, notes, log)
    tflite = convert(convert_model, cfg, opts, guard_data, notes, log)
    notes["xnnpack"] = _delegation_note(tflite)

    spec = _spec(cfg, opts, notes, run_dir)
    candidate = atomic_temp_path(out_path)
    try:
        candidate.write_bytes(embed_spec(tflite, spec))
        guard = run_guard(candidate, guard_data, opts, keras_size_bytes=4 * int(model.count_params()))
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

    _write_model(out_path, tflite, spec)
    out_path.with_name(opts.stem + FAILED_SUFFIX + ".tflite").unlink(missing_ok=True)
    sidecar_path(out_path.with_name(opts.stem + FAILED_SUFFIX + ".tflite")).unlink(missing_ok=True)
    card = out_path.parent / MODEL_CARD
    size = out_path.stat().st_size
    atomic_write_text(card, render_model_card(spec, guard, cfg=cfg, model_file=out_path.name, size_bytes=size,
                                              latency_ms=latency, data_summary=guard_data.summary,
                                              notes=notes))
    return ExportResult(out_path, spec, guard, size, time.time() - t0, latency, sidecar_path(out_path), card,
                        run_dir, guard_data.data_args, "test" if "test" in guard_data.splits else "val", notes)


def _write_model(path: Path, tflite: bytes, spec: ModelSpec) -> None:
    """The model with its spec inside, then the sidecar: both atomic."""
    atomic_write_bytes(path, embed_spec(tflite, spec))
    atomic_write_text(sidecar_path(path), spec.to_json() + "\n")


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
    """The next thing to try after a failed guard, for this mode and what was already tried."""
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


# --- data for calibration, QAT and the guard -------------------------------------------------------


@dataclass
class GuardData:
    """The run's records and splits, with the validation images loaded (uint8, as deployed)."""

    records: list
    splits: list[str]
    val_images: np.ndarray
    val_records: list
    image_size: int
    equalize: bool
    source: str  # where the records came from, for messages
    data_args: list[str]  # --data/--extra-data values that reproduce them
    summary: dict  # counts per split x class and split x source, for the model card
    keras_probs: np.ndarray | None = None  # the Keras model's val predictions: the guard's reference

    def train_records(self) -> list:
        return [r for r, s in zip(self.records, self.splits) if s == "train"]

    def load(self, records, log) -> tuple[np.ndarray, list]:
        def skipped(path, message):
            log(f"skipped unreadable image: {message}")

        return data_mod.load_split_arrays(records, ["x"] * len(records), "x", self.image_size,
                                          on_error=skipped, equalize=self.equalize)


def load_guard_data(run_dir: Path, cfg, opts: ExportOptions, log) -> GuardData:
    """Records and splits from ``RUN_DIR/splits.csv`` (the run's own list of files, labels and
    sources), or ``opts.data`` matched against it when the data has moved; val images loaded."""
    splits_csv = run_dir / "splits.csv"
    if not splits_csv.is_file():
        raise DataError(f"{run_dir}: no splits.csv; the accuracy guard needs the run's validation split")
    notes: list[str] = []
    if opts.data:
        records = data_mod.load_records(opts.data[0], opts.data[1:], notes=notes)
        source, data_args = ", ".join(opts.data), list(opts.data)
    else:
        records = data_mod.load_records(splits_csv, notes=notes)
        source, data_args = str(splits_csv), [cfg.data or str(splits_csv), *cfg.extra_data]
    try:
        splits = data_mod.load_splits(splits_csv, records)
    except DataError as exc:
        raise DataError(f"{exc}; pass --data with the data the run was trained on") from None
    for note in notes:
        log(f"note: {note}")
    val = [r for r, s in zip(records, splits) if s == "val"]
    if not val:
        raise DataError(f"{splits_csv}: the validation split is empty; the accuracy guard needs it")
    guard = GuardData(records, splits, np.zeros((0,)), [], cfg.image_size, bool(getattr(cfg, "equalize", False)),
                      source, data_args, _split_summary(records, splits))
    guard.val_images, guard.val_records = guard.load(val, log)
    if not guard.val_records:
        raise DataError(f"none of the {len(val)} validation images in {splits_csv} could be read")
    return guard


def _split_summary(records, splits) -> dict:
    by_class: dict = defaultdict(Counter)
    by_source: dict = defaultdict(Counter)
    for rec, split in zip(records, splits):
        by_class[split][rec.label] += 1
        by_source[split][f"{rec.source} ({rec.group})"] += 1
    return {"by_class": {s: dict(c) for s, c in by_class.items()},
            "by_source": {s: dict(c) for s, c in by_source.items()}}


def representative_sample(records: Sequence, n: int, seed: int = 0) -> list[int]:
    """Indices of up to ``n`` records drawn evenly across (label, source) strata.

    Round-robin over the strata rather than proportional: int8 ranges are set by what the
    calibration images contain, so a rare stratum (adult COVID-19 films from one hospital) needs
    to be present even if it is 2% of the training split.
    """
    rng = np.random.default_rng(seed)
    strata: dict = defaultdict(list)
    for i, rec in enumerate(records):
        strata[(rec.label, rec.source)].append(i)
    queues = [list(rng.permutation(strata[key])) for key in sorted(strata)]
    chosen: list[int] = []
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(int(queue.pop()))
    return sorted(chosen)


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
        f"and source: {_counts(by_class)}; {_counts(by_source)}")
    if len(kept) < min(n, MIN_REPRESENTATIVE):
        log(f"warning: only {len(kept)} calibration images (asked for {n}; {MIN_REPRESENTATIVE}-500 is "
            "typical): int8 activation ranges may be off; the accuracy guard below will tell")
    return images, info


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items()))


# --- conversion ------------------------------------------------------------------------------------


def _tf():
    tf = require("tensorflow", "train")
    require("tf_keras", "train")
    return tf


_MODEL_CACHE: dict = {}
_MODEL_CACHE_SIZE = 4


def load_model(run_dir: Path, rewrite_hard_swish: bool = False):
    """``model.load_run_model``, remembered for the process while the checkpoint is unchanged.

    Building tf_keras MobileNetV3 takes seconds; exporting several modes of one run in one process
    (tests, notebooks, a script exporting every mode) builds it once. Nothing in this module
    changes a loaded model's weights (QAT trains a clone), so sharing it is safe.
    """
    from .model import load_run_model

    ckpt = Path(run_dir) / "checkpoints" / "best.weights.h5"
    config = Path(run_dir) / "config.json"
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None for p in (ckpt, config))
    key = (str(Path(run_dir).resolve()), stamp, rewrite_hard_swish)
    if key not in _MODEL_CACHE:
        with delegate_friendly_hard_swish() if rewrite_hard_swish else contextlib.nullcontext():
            loaded = load_run_model(run_dir)
        while len(_MODEL_CACHE) >= _MODEL_CACHE_SIZE:
            _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
        _MODEL_CACHE[key] = loaded
    return _MODEL_CACHE[key]


def _graph_for_conversion(model, run_dir: Path, cfg, opts: ExportOptions, notes: dict, log):
    """The Keras graph to convert. Float exports convert the run's model as it is; quantized ones
    convert the same function rearranged for int8: the head's BatchNorm folded through its ReLU
    (:func:`fold_head_batchnorm`) and, for int8 of the standard MobileNetV3, hard-swish spelled
    so XNNPACK runs it (:func:`delegate_friendly_hard_swish`). Checked against the run's model."""
    if opts.quantize in ("none", "float16"):
        return model
    wanted = opts.hard_swish
    if wanted == "auto":
        wanted = "relu6" if opts.quantize == "int8" else "keras"
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


@contextlib.contextmanager
def delegate_friendly_hard_swish():
    """Build tf_keras MobileNetV3 with hard-swish as ``(x / 6) * relu6(x + 3)`` inside this block.

    Keras writes ``x * relu6(x + 3) / 6``, which the TFLite converter fuses into one HARD_SWISH op;
    XNNPACK has no int8 kernel for it, so every block falls back to the slow reference kernel and
    splits the graph into ~19 partitions. Scaling x first keeps the converter from fusing, and the
    ADD/RELU6/MUL it leaves are all delegated in int8. No weights are involved, so a checkpoint
    trained with either form loads into the other.
    """
    keras = require("tf_keras", "train")
    try:
        from tf_keras.src.applications import mobilenet_v3 as mnv3
    except ImportError:  # pragma: no cover - tf_keras moved its internals
        raise EdgeCXRError("this tf_keras version hides MobileNetV3's hard_swish; export with hard_swish='keras'") from None

    def hard_swish(x):
        return keras.layers.Multiply()([x * (1.0 / 6.0), keras.layers.ReLU(6.0)(x + 3.0)])

    original = mnv3.hard_swish
    mnv3.hard_swish = hard_swish
    try:
        yield
    finally:
        mnv3.hard_swish = original


def _serving_function(model, size: int):
    tf = _tf()
    return tf.function(lambda x: model(x, training=False),
                       input_signature=[tf.TensorSpec((1, size, size, 3), tf.float32, name="image")])


_SERVING: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def make_converter(model, size: int):
    """A TFLiteConverter for one image at a time (batch 1: what phones and the Pi run).

    Converting the concrete function with the tf.function as its trackable object skips the
    SavedModel round trip ``from_keras_model`` makes: ~2 s instead of ~20 s for tf_keras MobileNetV3.
    """
    tf = _tf()
    if model not in _SERVING:  # tracing MobileNetV3 takes seconds; one trace per model and size
        _SERVING[model] = {}
    if size not in _SERVING[model]:
        serve = _serving_function(model, size)
        _SERVING[model][size] = (serve, serve.get_concrete_function())
    serve, concrete = _SERVING[model][size]
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], serve)


@contextlib.contextmanager
def _quiet_converter():
    """Silence two TensorFlow warnings that say nothing about this model (locally, not globally)."""
    with warnings.catch_warnings():
        # Emitted for every int8 conversion; the representative data set supplies the statistics.
        warnings.filterwarnings("ignore", "Statistics for quantized inputs", UserWarning)
        # The QuantizationDebugger uses tf.lite.Interpreter internally; nothing to act on here.
        warnings.filterwarnings("ignore", ".*tf.lite.Interpreter is deprecated", UserWarning)
        yield


def _representative(images: np.ndarray):
    def generate():
        for img in images:
            yield [img[None].astype(np.float32)]

    return generate


def convert(model, cfg, opts: ExportOptions, guard_data: GuardData, notes: dict, log) -> bytes:
    """The bare ``.tflite`` flatbuffer for ``opts`` (no spec yet)."""
    tf = _tf()
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
        converter.representative_dataset = _representative(images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = getattr(tf, opts.io)
    with _quiet_converter():
        tflite = converter.convert()
    _check_io_types(tflite, opts.io)
    return tflite


def _check_io_types(tflite: bytes, io: str) -> None:
    from .runtime import interpreter_backend

    interpreter_cls, _, _ = interpreter_backend()
    interp = interpreter_cls(model_content=tflite)
    got = {np.dtype(d["dtype"]).name for d in (*interp.get_input_details(), *interp.get_output_details())}
    if got != {io}:
        raise EdgeCXRError(f"internal: asked for {io} input/output, the converter produced {sorted(got)}")


# --- remedy (a): selective quantization ---------------------------------------------------------------


@dataclass
class LayerError:
    """One quantized layer's error as the QuantizationDebugger measured it."""

    name: str  # the tensor name denylisted_nodes expects
    op: str
    rmse_per_scale: float  # RMSE between float and int8 output, in quantization steps
    tensor: int  # index of the layer's quantized output in the debug model

    @property
    def short(self) -> str:
        """``expanded_conv_4/squeeze_excite/Relu/Relu``: the first of the fused op names, without
        the model's name scopes (``edgecxr_mnv3small/MobilenetV3small/``)."""
        first = self.name.split(";")[0]
        parts = first.split("/")
        while len(parts) > 2 and (parts[0].startswith("edgecxr_") or parts[0].lower().startswith("mobilenetv3")):
            parts = parts[1:]
        return "/".join(parts)


def selective_int8(model, size: int, images: np.ndarray, opts: ExportOptions, notes: dict, log) -> bytes:
    """Full-integer int8 except the layers named in ``opts.keep_float`` (or the worst ``auto:K``).

    The debugger quantizes the calibrated model with NumericVerify ops, runs the representative
    images through it and reports each layer's error; RMSE / scale (error in quantization steps)
    ranks layers fairly whatever their range. Denylisted layers run in float between a dequantize
    and a quantize; the rest stay int8.
    """
    tf = _tf()
    from tensorflow.lite.python import util as lite_util  # modify_model_io_type: what the converter uses

    converter = make_converter(model, size)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with _quiet_converter():
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=_representative(images),
            debug_options=tf.lite.experimental.QuantizationDebugOptions())
        debugger.run()
        layers = _layer_errors(debugger)
        edges = _io_layers(debugger, layers) if opts.io != "float32" else set()
        chosen = _choose_layers(layers, opts.keep_float, edges, opts.io)
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=[l.name for l in chosen])
        tflite = debugger.get_nondebug_quantized_model()
    io_type = getattr(tf, opts.io)
    tflite = lite_util.modify_model_io_type(tflite, io_type, io_type)
    try:
        _check_io_types(tflite, opts.io)
    except EdgeCXRError:
        raise EdgeCXRError(f"keeping {', '.join(l.short for l in chosen)} in float leaves the model with float "
                           f"input or output; add --io float32 or leave out the first and last layer") from None
    ranking = sorted(layers, key=lambda l: -l.rmse_per_scale)
    log("int8 layer errors (RMSE in quantization steps), worst first: "
        + ", ".join(f"{l.short} {l.rmse_per_scale:.2f}" for l in ranking[:8]))
    log(f"kept in float ({len(chosen)}): " + ", ".join(f"{l.short} ({l.op}, {l.rmse_per_scale:.2f})" for l in chosen))
    notes["keep_float"] = {
        "asked": list(opts.keep_float),
        "layers": [{"name": l.short, "tensor": l.name, "op": l.op, "rmse_per_scale": round(l.rmse_per_scale, 4)}
                   for l in chosen],
        "quantized_layers": len(layers),
    }
    return tflite


def _layer_errors(debugger) -> list[LayerError]:
    buf = io_mod.StringIO()
    debugger.layer_statistics_dump(buf)
    out = []
    for row in csv.DictReader(io_mod.StringIO(buf.getvalue())):
        scale = float(row["scale"])
        rmse = math.sqrt(max(float(row["mean_squared_error"]), 0.0))
        out.append(LayerError(row["tensor_name"], row["op_name"], rmse / scale if scale > 0 else 0.0,
                              int(row["tensor_idx"])))
    if not out:
        raise EdgeCXRError("internal: the quantization debugger found no quantized layers")
    return out


def _io_layers(debugger, layers: list[LayerError]) -> set[str]:
    """Names of the layers that read the model input or write its output.

    Keeping one of them in float would leave a float input or output, which an integer-I/O model
    cannot have, so ``auto`` skips them. Found in the debug model (the one the statistics came
    from): the layer fed by the input QUANTIZE, and the layer feeding the output DEQUANTIZE.
    """
    from .runtime import interpreter_backend

    interpreter_cls, _, _ = interpreter_backend()
    interp = interpreter_cls(model_content=debugger.get_debug_quantized_model())
    ops = interp._get_ops_details()  # private but stable; the runtime uses it too
    graph_in = {d["index"] for d in interp.get_input_details()}
    graph_out = {d["index"] for d in interp.get_output_details()}
    quantized_in = {t for op in ops if op["op_name"] == "QUANTIZE" and set(op["inputs"]) & graph_in
                    for t in op["outputs"]}
    to_output = {t for op in ops if op["op_name"] == "DEQUANTIZE" and set(op["outputs"]) & graph_out
                 for t in op["inputs"]}
    producer = {t: op for op in ops for t in op["outputs"]}
    edges = set()
    for layer in layers:
        op = producer.get(layer.tensor)
        if layer.tensor in to_output or (op is not None and set(op["inputs"]) & quantized_in):
            edges.add(layer.name)
    return edges


def _choose_layers(layers: list[LayerError], keep: tuple[str, ...], edges: set[str], io: str) -> list[LayerError]:
    if keep[0].startswith("auto"):
        ranked = sorted((l for l in layers if l.name not in edges), key=lambda l: -l.rmse_per_scale)
        if ":" in keep[0]:
            return ranked[:int(keep[0].split(":")[1])]
        bad = [l for l in ranked if l.rmse_per_scale >= AUTO_THRESHOLD][:AUTO_KEEP_FLOAT]
        return bad or ranked[:1]
    chosen = []
    for wanted in keep:
        hits = ([l for l in layers if wanted in (l.name, l.short)]
                or [l for l in layers if wanted in l.short] or [l for l in layers if wanted in l.name])
        if not hits:
            sample = ", ".join(l.short for l in sorted(layers, key=lambda l: -l.rmse_per_scale)[:3])
            raise EdgeCXRError(f"--keep-float: no quantized layer matches {wanted!r} (the worst are: {sample}; "
                               "--keep-float auto picks them for you)")
        chosen += [l for l in hits if l not in chosen]
    return chosen


# --- remedy (b): quantization-aware training ------------------------------------------------------------


def quantization_aware(model, cfg, guard_data: GuardData, epochs: int, notes: dict, log):
    """Fine-tune a fake-quantized copy of the model on the training split; return it for conversion.

    ``model`` is the flat graph from :func:`_graph_for_conversion` (tfmot needs it flat, without
    the head's BatchNorm). Whole-model QAT if tfmot supports every layer, else head-only QAT with
    the backbone frozen (nothing in it is fake-quantized, so training it would not help).

    The targets are the float model's own probabilities (distillation), not the labels: the point
    is an int8 model that behaves like the validated float model, which is what the guard checks,
    not a retrained one (label targets pulled the shipped run's int8 copy away from it, e.g.
    COVID-19 sensitivity 94 -> 87 % after 3 epochs). Partial labels need no special case either.
    """
    tfmot = require("tensorflow_model_optimization", "train")
    keras = require("tf_keras", "train")
    flat = model
    unsupported = _unsupported_layers(flat, tfmot, keras)
    if unsupported:
        reason = f"tfmot cannot quantize {_counts(unsupported)}"
        (qat, frozen), scope = _quantize_head(flat, tfmot, keras), "head-only"
    else:
        qat, scope, reason, frozen = _quantize_whole(flat, tfmot, keras), "whole-model", "", []
    frozen += _hold_still(qat, keras)
    train, kept = guard_data.load(guard_data.train_records(), log)
    if not kept:
        raise DataError("the training split has no readable images for --qat")
    targets = keras_probabilities(flat, train)  # the float model's answers, before any fine-tuning
    weights = _balancing_weights([r.label for r in kept])
    lr = cfg.learning_rate * QAT_LR_FACTOR
    steps = math.ceil(len(kept) / cfg.batch_size)
    # Tracing a fake-quantized train step costs tens of seconds; a handful of steps run faster eagerly.
    eager = steps * epochs <= EAGER_QAT_STEPS
    log(f"quantization-aware training ({scope}{': ' + reason if reason else ''}): {epochs} epoch(s) on "
        f"{len(kept)} training images, learning rate {lr:g}, targets = the float model's probabilities")
    t0 = time.time()
    with _frozen(frozen):  # frozen backbone: no fake-quant there to adapt to; BatchNorm in inference mode
        qat.compile(keras.optimizers.Adam(lr), keras.losses.CategoricalCrossentropy(), metrics=["accuracy"],
                    run_eagerly=eager)
        history = qat.fit(_batches(train, targets, weights, cfg.batch_size, cfg.seed), steps_per_epoch=steps,
                          epochs=epochs, verbose=0)
    loss = history.history.get("loss", [None])[-1]
    notes["qat"] = {"epochs": epochs, "scope": scope, "why": reason or "tfmot supports every layer",
                    "targets": "float model's probabilities (distillation)",
                    "learning_rate": lr, "train_images": len(kept), "final_loss": loss,
                    "seconds": round(time.time() - t0, 1)}
    return qat


def _hold_still(qat, keras) -> list:
    """Switch off what makes fine-tuning drift from the float model: Dropout (rate 0) and
    BatchNorm statistics (frozen layers run in inference mode, keeping the float model's moving
    averages). Returns the BatchNorm layers for :func:`_frozen`; only weights adapt to int8."""
    batchnorms = []
    for layer in qat.layers:
        inner = getattr(layer, "layer", layer)  # tfmot's QuantizeWrapperV2 holds the real layer
        if isinstance(inner, keras.layers.Dropout):
            inner.rate = 0.0
        elif isinstance(inner, keras.layers.BatchNormalization) and inner.trainable:
            batchnorms.append(inner)
    return batchnorms


@contextlib.contextmanager
def _frozen(layers):
    """Set ``trainable = False`` on layers for the duration of the block."""
    for layer in layers:
        layer.trainable = False
    try:
        yield
    finally:
        for layer in layers:
            layer.trainable = True


def _batches(images: np.ndarray, targets: np.ndarray, weights: np.ndarray, batch: int, seed: int):
    """Shuffled float32 batches made on the fly: the uint8 split stays the only full copy in memory."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(images))
        for i in range(0, len(order), batch):
            idx = np.sort(order[i:i + batch])
            yield images[idx].astype(np.float32), targets[idx], weights[idx]


def _balancing_weights(labels: list[str]) -> np.ndarray:
    """Per-image weights so every label weighs the same in total, like training's oversampling."""
    counts = Counter(labels)
    w = np.array([len(labels) / (len(counts) * counts[lab]) for lab in labels], np.float32)
    return w


def fold_head_batchnorm(model):
    """The model as one flat graph with the head's BatchNorm folded away: exact at inference.

    The preprint head is Dense(relu) -> BatchNorm -> Dropout -> Dense. Folding the BatchNorm into
    the *last* Dense (W' = s * W) gives that layer input rows scaled by 1/sqrt(variance) - ranges
    spanning orders of magnitude within one output channel, which int8's per-output-channel
    weight scales cannot hold (the QuantizationDebugger measured 12.8 quantization steps of error
    there on the shipped run, ~0.3 everywhere else). So the scale goes *through* the ReLU instead,
    since relu(z) * |s| = relu(z * |s|): |s| into the first Dense (per output channel, which int8
    scales per channel anyway), its sign and the shift t into the last Dense (W' = sign(s) * W,
    b' = t @ W + b). A BatchNorm not after a ReLU Dense is folded into the next Dense.

    The backbone's layers are shared with ``model`` (not called again); head layers are copies.
    tfmot needs this flat layout too, and cannot quantize a BatchNorm after a Dense layer.
    """
    keras = require("tf_keras", "train")
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ModelFileError("expected the edgecxr model layout (one backbone model and a head)")
    backbone = nested[0]
    x = backbone.output
    last_dense, previous, pending = None, None, None  # pending: (input scale, shift) for the next Dense
    for layer in model.layers[model.layers.index(backbone) + 1:]:
        if isinstance(layer, keras.layers.BatchNormalization):
            scale, shift = _batchnorm_affine(layer)
            if previous is last_dense and last_dense is not None and _is_relu(last_dense.activation):
                kernel, bias = last_dense.get_weights()
                last_dense.set_weights([kernel * np.abs(scale), bias * np.abs(scale)])
                scale = np.sign(scale)
            pending = (scale, shift)
            previous = layer
            continue
        if isinstance(layer, keras.layers.Dense):
            kernel, bias = layer.get_weights() if layer.use_bias else (layer.get_weights()[0], 0.0)
            if pending is not None:
                scale, shift = pending
                kernel, bias, pending = scale[:, None] * kernel, shift @ kernel + bias, None
            new = keras.layers.Dense(layer.units, activation=layer.activation, name=layer.name)
            x = new(x)
            new.set_weights([kernel, np.broadcast_to(bias, (layer.units,)).astype(np.float32)])
            last_dense = previous = new
            continue
        if pending is not None and not isinstance(layer, keras.layers.Dropout):
            raise ModelFileError(f"cannot fold the head's BatchNorm past a {type(layer).__name__} layer")
        new = type(layer).from_config(layer.get_config())  # a copy: QAT may change it (Dropout rate)
        x = new(x)
        if layer.weights:
            new.set_weights(layer.get_weights())
        previous = new if not isinstance(layer, keras.layers.Dropout) else previous
    if pending is not None:
        raise ModelFileError("the head ends in a BatchNorm layer; nothing to fold it into")
    return keras.Model(backbone.input, x, name=model.name + "_folded")


def _batchnorm_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """BN(x) = x * s + t at inference."""
    gamma = bn.gamma.numpy() if bn.scale else 1.0
    beta = bn.beta.numpy() if bn.center else 0.0
    s = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    return s.astype(np.float32), (beta - bn.moving_mean.numpy() * s).astype(np.float32)


def _is_relu(activation) -> bool:
    return getattr(activation, "__name__", "") == "relu"


def _unsupported_layers(flat, tfmot, keras) -> Counter:
    """Layer types tfmot's default 8-bit scheme cannot wrap (standard MobileNetV3: the TFOpLambda
    and Multiply layers of hard-swish and squeeze-excite). BatchNormalization is folded into the
    convolution before it, and Rescaling gets an output-only config, so neither counts."""
    registry = tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme().get_quantize_registry()
    handled = (keras.layers.InputLayer, keras.layers.Rescaling, keras.layers.BatchNormalization)
    return Counter(type(layer).__name__ for layer in flat.layers
                   if not isinstance(layer, handled) and not registry.supports(layer))


_OUTPUT_ONLY_CONFIG = None


def _output_only_config(tfmot):
    """A QuantizeConfig that fake-quantizes only a layer's output (for weightless Rescaling).

    Made once per process, with its methods kept out of AutoGraph: they hold no tensor logic, and
    AutoGraph would re-read their source from the file on disk when training is traced.
    """
    global _OUTPUT_ONLY_CONFIG
    if _OUTPUT_ONLY_CONFIG is not None:
        return _OUTPUT_ONLY_CONFIG
    tf = _tf()
    plain = tf.autograph.experimental.do_not_convert

    class OutputOnlyQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
        @plain
        def get_weights_and_quantizers(self, layer):
            return []

        @plain
        def get_activations_and_quantizers(self, layer):
            return []

        @plain
        def set_quantize_weights(self, layer, quantize_weights):
            pass

        @plain
        def set_quantize_activations(self, layer, quantize_activations):
            pass

        @plain
        def get_output_quantizers(self, layer):
            return [tfmot.quantization.keras.quantizers.MovingAverageQuantizer(
                num_bits=8, per_axis=False, symmetric=False, narrow_range=False)]

        def get_config(self):
            return {}

    _OUTPUT_ONLY_CONFIG = OutputOnlyQuantizeConfig
    return OutputOnlyQuantizeConfig


def _quantize_whole(flat, tfmot, keras):
    """Fake-quantize every layer; raises (RuntimeError) when tfmot meets a layer it cannot wrap."""
    config_cls = _output_only_config(tfmot)
    annotate = tfmot.quantization.keras.quantize_annotate_layer

    def annotate_layer(layer):
        if isinstance(layer, keras.layers.InputLayer):
            return layer
        if isinstance(layer, keras.layers.Rescaling):
            return annotate(layer, quantize_config=config_cls())
        return annotate(layer)

    annotated = keras.models.clone_model(flat, clone_function=annotate_layer)
    annotated.set_weights(flat.get_weights())
    with tfmot.quantization.keras.quantize_scope({"OutputOnlyQuantizeConfig": config_cls}):
        return tfmot.quantization.keras.quantize_apply(annotated)


def _quantize_head(flat, tfmot, keras):
    """Fake-quantize only the head's Dense layers; freeze everything else."""
    annotate = tfmot.quantization.keras.quantize_annotate_layer
    first_head = max(i for i, layer in enumerate(flat.layers) if not isinstance(
        layer, (keras.layers.Dense, keras.layers.Dropout, keras.layers.BatchNormalization))) + 1
    head = {layer.name for layer in flat.layers[first_head:] if isinstance(layer, keras.layers.Dense)}

    def annotate_layer(layer):
        # The other layers are shared with the run's model (copies of MobileNetV3's TFOpLambda
        # layers break tfmot's own re-cloning), so they are frozen only while QAT trains.
        return annotate(layer) if layer.name in head else layer

    annotated = keras.models.clone_model(flat, clone_function=annotate_layer)
    qat = tfmot.quantization.keras.quantize_apply(annotated)
    frozen = [layer for layer in qat.layers if layer.trainable and layer.weights
              and not isinstance(layer, tfmot.quantization.keras.QuantizeWrapperV2)
              and not layer.name.startswith("quantize")]
    return qat, frozen


# --- the accuracy guard -------------------------------------------------------------------------------


def keras_probabilities(model, images: np.ndarray, batch: int = 32) -> np.ndarray:
    """Keras predictions in eager batches: no tf.function tracing for a few hundred images."""
    out = [model(images[i:i + batch].astype(np.float32), training=False).numpy()
           for i in range(0, len(images), batch)]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def run_guard(tflite_path: Path, guard_data: GuardData, opts: ExportOptions, keras_size_bytes: int) -> GuardReport:
    """Compare the exported file, run by the TF-free runtime exactly as it will be deployed, with
    the Keras model's predictions (``guard_data.keras_probs``) on the validation split."""
    from .runtime import Classifier

    clf = Classifier(tflite_path, num_threads=min(4, os.cpu_count() or 1))
    p_tflite = clf.predict_arrays(guard_data.val_images)
    return guard_report(guard_data.keras_probs, p_tflite, guard_data.val_records, list(clf.spec.class_names),
                        model=opts.file_name, max_drop=opts.max_drop,
                        size_bytes=tflite_path.stat().st_size, keras_size_bytes=keras_size_bytes)


def guard_report(p_keras, p_tflite, records, class_names, *, model: str, max_drop: float,
                 size_bytes: int, keras_size_bytes: int, split: str = "val") -> GuardReport:
    """Score both sets of probabilities with edgecxr.metrics and lay out the guard's rows."""
    index = {c: i for i, c in enumerate(class_names)}
    y = np.array([index.get(r.label, -1) for r in records], dtype=np.int64)
    sources = [r.source for r in records]
    groups = [r.group for r in records]
    partial = [r.label for r in records]

    def score(p):
        return metrics_mod.evaluate_predictions(y, p, class_names, sources=sources, groups=groups,
                                                partial_labels=partial)

    mk, mt = score(p_keras), score(p_tflite)
    agree_source = metrics_mod.agreement(p_keras, p_tflite, groups=sources)
    agree_group = metrics_mod.agreement(p_keras, p_tflite, groups=groups)
    total_sens = {c: (mk["per_class"][c]["sensitivity"]["value"], mt["per_class"][c]["sensitivity"]["value"])
                  for c in class_names}
    k_ok, n = _label_consistent(mk["accuracy"], mk["partial_labels"])
    t_ok, _ = _label_consistent(mt["accuracy"], mt["partial_labels"])
    if n == 0:
        raise DataError("no validation image has a usable label: the accuracy guard has nothing to compare")
    rows = [GuardRow("all", n, k_ok / n, t_ok / n, agree_source["agreement"]["value"], total_sens, True)]
    # A class is a subgroup too: its accuracy is its sensitivity. Naive int8 can trade one class's
    # sensitivity for another's and leave the total accuracy unchanged.
    agree_label = metrics_mod.agreement(p_keras, p_tflite, groups=partial)
    for c in class_names:
        k, t = total_sens[c]
        support = mk["per_class"][c]["support"]
        if support:
            rows.append(GuardRow(f"class {c}", support, k, t, agree_label["by_group"][c]["value"], {},
                                 support >= judged_size(max_drop)))
    for key, title, agree in (("by_source", "source", agree_source), ("by_group", "group", agree_group)):
        for value, kb in mk[key].items():
            tb = mt[key][value]
            k_ok, n_sub = _label_consistent(kb["accuracy"], kb["partial_labels"])
            t_ok, _ = _label_consistent(tb["accuracy"], tb["partial_labels"])
            sens = {c: (kb["sensitivity"][c]["value"], tb["sensitivity"][c]["value"])
                    for c in class_names if c in kb["sensitivity"]}
            rows.append(GuardRow(f"{title} {value}", n_sub, k_ok / n_sub if n_sub else None,
                                 t_ok / n_sub if n_sub else None, agree["by_group"][value]["value"], sens,
                                 n_sub >= judged_size(max_drop)))
    notes = [f"TFLite agrees with Keras on only {_pct(r.agreement)} of {r.subset} images"
             for r in rows if r.agreement is not None and r.agreement < LOW_AGREEMENT and r.n >= MIN_SUBGROUP]
    return GuardReport(model, split, len(records), max_drop, rows, size_bytes, keras_size_bytes, mk, mt, notes)


def judged_size(max_drop: float) -> int:
    """Images a subgroup needs before its drop can fail the export.

    At least MIN_SUBGROUP, and enough that one image is worth no more than ``max_drop`` points:
    with the default 1 point, a subgroup of 62 COVID-19 films would fail a float16 export that
    changed a single answer (measured on the shipped run: 99.8 % agreement, "drop" 1.6 points).
    """
    if max_drop <= 0:
        return MIN_SUBGROUP
    return max(MIN_SUBGROUP, math.ceil(100.0 / max_drop))


def _label_consistent(accuracy: dict, partial: dict) -> tuple[int, int]:
    """Images whose top-1 agrees with what their label says: the exact class for full labels,
    bacterial or viral for partial ones ("pneumonia, subtype unknown")."""
    k, n = accuracy["k"], accuracy["n"]
    for m in partial.values():
        rate = m.get("called_bacterial_or_viral")
        if rate:
            k, n = k + rate["k"], n + rate["n"]
    return k, n


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


@dataclass
class Delegation:
    """How much of a TFLite graph the default delegate (XNNPACK) took over."""

    partitions: int  # delegate nodes; 1 means the whole graph runs in XNNPACK
    delegated: int  # original ops inside a delegate partition
    total: int  # original ops
    outside: dict[str, int]  # op name -> count of ops left to the reference kernels

    def describe(self) -> str:
        left = ", ".join(f"{k} x{v}" for k, v in sorted(self.outside.items())) or "none"
        return f"{self.partitions} XNNPACK partition(s), {self.delegated}/{self.total} ops delegated; outside: {left}"


def delegation_summary(interpreter) -> Delegation:
    """Which ops XNNPACK took, from an allocated interpreter's node list (TF-free).

    TFLite keeps the replaced nodes in its node list and appends one DELEGATE node per partition,
    whose inputs and outputs are the tensors crossing the partition boundary; walking back from a
    partition's outputs to its inputs visits exactly the ops it replaced.
    """
    ops = interpreter._get_ops_details()  # private, but the only way to see delegation from Python
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    originals = {op["index"]: op for op in ops if op["op_name"] != "DELEGATE"}
    producer = {int(t): op["index"] for op in originals.values() for t in op["outputs"]}
    covered: set[int] = set()
    for node in delegates:
        stop = {int(t) for t in node["inputs"]}
        stack, seen = [int(t) for t in node["outputs"]], set()
        while stack:
            t = stack.pop()
            if t in stop or t in seen or t not in producer:
                continue
            seen.add(t)
            covered.add(producer[t])
            stack.extend(int(x) for x in originals[producer[t]]["inputs"] if x >= 0)
    outside = Counter(op["op_name"] for i, op in originals.items() if i not in covered)
    return Delegation(len(delegates), len(covered), len(originals), dict(outside))


def _delegation_note(tflite: bytes) -> str | None:
    from .runtime import interpreter_backend

    interpreter_cls, name, _ = interpreter_backend()
    try:
        interp = interpreter_cls(model_content=tflite, num_threads=1)
        interp.allocate_tensors()
        return delegation_summary(interp).describe()
    except (ValueError, RuntimeError, AttributeError, KeyError):
        return None


# --- the model card -------------------------------------------------------------------------------------


def render_model_card(spec: ModelSpec, guard: GuardReport, *, cfg=None, model_file: str = "", size_bytes: int = 0,
                      latency_ms: float | None = None, data_summary: dict | None = None,
                      notes: dict | None = None) -> str:
    """MODEL_CARD.md for one exported model, from its spec and the guard's evaluation."""
    notes = notes or spec.notes or {}
    m = guard.tflite_metrics
    names = list(spec.class_names)
    out = [
        f"# Model card: {model_file or spec.name}",
        "",
        "**Research prototype, not a medical device.** It has not been evaluated clinically and must "
        "not be used to diagnose, triage or treat anyone.",
        "",
        "## Model",
        "",
        f"- File: `{model_file}` ({_mb(size_bytes)}), edgecxr {spec.version}; spec embedded in the file "
        f"and in `{Path(model_file).stem}.json`",
        f"- Architecture: {spec.architecture}{' (minimalistic: ReLU, no squeeze-excite)' if spec.minimalistic else ''}, "
        f"alpha {spec.alpha:g}, input {spec.image_size}x{spec.image_size} {spec.color} "
        f"{spec.input_range[0]:g}..{spec.input_range[1]:g}, resize {spec.resize}"
        f"{', histogram-equalized' if getattr(spec, 'equalize', False) else ''}",
        f"- Classes (output order): {', '.join(names)}",
        f"- Quantization: {spec.quantization} ({MODES[spec.quantization].summary}), "
        f"{spec.io_dtype} input/output",
    ]
    out += _quantization_lines(notes)
    if latency_ms is not None:
        out.append(f"- Latency: {latency_ms:.2f} ms per image (median, 1 thread, this export machine, "
                   "model only); measure the target with `edgecxr bench`")
    if cfg is not None:
        out += ["", "## Training", "",
                f"- Data: `{cfg.data}`" + (f" + {', '.join(f'`{e}`' for e in cfg.extra_data)}" if cfg.extra_data else ""),
                f"- Weights: {cfg.weights}; {cfg.epochs} epochs, batch {cfg.batch_size}, learning rate "
                f"{cfg.learning_rate:g} ({cfg.lr_schedule}), balance {cfg.balance}, seed {cfg.seed}",
                "- Splits are by patient (no patient in two splits)."]
        if cfg.teachers:
            out.append(f"- Distilled: {cfg.distill_weight:.0%} of every training target is the mean probability "
                       f"of {len(cfg.teachers)} teacher(s) ({', '.join(f'`{t}`' for t in cfg.teachers)})")
    if data_summary:
        out += ["", "## Data and splits", "", _md_table(*_summary_table(data_summary["by_class"], "label")),
                "", _md_table(*_summary_table(data_summary["by_source"], "source (group)"))]
    acc = m["accuracy"]
    out += ["", f"## Validation metrics of this file ({guard.n_images} {guard.split} images)", "",
            f"Accuracy {metrics_mod.fmt_rate(acc)} on {acc['n']} fully labelled images (Keras model: "
            f"{metrics_mod.fmt_rate(guard.keras_metrics['accuracy'])}); top-1 agreement with Keras "
            f"{_pct(guard.total.agreement)}. 95% Wilson intervals in brackets. These are validation numbers "
            "(the split used to pick the checkpoint); report test-split numbers from `edgecxr evaluate`.", "",
            _md_table(*metrics_mod.table_per_class(m))]
    for key in ("by_source", "by_group"):
        if m.get(key):
            out += ["", _md_table(*metrics_mod.table_breakdown(m, key))]
    out += ["", "### Accuracy guard", "", "```", guard.to_table(), "```"]
    out += ["", "## Intended use", "",
            "Research and teaching: studying how a small classifier behaves on chest X-rays, and how "
            "quantization and edge deployment change it. Inputs are frontal chest radiographs; outputs are "
            f"scores for {', '.join(names)}.",
            "", "## Limitations", "",
            "- Not a medical device; no clinical validation, no regulatory clearance.",
            "- Pediatric vs adult sources: the public collections mix pediatric pneumonia films (Kermany, "
            "Guangzhou) with adult COVID-19 and adult pneumonia films from other hospitals. Class and source "
            "(and so patient age, scanner, hospital text markers) are entangled, so the model can learn a "
            "**source/age shortcut** instead of lung findings. Check the per-source and per-group rows above "
            "before trusting any class, and expect lower accuracy on films from new hospitals.",
            "- Subgroups are small: confidence intervals are wide; int8 quantization can hurt one subgroup "
            "more than the total suggests (see the guard table).",
            "- Four classes only; anything else (tuberculosis, effusion, devices, lateral views) is forced "
            "into one of them.",
            ""]
    return "\n".join(out)


def _quantization_lines(notes: dict) -> list[str]:
    lines = []
    cal = notes.get("calibration")
    if cal:
        lines.append(f"- Calibration: {cal['images']} training images (asked {cal['requested']}), stratified by "
                     f"class ({_counts(Counter(cal['by_class']))}) and source ({_counts(Counter(cal['by_source']))})")
    if notes.get("hard_swish"):
        lines.append(f"- Hard-swish: {notes['hard_swish']}")
    kf = notes.get("keep_float")
    if kf:
        kept = ", ".join(f"`{l['name']}`" for l in kf["layers"]) or "none"
        lines.append(f"- Kept in float (selective quantization, {', '.join(kf['asked'])}): {kept}")
    qat = notes.get("qat")
    if qat:
        lines.append(f"- Quantization-aware training: {qat['scope']}, {qat['epochs']} epochs at learning rate "
                     f"{qat['learning_rate']:g} on {qat['train_images']} training images ({qat['why']})")
    if notes.get("xnnpack"):
        lines.append(f"- XNNPACK: {notes['xnnpack']}")
    return lines


def _summary_table(table: dict, what: str) -> tuple[list[str], list[list[str]]]:
    splits = [s for s in data_mod.SPLITS if s in table]
    keys = sorted({k for s in splits for k in table[s]})
    rows = [[k, *(str(table[s].get(k, 0)) for s in splits), str(sum(table[s].get(k, 0) for s in splits))]
            for k in keys]
    rows.append(["total", *(str(sum(table[s].values())) for s in splits),
                 str(sum(sum(table[s].values()) for s in splits))])
    return [what, *splits, "all"], rows


# --- formatting -------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _pair(pair) -> str:
    if not pair:
        return "-"
    a, b = pair
    fmt = lambda v: "-" if v is None else f"{100 * v:.0f}"  # noqa: E731
    return f"{fmt(a)}->{fmt(b)}"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells):
        first = str(cells[0]).ljust(widths[0])
        rest = (str(c).rjust(w) for c, w in zip(cells[1:], widths[1:]))
        return "  ".join([first, *rest]).rstrip()

    return "\n".join(line(r) for r in [header, *rows])


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *(line(r) for r in rows)])
