"""``edgecxr bench``: latency, memory and accuracy of ``.tflite`` models, as one comparison table.

Latency is reported the way TensorFlow Lite's ``benchmark_model`` does (init time, first
inference, warm-up mean, then steady-state mean/std/percentiles) in two flavours:

- model-only: ``invoke()`` alone on random input of the model's input dtype, the number to compare
  with ``benchmark_model`` and with other devices;
- end-to-end: ``Classifier.predict(file)``, i.e. decode + preprocess + quantize + invoke +
  dequantize, on real files from ``--data`` (or synthetic JPEGs held in memory), the number a user
  waiting for an answer sees.

Accuracy on ``--data`` is scored by the same code as ``edgecxr evaluate`` (``evaluate.score``, i.e.
``metrics.evaluate_predictions``). ``--peers`` adds ONNX Runtime rows (``edgecxr.peers``) timed by
the same code. A run of several models ends with one recommendation: the fastest row whose accuracy
is within the accuracy guard's tolerance of the most accurate one. A model that fails to load or run becomes a ``failed`` row, never
a crash, so one broken export does not hide the others. Only numpy, Pillow, click and the TFLite
interpreter are imported: this runs on the device itself.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import DEFAULT_MAX_DROP
from .errors import DataError, EdgeCXRError, ImageError, MissingExtraError, ModelFileError
from .fingerprint import count_training_images, training_note
from .progress import progress as progress_bar
from .tables import md_table, text_table

SCHEMA = "edgecxr.bench/1"
# End-to-end input without --data: grayscale JPEGs that compress like the collection's 512 px films
# (22-81 KB, median 32 KB at 512x512); white noise (823 KB at 1024 px) was a decoder's worst case.
SYNTHETIC_FILES = 8
SYNTHETIC_SIZE = 512
MEMORY_NOTE = (
    "peak RSS = the process's peak resident memory (Linux VmHWM; ru_maxrss elsewhere), which "
    "includes Python and every model benchmarked before; rss_delta_mb (JSON/CSV) = growth of "
    "resident memory while this model was loaded and run"
)


@dataclass
class LatencyStats:
    """One way of running the model, timed like ``benchmark_model`` (milliseconds, batch 1)."""

    first_ms: float
    warmup_runs: int
    warmup_mean_ms: float | None
    runs: int
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    images_per_s: float  # 1000 / steady-state mean: one image at a time, one stream

    @classmethod
    def from_times(cls, first_ms: float, warmup_ms: list[float], steady_ms: list[float]) -> "LatencyStats":
        steady = np.asarray(steady_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(steady, [50, 90, 99])
        mean = float(steady.mean())
        return cls(
            first_ms=float(first_ms),
            warmup_runs=len(warmup_ms),
            warmup_mean_ms=float(np.mean(warmup_ms)) if warmup_ms else None,
            runs=len(steady),
            mean_ms=mean,
            std_ms=float(steady.std()),
            min_ms=float(steady.min()),
            max_ms=float(steady.max()),
            p50_ms=float(p50),
            p90_ms=float(p90),
            p99_ms=float(p99),
            images_per_s=1000.0 / mean if mean > 0 else float("inf"),
        )


@dataclass
class BenchRow:
    """One model at one thread count. ``status`` is ``ok`` or ``failed`` (then ``error`` says why)."""

    model: str
    name: str
    threads: int | None
    status: str = "ok"
    error: str = ""
    engine: str = ""  # "ai_edge_litert 2.3.0", "onnxruntime 1.32.0"
    quantization: str = ""
    io_dtype: str = ""
    image_size: int | None = None
    size_mb: float | None = None
    xnnpack: bool | None = None
    init_ms: float | None = None
    model_only: LatencyStats | None = None
    end_to_end: LatencyStats | None = None
    peak_rss_mb: float | None = None
    rss_delta_mb: float | None = None
    # Accuracy does not depend on the thread count: measured once per model (first thread count)
    # and repeated on that model's other rows; the full metrics dict sits on the first row only.
    accuracy: float | None = None
    macro_sensitivity: float | None = None
    covid_sensitivity: float | None = None
    n_images: int = 0
    n_unreadable: int = 0
    # scored images that are the model's own training images (edgecxr.fingerprint); None: no fingerprint
    training_images: int | None = None
    metrics: dict | None = None

    def flat(self) -> dict:
        """Scalars only: the CSV columns, and what ``report.plot_tradeoff`` reads."""
        out = {k: v for k, v in asdict(self).items() if k not in ("model_only", "end_to_end", "metrics")}
        for prefix, stats in (("", self.model_only), ("e2e_", self.end_to_end)):
            for key, value in (asdict(stats) if stats else _empty_stats()).items():
                out[prefix + key] = value
        return out


def _empty_stats() -> dict:
    return {f: None for f in LatencyStats.__dataclass_fields__}


@dataclass
class BenchHeader:
    """What the numbers were measured on; printed above every table."""

    date: str
    command: str
    data: str
    images: int
    end_to_end_input: str
    image_sizes: list[int]
    threads: list[int | None]
    runs: int
    warmup: int
    interpreter: str
    interpreter_version: str
    xnnpack: str
    cpu: str
    cores: int | None
    platform: str
    python: str
    memory: str = MEMORY_NOTE


@dataclass
class BenchReport:
    header: BenchHeader
    rows: list[BenchRow]
    notes: list[str] = field(default_factory=list)
    recommendation: str = ""  # one line, see recommend()

    def to_dict(self) -> dict:
        from .metrics import json_safe

        return json_safe({"schema": SCHEMA, "header": asdict(self.header),
                          "rows": [asdict(r) for r in self.rows], "notes": self.notes,
                          "recommendation": self.recommendation})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def to_csv(self) -> str:
        flat = [r.flat() for r in self.rows]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(flat[0]) if flat else ["model"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in flat)
        return buf.getvalue()

    def to_table(self) -> str:
        """The terminal report: header, comparison table, latency details, then accuracy."""
        from .metrics import format_metrics

        parts = [*self._header_lines(), "", text_table(*self._summary(), right=False), *self._failures(), "",
                 "latency details (ms, batch 1; model-only = invoke() on random input, "
                 "end-to-end = decode + preprocess + invoke on files)",
                 text_table(*self._details(), indent="  ", right=False)]
        for row in self.rows:
            if row.metrics:
                parts += ["", f"accuracy of {row.name} on {self.header.data}", format_metrics(row.metrics)]
        parts += ["", *(f"note: {n}" for n in self._all_notes())]
        if self.recommendation:
            parts += ["", self.recommendation]
        return "\n".join(parts) + "\n"

    def to_markdown(self) -> str:
        """A Markdown copy to commit (e.g. BENCHMARKS.md): the command and date come first."""
        from .metrics import format_metrics

        h = self.header
        lines = ["# edgecxr benchmark", "", f"Reproduce with `{h.command}` (run {h.date}).", "",
                 *(f"- {line}" for line in self._header_lines()[1:]), "",
                 md_table(*self._summary()), "",
                 *(f"- {line}" for line in self._failures()), *([""] if self._failures() else []),
                 "## Latency details", "",
                 "Milliseconds, batch 1. Model-only = `invoke()` on random input (what TFLite's "
                 "`benchmark_model` measures); end-to-end = decode + preprocess + invoke on files.", "",
                 md_table(*self._details()), ""]
        for row in self.rows:
            if row.metrics:
                lines += [f"## Accuracy of {row.name}", "", "```", format_metrics(row.metrics), "```", ""]
        lines += ["## Notes", "", *(f"- {n}" for n in self._all_notes()), ""]
        if self.recommendation:
            lines += [f"**{self.recommendation}**", ""]
        return "\n".join(lines)

    # -- rendering helpers --------------------------------------------------------------------

    def _header_lines(self) -> list[str]:
        h = self.header
        threads = ", ".join("default" if t is None else str(t) for t in h.threads)
        sizes = ", ".join(f"{s} px" for s in h.image_sizes) or "-"
        return [
            f"edgecxr bench, {h.date}",
            f"data: {h.data}; end-to-end input: {h.end_to_end_input}",
            f"image size: {sizes}; threads: {threads}; runs: {h.runs} after {h.warmup} warm-up",
            f"interpreter: {h.interpreter} {h.interpreter_version}; XNNPACK: {h.xnnpack}",
            f"CPU: {h.cpu} ({h.cores} cores); {h.platform}; Python {h.python}",
        ]

    def _failures(self) -> list[str]:
        return [f"failed: {r.error}" if r.error.startswith(r.model) else f"failed: {r.model}: {r.error}"
                for r in self.rows if r.status != "ok"]

    def _all_notes(self) -> list[str]:
        return [*self.notes, self.header.memory]

    def _summary(self) -> tuple[list[str], list[list[str]]]:
        header = ["model", "status", "quant", "engine", "io", "size MB", "threads", "accuracy", "macro sens",
                  "COVID sens", "p50 ms", "p90 ms", "p99 ms", "images/s", "e2e p50 ms", "e2e images/s",
                  "peak RSS MB"]
        rows = []
        for r in self.rows:
            m, e = r.model_only, r.end_to_end
            rows.append([r.name, r.status, r.quantization or "-", r.engine or "-", r.io_dtype or "-",
                         _num(r.size_mb, 2),
                         _threads(r.threads), _num(r.accuracy), _num(r.macro_sensitivity),
                         _num(r.covid_sensitivity), _num(m and m.p50_ms, 2), _num(m and m.p90_ms, 2),
                         _num(m and m.p99_ms, 2), _num(m and m.images_per_s, 1), _num(e and e.p50_ms, 2),
                         _num(e and e.images_per_s, 1), _num(r.peak_rss_mb, 1)])
        return header, rows

    def _details(self) -> tuple[list[str], list[list[str]]]:
        header = ["model", "threads", "mode", "init", "first", "warm-up mean", "mean", "std", "p50",
                  "p90", "p99", "images/s"]
        rows = []
        for r in self.rows:
            for mode, s in (("model-only", r.model_only), ("end-to-end", r.end_to_end)):
                if s is None:
                    continue
                init = _num(r.init_ms, 2) if mode == "model-only" else ""
                rows.append([r.name, _threads(r.threads), mode, init, _num(s.first_ms, 2),
                             _num(s.warmup_mean_ms, 2), _num(s.mean_ms, 2), _num(s.std_ms, 2),
                             _num(s.p50_ms, 2), _num(s.p90_ms, 2), _num(s.p99_ms, 2),
                             _num(s.images_per_s, 1)])
        return header, rows


# --- running ---------------------------------------------------------------------------------------


def bench(
    models=(),
    data: str | Path | None = None,
    threads=(1,),
    runs: int = 50,
    warmup: int = 5,
    extra=(),
    split: str | None = None,
    splits_file: str | Path | None = None,
    limit: int | None = None,
    progress: bool = False,
    command: str = "",
    peers: bool = False,
    tolerance: float = DEFAULT_MAX_DROP,
) -> BenchReport:
    """Benchmark each model at each thread count; with no models, the shipped default model.

    With ``data``, accuracy is measured on it (optionally one ``split`` of ``splits_file``, and at
    most ``limit`` images sampled with a fixed seed) and end-to-end latency uses its files;
    without, end-to-end latency uses synthetic JPEGs and accuracy is left empty. ``peers`` adds
    ONNX Runtime float32 and static int8 rows converted from the float32 model (``edgecxr.peers``);
    ``tolerance`` (accuracy points) is what the closing recommendation counts as equally accurate.
    """
    from .runtime import default_model_path, interpreter_backend

    if runs < 1 or warmup < 0:
        raise EdgeCXRError("--runs must be at least 1 and --warmup at least 0")
    threads = list(threads) or [None]
    if any(t is not None and t < 1 for t in threads):
        raise EdgeCXRError("thread counts must be positive")
    if not (tolerance >= 0 and np.isfinite(tolerance)):
        raise EdgeCXRError("--tolerance must be a non-negative number of accuracy points")
    default_used = not models
    models = [Path(m) for m in models] or [default_model_path()]
    notes: list[str] = []
    records = _records(data, extra, split, splits_file, limit, notes)
    sources, e2e_input = _end_to_end_sources(records, runs + warmup + 1)
    _, backend, backend_version = interpreter_backend()

    peer_sources: list[Path] = []
    if peers:
        from . import peers as peers_mod

        missing = peers_mod.missing_extra()
        if missing:
            notes.append(missing)
        else:
            peer_sources, added, peer_notes = peers_mod.float_sources(models, default_used)
            models += added
            notes += peer_notes

    rows: list[BenchRow] = []
    for model in models:
        rows += _bench_model(model, threads, runs, warmup, records, sources, progress)
    if peer_sources:
        rows += _bench_peers(peer_sources, threads, runs, warmup, records, sources, progress, notes,
                             (data, extra, splits_file))
    notes += [f"{r.name}: {r.n_unreadable} unreadable image(s) skipped, {r.n_images} scored"
              for r in rows if r.n_unreadable and r.metrics]
    notes += [f"{training_note(r.training_images, r.n_images)} ({r.name})"
              for r in rows if r.training_images and r.metrics]

    sizes = sorted({r.image_size for r in rows if r.image_size})
    xnn = {r.xnnpack for r in rows if r.status == "ok" and not r.engine.startswith("onnxruntime")}
    header = BenchHeader(
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        command=command or "edgecxr bench",
        data=_data_label(data, split, limit, records),
        images=len(records or []),
        end_to_end_input=e2e_input,
        image_sizes=sizes,
        threads=threads,
        runs=runs,
        warmup=warmup,
        interpreter=backend,
        interpreter_version=backend_version,
        xnnpack=_xnnpack_wording(xnn, backend),
        cpu=_cpu_name(),
        cores=os.cpu_count(),
        platform=f"{platform.system()} {platform.machine()}",
        python=platform.python_version(),
    )
    return BenchReport(header=header, rows=rows, notes=notes, recommendation=recommend(rows, tolerance))


def recommend(rows: list[BenchRow], tolerance: float = DEFAULT_MAX_DROP) -> str:
    """One line naming the fastest row (model-only p50) within ``tolerance`` points of the most accurate.

    Empty unless at least two different files ran; without accuracy (no --data) it names the
    fastest and says that accuracy was not weighed. Measured here, so it holds for this machine.
    """
    ok = [r for r in rows if r.status == "ok" and r.model_only is not None]
    if len({r.model for r in ok}) < 2:
        return ""

    def where(r: BenchRow) -> str:
        return f"{r.name} ({r.engine or 'engine unknown'}, {_threads(r.threads)} thread(s), p50 {r.model_only.p50_ms:.2f} ms"

    scored = [r for r in ok if r.accuracy is not None]
    if not scored:
        fastest = min(ok, key=lambda r: r.model_only.p50_ms)
        return (f"recommended on this machine: {where(fastest)}), the fastest; accuracy not weighed "
                "(pass --data to compare it)")
    best = max(scored, key=lambda r: r.accuracy)
    within = [r for r in scored if (best.accuracy - r.accuracy) * 100 <= tolerance + 1e-9]
    fastest = min(within, key=lambda r: r.model_only.p50_ms)
    if fastest.model == best.model:
        why = "the most accurate, and the fastest within"
    else:
        why = f"{best.name} is the most accurate at {best.accuracy:.1%}; this one is the fastest within"
    return (f"recommended on this machine: {where(fastest)}, accuracy {fastest.accuracy:.1%}): {why} "
            f"{tolerance:g} accuracy point(s) of it (the export guard's tolerance)")


def _bench_peers(sources: list[Path], threads, runs, warmup, records, e2e_sources, progress, notes,
                 data_args) -> list[BenchRow]:
    """ONNX Runtime rows for each float32 source: convert into a temporary folder, then bench."""
    from . import peers as peers_mod

    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory(prefix="edgecxr-peers-") as tmp:
        for source in sources:
            if progress:
                print(f"--peers: converting {source.name} to ONNX (tf2onnx, in a child process) ...",
                      file=sys.stderr, flush=True)
            try:
                calibration = _calibration_images(source, records, data_args, notes)
                converted = peers_mod.convert(source, Path(tmp), calibration, notes)
            except EdgeCXRError as exc:
                rows.append(BenchRow(model=str(source), name=f"{source.stem}.onnx", threads=None,
                                     status="failed", error=_one_line(exc), engine="onnxruntime"))
                continue
            for name, path, spec in converted:
                if path is None:
                    rows.append(BenchRow(model=str(source), name=name, threads=None, status="failed",
                                         error=spec, engine="onnxruntime"))
                    continue

                def opener(model, n_threads, _spec=spec):
                    return peers_mod.OnnxClassifier(model, _spec, num_threads=n_threads)

                for row in _bench_model(path, threads, runs, warmup, records, e2e_sources, progress,
                                        opener=opener, name=name):
                    row.model = f"{source} converted to {path.name}"  # the file itself is temporary
                    rows.append(row)
    return rows


def _calibration_images(source: Path, records, data_args, notes) -> np.ndarray:
    """Images for ONNX Runtime's static int8, chosen the way ``edgecxr export`` chooses ours.

    A stratified sample (``data.representative_sample``) of the training split of ``--splits``;
    without ``--splits`` the scored images themselves (said in a note: that flatters the int8
    row's accuracy); without ``--data`` the synthetic films, for latency only.
    """
    from .data import representative_sample
    from .preprocess import load_image, load_images
    from .spec import read_spec

    spec = read_spec(source)
    data, extra, splits_file = data_args
    if records is None:
        images = np.stack([load_image(io.BytesIO(b), spec.image_size, equalize=spec.equalize)
                           for b in _synthetic_jpegs()])
        notes.append(f"--peers: ONNX Runtime int8 calibrated on {len(images)} synthetic images (no --data)")
        return images
    from .peers import CALIBRATION_IMAGES

    if splits_file:
        from .data import load_records
        from .evaluate import select_split

        pool = select_split(load_records(data, extra, notes=[]), "train", Path(splits_file))
        where = f"the training split of {splits_file}, as `edgecxr export` calibrates"
    else:
        pool = list(records)
        where = "the scored images themselves (no --splits; pass the run's splits.csv to use its training split)"
    picked = [pool[i].file for i in representative_sample(pool, CALIBRATION_IMAGES, seed=0)]
    images, ok = load_images(picked, spec.image_size, equalize=spec.equalize)
    notes.append(f"--peers: ONNX Runtime int8 calibrated on {len(ok)} images from {where}, "
                 "stratified by class and source")
    return images


def _bench_model(model: Path, threads, runs, warmup, records, sources, progress, opener=None,
                 name: str | None = None) -> list[BenchRow]:
    """All thread counts of one model; stops at the first failure (it would repeat).

    ``opener(path, num_threads)`` makes the classifier (default: the TFLite ``Classifier``).
    """
    rows: list[BenchRow] = []
    for i, n_threads in enumerate(threads):
        row = BenchRow(model=str(model), name=name or _row_name(model), threads=n_threads)
        try:
            _bench_one(row, runs, warmup, records if i == 0 else None, sources, progress, opener)
        except (EdgeCXRError, RuntimeError, ValueError, OSError, MemoryError) as exc:
            if isinstance(exc, MissingExtraError):
                raise
            row.status, row.error = "failed", _one_line(exc)
            rows.append(row)
            break
        if rows:  # accuracy is per model: copy it from the first thread count
            first = rows[0]
            row.accuracy, row.macro_sensitivity = first.accuracy, first.macro_sensitivity
            row.covid_sensitivity, row.n_images, row.n_unreadable = (
                first.covid_sensitivity, first.n_images, first.n_unreadable)
            row.training_images = first.training_images
        rows.append(row)
    return rows


def _row_name(model: Path) -> str:
    """The model's name as ``predict`` and the app show it (its spec's, which export makes the file
    stem); the file name when the spec cannot be read (the row then fails with the reason)."""
    from .runtime import display_name
    from .spec import read_spec

    try:
        return display_name(read_spec(model), model)
    except EdgeCXRError:
        return model.name


def _bench_one(row: BenchRow, runs, warmup, records, sources, progress, opener=None) -> None:
    from .runtime import Classifier

    opener = opener or (lambda model, n_threads: Classifier(model, num_threads=n_threads))
    gc.collect()
    rss_before = _rss_mb()
    total = 2 * (runs + warmup + 1) + (len(records) if records else 0)
    with progress_bar(None if progress else False, total, f"{row.name}, threads={_threads(row.threads)}") as bar:
        t0 = time.perf_counter()
        clf = opener(row.model, row.threads)
        row.init_ms = (time.perf_counter() - t0) * 1e3
        row.engine = f"{clf.interpreter_name} {clf.interpreter_version}"
        row.quantization, row.io_dtype = clf.spec.quantization, clf.input_dtype
        row.image_size, row.xnnpack = clf.image_size, clf.xnnpack
        row.size_mb = Path(row.model).stat().st_size / 1e6
        row.model_only = _time_model_only(clf, runs, warmup, bar)
        row.end_to_end = _time_end_to_end(clf, sources, runs, warmup, bar)
        if records:
            _score(row, clf, records, bar)
        rss_after = _rss_mb()
    row.peak_rss_mb = _peak_rss_mb()
    if rss_before is not None and rss_after is not None:
        row.rss_delta_mb = rss_after - rss_before
    del clf
    gc.collect()


def _time_model_only(clf, runs: int, warmup: int, bar) -> LatencyStats:
    """Time ``invoke()`` alone on one random image of the input dtype, like benchmark_model."""
    details = clf.input_details
    dtype = np.dtype(details["dtype"])
    size = clf.image_size
    rng = np.random.default_rng(0)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, size=(1, size, size, 3), endpoint=True, dtype=dtype)
    else:
        lo, hi = clf.spec.input_range
        x = rng.uniform(lo, hi, size=(1, size, size, 3)).astype(dtype)
    if not clf.resize_batch(1):
        raise ModelFileError(f"{clf.model_path}: cannot set the input to one image")
    call = clf.bind_input(x)

    def once() -> float:
        t0 = time.perf_counter()
        call()
        bar.update(1)
        return (time.perf_counter() - t0) * 1e3

    first = once()
    warm = [once() for _ in range(warmup)]
    steady = [once() for _ in range(runs)]
    return LatencyStats.from_times(first, warm, steady)


def _time_end_to_end(clf, sources: list, runs: int, warmup: int, bar) -> LatencyStats:
    """Time ``predict`` (decode + preprocess + invoke), a different file each call where possible.

    Unreadable files are skipped (they are counted by the accuracy pass); if none is readable the
    model cannot be timed end-to-end and the row fails with the reason.
    """
    times: list[float] = []
    errors = 0
    i = 0
    while len(times) < runs + warmup + 1:
        source = sources[i % len(sources)]
        i += 1
        t0 = time.perf_counter()
        try:
            clf.predict(source)
        except ImageError as exc:
            errors += 1
            if errors >= len(sources):
                raise DataError(f"end-to-end timing found no readable image ({exc})") from None
            continue
        times.append((time.perf_counter() - t0) * 1e3)
        bar.update(1)
    return LatencyStats.from_times(times[0], times[1 : warmup + 1], times[warmup + 1 :])


def _score(row: BenchRow, clf, records, bar) -> None:
    """Accuracy with the metrics ``edgecxr evaluate`` reports, on batches of images."""
    from .evaluate import score
    from .runtime import MAX_BATCH

    kept, probs, unreadable = [], [], 0
    for start in range(0, len(records), MAX_BATCH):
        chunk = records[start : start + MAX_BATCH]
        failed: set[str] = set()
        preds = clf.predict_batch([r.file for r in chunk], on_error=lambda f, _msg: failed.add(str(f)))
        unreadable += len(failed)
        kept += [r for r in chunk if r.file not in failed]
        probs += [[p.probabilities[c] for c in clf.class_names] for p in preds]
        bar.update(len(chunk))
    row.n_images, row.n_unreadable = len(kept), unreadable
    if not kept:
        raise DataError("no readable images to score")
    row.training_images = count_training_images(row.model, [r.file for r in kept])
    metrics = score(kept, np.asarray(probs, dtype=np.float32), clf.class_names)
    row.metrics = metrics
    row.accuracy = metrics["accuracy"]["value"]
    row.macro_sensitivity = metrics["macro"]["sensitivity"]
    cvr = metrics.get("covid_vs_rest")
    row.covid_sensitivity = cvr["sensitivity"]["value"] if cvr else None


# --- inputs ----------------------------------------------------------------------------------------


def _records(data, extra, split, splits_file, limit, notes):
    """The records to score, or None without data. ``limit`` samples with a fixed seed."""
    if data is None:
        given = [name for name, value in (("--split", split), ("--splits", splits_file), ("--extra-data", extra),
                                          ("--limit", limit)) if value]
        if given:
            raise DataError(f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --data DATA (labelled images)")
        return None
    from .data import load_records
    from .evaluate import default_split, select_split

    split, note = default_split(split, splits_file)
    if note and splits_file:
        notes.append(note)
    records = select_split(load_records(data, extra, notes=notes), split, Path(splits_file) if splits_file else None)
    if limit is not None and 0 < limit < len(records):
        # Records come grouped by class; a seeded sample keeps every class in a small --limit.
        keep = np.sort(np.random.default_rng(0).choice(len(records), size=limit, replace=False))
        records = [records[i] for i in keep]
        notes.append(f"--limit {limit}: a seeded random sample of the images, not the first {limit}")
    return records


def _end_to_end_sources(records, wanted: int) -> tuple[list, str]:
    if records:
        files = [r.file for r in records[:wanted]]
        return files, f"{len(files)} files from the data (page cache warm after the first read)"
    return _synthetic_jpegs(), (
        f"{SYNTHETIC_FILES} synthetic {SYNTHETIC_SIZE}x{SYNTHETIC_SIZE} grayscale JPEGs in memory"
    )


def _synthetic_jpegs() -> list[bytes]:
    """Chest-film-like JPEG bytes: a bright oval, a blob, rib-like bands, smooth texture and fine grain.

    A film is mostly smooth, so its JPEG is small; the texture is upsampled from 32x32 noise and
    the grain is 2 grey levels, which lands at the real films' size (tests/test_bench.py checks).
    """
    from PIL import Image

    rng = np.random.default_rng(0)
    n = SYNTHETIC_SIZE
    yy, xx = np.mgrid[0:n, 0:n] / n
    body = 60 + 100 * np.exp(-(((xx - 0.5) / 0.35) ** 2 + ((yy - 0.5) / 0.45) ** 2))
    ribs = 12 * np.sin(yy * n / 14.0 + 3 * np.sin(xx * 4)) * np.exp(-(((xx - 0.5) / 0.3) ** 2))
    out = []
    for _ in range(SYNTHETIC_FILES):
        cx, cy = rng.uniform(0.25, 0.75, size=2)
        coarse = Image.fromarray(rng.normal(0, 1, (32, 32)).astype(np.float32), mode="F")
        texture = np.asarray(coarse.resize((n, n), Image.Resampling.BICUBIC))
        img = body + ribs + 12 * texture + 80 * np.exp(-(((xx - cx) / 0.1) ** 2 + ((yy - cy) / 0.1) ** 2))
        img = (img + rng.normal(0, 2, img.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img, mode="L").save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _data_label(data, split, limit, records) -> str:
    if data is None:
        return "none (synthetic input; pass --data for accuracy)"
    label = f"{data} ({len(records)} images"
    if split and split != "all":
        label += f", split {split}"
    return label + ")"


# --- the machine -----------------------------------------------------------------------------------


def _xnnpack_wording(seen: set, backend: str) -> str:
    if seen == {True}:
        return "on (a DELEGATE node replaced the graph after allocate_tensors; no other delegate was requested)"
    if seen == {False}:
        return "off (no delegate node in the graph; plain TFLite kernels)"
    if True in seen:
        return "on for some models only (see the xnnpack field per row)"
    default = "applied by default" if backend == "ai_edge_litert" else "may be applied by default"
    return f"unknown (could not inspect the graph; {backend} {default})"


def _cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (x86 'model name', Raspberry Pi 'Model'), else platform."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Model", "Hardware", "Processor"):
        for line in text.splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key and value.strip():
                return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def _proc_status_mb(field_name: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rss_mb() -> float | None:
    return _proc_status_mb("VmRSS")


def _peak_rss_mb() -> float | None:
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:  # Windows
        return None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024.0 * 1024.0) if sys.platform == "darwin" else maxrss / 1024.0


# --- small helpers ---------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else exc.__class__.__name__
    return message if isinstance(exc, EdgeCXRError) else f"{exc.__class__.__name__}: {message}"


def _threads(n) -> str:
    return "default" if n is None else str(n)


def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _csv_value(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value
