"""Evaluation artifacts: metrics.json, a readable report.md, and the plots that go with them.

matplotlib is optional (the runtime install has none), so it is imported inside the functions that
draw. Figures are drawn on a non-interactive Agg canvas without pyplot: no global backend is
switched (the Kivy app or a notebook may have chosen one) and no figures pile up in pyplot's
registry during long runs. Every file is written atomically; deciding whether an existing report
may be replaced (--force) is the caller's job.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from .errors import ModelFileError
from .io import atomic_write_bytes, atomic_write_text
from .metrics import (
    MIN_SOURCE,
    fmt_num,
    fmt_rate,
    json_safe,
    table_breakdown,
    table_confusion,
    table_called_covid,
    table_partial,
    table_per_class,
)
from .tables import md_table

PLOT_DPI = 110


def write_evaluation(metrics: dict, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """Write metrics.json, report.md and (with matplotlib) confusion_matrix.png and reliability.png.

    Returns ``{file name: path}`` for what was written; without matplotlib the PNGs are skipped and
    report.md says so.
    """
    out = Path(out_dir)
    metrics = json_safe(metrics)
    written = {"metrics.json": atomic_write_text(
        out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")}
    images = {}
    mpl = _matplotlib()
    if mpl is not None:
        images["confusion_matrix.png"] = _save(_confusion_figure(mpl, metrics),
                                               out / "confusion_matrix.png")
        images["reliability.png"] = _save(_reliability_figure(mpl, metrics),
                                          out / "reliability.png")
    markdown = render_markdown(metrics, title, images=list(images), plots_skipped=mpl is None)
    written["report.md"] = atomic_write_text(out / "report.md", markdown)
    written.update(images)
    return written


def plot_history(history_csv: str | Path, out_dir: str | Path) -> dict[str, Path]:
    """accuracy.png and loss.png, train vs validation per epoch, from a Keras CSVLogger file.

    A resumed run appends to the CSV, so an epoch seen twice keeps its last row. Keras counts
    epochs from 0 in the CSV and from 1 on screen; the plots follow the screen. Returns the paths
    written: empty when matplotlib is missing, and a plot is skipped when its column is absent.
    """
    history = _read_history(Path(history_csv))
    mpl = _matplotlib()
    if mpl is None:
        return {}
    out = Path(out_dir)
    written = {}
    for metric, best in (("accuracy", np.nanargmax), ("loss", np.nanargmin)):
        series = {k: history[k] for k in (metric, f"val_{metric}")
                  if k in history and np.isfinite(history[k]).any()}
        if series:
            fig = _history_figure(mpl, history["epoch"] + 1, metric, series, best)
            written[f"{metric}.png"] = _save(fig, out / f"{metric}.png")
    return written


def plot_tradeoff(rows: list[dict], out_path: str | Path) -> Path | None:
    """Latency-vs-accuracy scatter of benchmark rows: one marker per thread count, one label per model.

    A row may carry ``threads`` (rows of one model at several thread counts share its accuracy, so
    the model is named once, at its first point) and ``accuracy_ci`` ``[lo, hi]``, drawn as an
    error bar: two models whose bars overlap are not told apart by this data set. Rows lacking a
    number (a failed format) are left out. Returns None when nothing was drawn: matplotlib missing
    or no row with both p50_ms and accuracy.
    """
    points = [r for r in rows if _finite(r.get("p50_ms")) and _finite(r.get("accuracy"))]
    mpl = _matplotlib()
    if mpl is None or not points:
        return None
    fig = mpl.Figure(figsize=(6.4, 4.4), dpi=PLOT_DPI)
    mpl.FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    groups: dict = {}
    for r in points:
        groups.setdefault(r.get("threads"), []).append(r)
    markers = "osD^vP*X"
    for i, (threads, group) in enumerate(groups.items()):
        xs = [float(r["p50_ms"]) for r in group]
        ys = [float(r["accuracy"]) for r in group]
        ci = [r.get("accuracy_ci") for r in group]
        yerr = None
        if all(c and _finite(c[0]) and _finite(c[1]) for c in ci):
            yerr = [[y - c[0] for y, c in zip(ys, ci)], [c[1] - y for y, c in zip(ys, ci)]]
        label = None if threads is None else f"{threads} thread{'s' if threads != 1 else ''}"
        ax.errorbar(xs, ys, yerr=yerr, fmt=markers[i % len(markers)], ms=6, capsize=3, label=label, zorder=3)
    named = set()
    for r in points:
        name = str(r.get("model"))
        if name in named:
            continue
        named.add(name)
        ax.annotate(name, (float(r["p50_ms"]), float(r["accuracy"])), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    xs = [float(r["p50_ms"]) for r in points]
    # Latencies of float and int8 models on a Pi span more than a decade; a log axis keeps both.
    if min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.margins(0.2)  # room for the model names
    if any(t is not None for t in groups):
        ax.legend(fontsize=8, loc="best")
    ax.set_xlabel("median latency per image, p50 (ms)")
    ax.set_ylabel("accuracy (95% interval)" if any(r.get("accuracy_ci") for r in points) else "accuracy")
    ax.set_title("accuracy vs latency (up and left is better)")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(out_path))


# --- Markdown -------------------------------------------------------------------------------------


def render_markdown(metrics: dict, title: str = "", images: list[str] = (),
                    plots_skipped: bool = False) -> str:
    """report.md: the same tables as the terminal report, plus links to the plots."""
    acc = metrics["accuracy"]
    lines = [f"# {title or 'Evaluation report'}", ""]
    partial = f", plus {metrics['n_partial']} partial-label images" if metrics.get("n_partial") else ""
    lines += [
        f"**Accuracy {fmt_rate(acc)}** on {acc['n']} labelled images{partial}. "
        "Brackets hold 95% Wilson confidence intervals; the prediction is the top-1 class.",
        "",
        "## Per class",
        "",
        md_table(*table_per_class(metrics)),
        "",
        "Macro averages are unweighted means over the classes where the metric is defined"
        + _undefined_note(metrics["macro"].get("undefined", {})) + ".",
        "",
        "## Confusion matrix",
        "",
        "Rows are the true class, columns the predicted class.",
        "",
        md_table(*table_confusion(metrics)),
        "",
    ]
    if "confusion_matrix.png" in images:
        lines += ["![confusion matrix](confusion_matrix.png)", ""]
    cvr = metrics.get("covid_vs_rest")
    if cvr:
        lines += ["## COVID-19 vs rest", "",
                  f"- sensitivity {fmt_rate(cvr['sensitivity'])}",
                  f"- specificity {fmt_rate(cvr['specificity'])}",
                  f"- AUROC {fmt_num(cvr['auroc'])}", ""]
    lines += _calibration_section(metrics["calibration"], "reliability.png" in images)
    if metrics.get("partial_labels"):
        lines += ["## Partial labels", "",
                  "Images whose label names no single class (e.g. pneumonia without subtype); they "
                  "are not in the numbers above.", "", md_table(*table_partial(metrics)), ""]
    explained = False
    for key, heading in (("by_source", "By source"), ("by_group", "By group")):
        if metrics.get(key):
            lines += [f"## {heading}", ""]
            if not explained:
                lines += ["`<class> ok` is correct/total for that class. *Non-COVID not called "
                          "COVID-19* is the shortcut check: a model that tells sources apart "
                          "instead of diseases calls one source's normals COVID-19.", ""]
                explained = True
            lines += [md_table(*table_breakdown(metrics, key)), ""]
    if metrics.get("called_covid19_by_source"):
        lines += ["## Non-COVID films called COVID-19, by source", "",
                  "The shortcut check, one row per source, adult sources first: normals, pneumonias and "
                  "partial-label films (tuberculosis, pneumonia without subtype) that were called COVID-19.",
                  "", md_table(*table_called_covid(metrics)), ""]
    worst = metrics.get("worst_source")
    if worst:
        lines += [f"**Worst source: {worst['source']}**, {fmt_rate(worst['rate'])} of its images right "
                  f"(partial labels: a class they allow; sources with at least {MIN_SOURCE} images). "
                  "Choose checkpoints and recipes by this number, not the mean.", ""]
    if plots_skipped:
        lines += ["> Plots were skipped: matplotlib is not installed "
                  "(pip install 'edgecxr[dev]').", ""]
    return "\n".join(lines)


def _undefined_note(undefined: dict) -> str:
    if not undefined:
        return ""
    parts = [f"{metric}: {', '.join(names)}" for metric, names in undefined.items()]
    return " (undefined, so left out: " + "; ".join(parts) + ")"


def _calibration_section(cal: dict, with_plot: bool) -> list[str]:
    lines = ["## Calibration", "",
             f"Expected calibration error {fmt_num(cal['ece'])} over {cal['n_bins']} equal-width "
             "bins of top-1 confidence.", ""]
    filled = [b for b in cal["bins"] if b["count"]]
    if filled:
        rows = [[f"{b['lo']:.2f}-{b['hi']:.2f}", str(b["count"]), fmt_num(b["confidence"]),
                 fmt_num(b["accuracy"])] for b in filled]
        lines += [md_table(["confidence bin", "n", "mean confidence", "accuracy"], rows), ""]
    if with_plot:
        lines += ["![reliability diagram](reliability.png)", ""]
    return lines


# --- plots ----------------------------------------------------------------------------------------


class _Mpl:
    """The two matplotlib pieces the plots need, imported on demand."""

    def __init__(self):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        self.Figure = Figure
        self.FigureCanvasAgg = FigureCanvasAgg
        self.MaxNLocator = MaxNLocator


def _matplotlib() -> _Mpl | None:
    try:
        return _Mpl()
    except ImportError:
        return None


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def _confusion_figure(mpl: _Mpl, metrics: dict):
    """Colour is the fraction of each true class so a small class is as visible as a large one."""
    cm = np.asarray(metrics["confusion_matrix"]["matrix"], dtype=np.int64)
    labels = metrics["confusion_matrix"]["labels"]
    totals = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, totals, out=np.zeros(cm.shape), where=totals > 0)
    size = 1.1 * len(labels) + 2.2
    fig = mpl.Figure(figsize=(size + 1.0, size), dpi=PLOT_DPI)
    mpl.FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{frac[i, j]:.0%}", ha="center", va="center", fontsize=9,
                    color="white" if frac[i, j] > 0.5 else "black")
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=30, ha="right")
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = metrics["accuracy"]["value"]
    ax.set_title(f"confusion matrix (accuracy {fmt_num(acc)})")
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    fig.tight_layout()
    return fig


def _reliability_figure(mpl: _Mpl, metrics: dict):
    """Accuracy per confidence bin against the diagonal, with how many images each bin holds."""
    cal = metrics["calibration"]
    bins = cal["bins"]
    width = bins[0]["hi"] - bins[0]["lo"]
    centres = np.array([(b["lo"] + b["hi"]) / 2 for b in bins])
    filled = np.array([b["count"] > 0 for b in bins])
    accuracy = np.array([b["accuracy"] or 0.0 for b in bins])
    confidence = np.array([b["confidence"] or 0.0 for b in bins])
    counts = np.array([b["count"] for b in bins])

    fig = mpl.Figure(figsize=(5.6, 6.0), dpi=PLOT_DPI)
    mpl.FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.bar(centres[filled], accuracy[filled], width=width * 0.95, color="tab:blue",
            edgecolor="black", linewidth=0.5, label="accuracy in bin")
    top.scatter(confidence[filled], accuracy[filled], color="tab:red", s=14, zorder=3,
                label="(mean confidence, accuracy)")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.03)
    top.set_ylabel("accuracy")
    top.set_title(f"reliability (ECE {fmt_num(cal['ece'])}, {cal['n_bins']} bins)")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, counts, width=width * 0.95, color="grey")
    bottom.set_xlabel("top-1 confidence")
    bottom.set_ylabel("images")
    fig.tight_layout()
    return fig


def _history_figure(mpl: _Mpl, epochs: np.ndarray, metric: str, series: dict, best):
    fig = mpl.Figure(figsize=(6.4, 4.2), dpi=PLOT_DPI)
    mpl.FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, values in series.items():
        label = "validation" if name.startswith("val_") else "train"
        ax.plot(epochs, values, marker="o", markersize=3, label=label)
    val = series.get(f"val_{metric}")
    if val is not None:
        i = int(best(val))
        ax.scatter([epochs[i]], [val[i]], s=80, facecolors="none", edgecolors="red", zorder=3,
                   label=f"best validation (epoch {epochs[i]:g})")
    ax.xaxis.set_major_locator(mpl.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _read_history(path: Path) -> dict[str, np.ndarray]:
    """Columns of a CSVLogger file as float arrays, one row per epoch (last row wins)."""
    if not path.is_file():
        raise ModelFileError(f"training history not found: {path}")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if "epoch" not in (reader.fieldnames or []):
            raise ModelFileError(f"{path}: not a training history (no 'epoch' column)")
        # A repeated header (two runs appended to one file) parses as a non-numeric epoch.
        rows = [r for r in reader if not math.isnan(_number(r["epoch"]))]
        columns = [c for c in reader.fieldnames if c and c != "epoch"]
    if not rows:
        raise ModelFileError(f"{path}: no epochs recorded yet")
    by_epoch = {_number(row["epoch"]): row for row in rows}
    epochs = sorted(by_epoch)
    history = {"epoch": np.array(epochs, dtype=np.float64)}
    for col in columns:
        history[col] = np.array([_number(by_epoch[e].get(col)) for e in epochs])
    return history


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
