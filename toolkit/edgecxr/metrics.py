"""Classification metrics with confidence intervals, in numpy only.

``edgecxr evaluate``, the export accuracy guard and the runtime benchmark all score predictions with
this module, and the benchmark runs on the TensorFlow-free runtime install, so nothing here imports
more than numpy. Every rate comes with a Wilson 95% interval rather than a bootstrap: it is
deterministic, instant, and stays honest on the small per-class counts that chest X-ray test sets
have. Every result is plain JSON: a number that cannot be computed (a class absent from the test
set) is ``None``, never NaN.

Conventions used throughout:

- ``y_true`` holds class indices; ``-1`` marks a partial-label image (adult pneumonia with no
  bacterial/viral subtype, tuberculosis). Those rows are left out of the 4-class metrics and scored
  on what their label does say: whether COVID-19 was called, and whether one of the classes the label
  allows was (``edgecxr.PARTIAL_LABELS``, or the mapping passed as ``partial_allowed``).
- The prediction is the top-1 class (a tie goes to the lower index, as ``np.argmax`` does).
- A rate is ``{"value": k/n or None, "k": k, "n": n, "ci": [lo, hi]}``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from . import PARTIAL_LABELS
from .errors import DataError
from .tables import text_table

SCHEMA = "edgecxr.metrics/1"
COVID = "covid19"
PARTIAL = -1
ECE_BINS = 15
# A source needs this many images in the split to count for the worst-source figure: below it one
# image moves the rate by more than 10 points.
MIN_SOURCE = 10


# --- building blocks ------------------------------------------------------------------------------


def wilson_ci(k: int, n: int, z: float = 1.96) -> tuple[float | None, float | None]:
    """Wilson score interval for ``k`` successes in ``n`` trials.

    Unlike the normal (Wald) interval it stays inside 0..1 and keeps a sensible width at 0/n and
    n/n, which per-class counts of a few dozen images hit often. With ``n == 0`` there is nothing
    to estimate and the result is ``(None, None)``: JSON-safe (nulls) and loud if used in arithmetic.
    """
    k, n = int(k), int(n)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_ci needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (None, None)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At k == 0 or k == n the bound is exactly 0 or 1 in theory; clip the rounding error.
    return (max(0.0, centre - half), min(1.0, centre + half))


def proportion(k: int, n: int, z: float = 1.96) -> dict:
    """A rate with its counts and Wilson interval, in the shape every metric here uses."""
    k, n = int(k), int(n)
    lo, hi = wilson_ci(k, n, z)
    return {"value": k / n if n else None, "k": k, "n": n, "ci": [lo, hi]}


def f1_score(tp: int, fp: int, fn: int, z: float = 1.96) -> dict:
    """F1 with a Wilson-based interval.

    F1 is not a binomial proportion, but it is a monotone function of one: the Jaccard index
    J = tp / (tp + fp + fn) is the fraction of images that are the class in truth or in
    prediction that are both. The interval is Wilson's interval for J mapped through
    F1 = 2J / (1 + J), so it keeps Wilson's behaviour at the edges and needs no bootstrap.
    """
    tp, fp, fn = int(tp), int(fp), int(fn)
    union = tp + fp + fn
    if union == 0:
        return {"value": None, "ci": [None, None]}
    lo, hi = wilson_ci(tp, union, z)
    return {"value": 2 * tp / (2 * tp + fp + fn), "ci": [2 * lo / (1 + lo), 2 * hi / (1 + hi)]}


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    """Counts with rows = true class and columns = predicted class, as int64.

    Rows whose true label is negative (partial labels) are skipped, so callers can pass the whole
    evaluation set.
    """
    y_true = np.asarray(y_true).astype(np.int64).ravel()
    y_pred = np.asarray(y_pred).astype(np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise DataError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    keep = y_true >= 0
    t, p = y_true[keep], y_pred[keep]
    if np.any(t >= n_classes) or np.any((p < 0) | (p >= n_classes)):
        raise DataError(f"a label or prediction lies outside 0..{n_classes - 1}")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def _midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks where tied values share the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts_run = np.r_[True, xs[1:] != xs[:-1]]
    run_of = np.cumsum(starts_run) - 1
    starts = np.flatnonzero(starts_run)
    ends = np.r_[starts[1:], len(xs)]
    mean_rank = (starts + ends - 1) / 2.0 + 1.0
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = mean_rank[run_of]
    return ranks


def auroc(positive, scores) -> float | None:
    """Area under the ROC curve by the Mann-Whitney rank formula.

    A tie between a positive and a negative score counts one half, which matters for int8 models
    whose outputs take only 256 values. ``None`` when either class is absent (AUROC is undefined).
    """
    positive = np.asarray(positive, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    u = _midranks(scores)[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def calibration(confidence, correct, n_bins: int = ECE_BINS) -> dict:
    """Expected calibration error over equal-width bins of top-1 confidence, with the bins.

    Bin i covers (i/n_bins, (i+1)/n_bins]; a confidence of exactly 0 joins the first bin. ECE is
    the count-weighted mean of |accuracy - mean confidence| over the bins; the bins feed the
    reliability plot (empty bins keep ``None`` for accuracy and confidence).
    """
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=bool).ravel()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for i in range(n_bins):
        members = which == i
        count = int(members.sum())
        acc = float(correct[members].mean()) if count else None
        conf = float(confidence[members].mean()) if count else None
        if count:
            ece += count / len(confidence) * abs(acc - conf)
        bins.append({"lo": float(edges[i]), "hi": float(edges[i + 1]), "count": count,
                     "accuracy": acc, "confidence": conf})
    return {"ece": ece if len(confidence) else None, "n_bins": n_bins, "bins": bins}


def json_safe(obj):
    """Plain Python types only: numpy scalars unwrapped, NaN/inf -> None, floats to 6 decimals."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return round(obj, 6) if math.isfinite(obj) else None
    return obj


# --- evaluation -----------------------------------------------------------------------------------


def evaluate_predictions(
    y_true,
    probs,
    class_names: Sequence[str],
    sources: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    partial_labels: Sequence[str] | None = None,
    partial_allowed: dict[str, Sequence[str]] | None = None,
) -> dict:
    """Score top-1 predictions against labels; the result is ready for ``json.dumps``.

    ``sources``/``groups`` (one string per row, e.g. the data set an image came from and
    pediatric/adult) add a breakdown per value; ``partial_labels`` names the partial label of each
    ``-1`` row (other rows' entries are ignored; missing names become "unspecified"), and
    ``partial_allowed`` maps it to the classes it allows (default ``edgecxr.PARTIAL_LABELS``).

    Top-level keys: schema, class_names, n, n_labelled, n_partial, accuracy, per_class, macro,
    confusion_matrix, covid_vs_rest, calibration, partial_labels, by_source, by_group,
    called_covid19_by_source, worst_source.
    """
    names = [str(c) for c in class_names]
    y, p = _validate(y_true, probs, names)
    sources = _per_row(sources, len(y), "sources")
    groups = _per_row(groups, len(y), "groups")
    partial = _per_row(partial_labels, len(y), "partial_labels", missing="unspecified")
    if partial is None:
        partial = np.full(len(y), "unspecified", dtype=object)
    pred = p.argmax(axis=1)
    allowed = {label: [names.index(c) for c in classes if c in names]
               for label, classes in (PARTIAL_LABELS if partial_allowed is None else partial_allowed).items()}
    consistent = _label_consistent(y, pred, partial, allowed)

    result = {
        "schema": SCHEMA,
        "class_names": names,
        "n": len(y),
        "n_labelled": int((y >= 0).sum()),
        "n_partial": int((y == PARTIAL).sum()),
        **_labelled_metrics(y, p, pred, names),
        "partial_labels": _partial_summary(y, pred, names, partial, allowed),
        "by_source": _breakdown(sources, y, pred, names, partial, allowed, consistent),
        "by_group": _breakdown(groups, y, pred, names, partial, allowed, consistent),
    }
    result["called_covid19_by_source"] = _called_covid_by_source(sources, groups, y, pred, names)
    result["worst_source"] = worst_source(result["by_source"])
    return json_safe(result)


def _label_consistent(y, pred, partial, allowed: dict[str, list[int]]) -> np.ndarray:
    """Per row: did the top-1 class agree with what the label says (the class itself, or for a
    partial label one of the classes it allows)? Partial labels without a mapping count as wrong."""
    ok = (pred == y) & (y >= 0)
    for label, classes in allowed.items():
        rows = (y == PARTIAL) & (partial == label)
        ok[rows] = np.isin(pred[rows], classes)
    return ok


def worst_source(by_source: dict, min_n: int = MIN_SOURCE) -> dict | None:
    """The source whose images the model gets right least often (label-consistent rate), among
    sources with at least ``min_n`` images: ``{"source", "rate"}`` or None.

    Why: a validation split drawn from the training sources rewards a model that has learned which
    hospital a film came from (external results here fell by 5-10 points against validation). The
    worst source falls first when that happens, so checkpoints and recipes are chosen on it, not on
    the mean that the big pediatric source dominates.
    """
    rows = [(m["label_consistent"]["value"], source, m["label_consistent"]) for source, m in by_source.items()
            if m["n"] >= min_n and m["label_consistent"]["value"] is not None]
    if not rows:
        return None
    value, source, rate = min(rows, key=lambda r: (r[0], r[1]))
    return {"source": source, "rate": rate}


def _called_covid_by_source(sources, groups, y, pred, names: list[str]) -> dict:
    """Per source: how many of its non-COVID films (labelled or partial) were called COVID-19.

    This is the shortcut check the field cares about: a model that learned "adult hospital film =
    COVID" calls adult normals, pneumonias and tuberculosis COVID-19, and this rate rises for that
    source only, while the mean accuracy barely moves.
    """
    if sources is None or COVID not in names:
        return {}
    covid = names.index(COVID)
    non_covid = y != covid
    out = {}
    for source in sorted(set(sources[non_covid])):
        rows = non_covid & (sources == source)
        out[source] = {
            "group": str(groups[rows][0]) if groups is not None else "unknown",
            "n": int(rows.sum()),
            "n_partial": int((rows & (y == PARTIAL)).sum()),
            "called_covid19": proportion((pred[rows] == covid).sum(), rows.sum()),
        }
    return out


def agreement(probs_a, probs_b, groups: Sequence[str] | None = None) -> dict:
    """How often two models (e.g. Keras and its int8 export) pick the same top-1 class.

    Needs no labels, so the export guard can compare on any images. Returns
    ``{"agreement": rate, "by_group": {group: rate}, "mean_abs_diff", "max_abs_diff"}`` where the
    differences are between the probability vectors.
    """
    a = np.asarray(probs_a, dtype=np.float64)
    b = np.asarray(probs_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise DataError(f"cannot compare predictions of shapes {a.shape} and {b.shape}")
    if len(a) == 0:
        raise DataError("no predictions to compare")
    same = a.argmax(axis=1) == b.argmax(axis=1)
    groups = _per_row(groups, len(a), "groups")
    by_group = {}
    if groups is not None:
        for g in sorted(set(groups)):
            members = groups == g
            by_group[g] = proportion(same[members].sum(), members.sum())
    diff = np.abs(a - b)
    return json_safe({
        "agreement": proportion(same.sum(), len(same)),
        "by_group": by_group,
        "mean_abs_diff": float(diff.mean()),
        "max_abs_diff": float(diff.max()),
    })


def _validate(y_true, probs, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    if not names:
        raise DataError("no class names given")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(names):
        raise DataError(
            f"probabilities have shape {p.shape}; expected (N, {len(names)}) for {', '.join(names)}"
        )
    if len(p) == 0:
        raise DataError("no predictions to evaluate")
    if not np.all(np.isfinite(p)):
        raise DataError("probabilities contain NaN or infinity; the model output is broken")
    if p.min() < -1e-6 or p.max() > 1 + 1e-6:
        raise DataError(
            f"probabilities must lie in 0..1 (softmax output), got {p.min():.3g}..{p.max():.3g}"
        )
    y = np.asarray(y_true)
    if y.ndim != 1 or len(y) != len(p):
        raise DataError(f"{y.size} labels for {len(p)} predictions")
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not np.all(y == np.round(y))):
        raise DataError("labels must be class indices (integers, -1 for a partial label)")
    y = y.astype(np.int64)
    bad = (y < PARTIAL) | (y >= len(names))
    if bad.any():
        raise DataError(
            f"label index {y[bad][0]} is outside 0..{len(names) - 1} (or -1 for a partial label)"
        )
    return y, p


def _per_row(values, n: int, what: str, missing: str = "unknown") -> np.ndarray | None:
    if values is None:
        return None
    values = [missing if v is None or v == "" else str(v) for v in values]
    if len(values) != n:
        raise DataError(f"{len(values)} {what} for {n} predictions")
    return np.array(values, dtype=object)


def _labelled_metrics(y, p, pred, names: list[str]) -> dict:
    """Everything that needs a full 4-class label: accuracy, per class, matrix, calibration."""
    keep = y >= 0
    y, p, pred = y[keep], p[keep], pred[keep]
    cm = confusion_matrix(y, pred, len(names))
    n = int(cm.sum())
    per_class = {}
    for c, name in enumerate(names):
        tp = int(cm[c, c])
        fn = int(cm[c].sum()) - tp
        fp = int(cm[:, c].sum()) - tp
        tn = n - tp - fn - fp
        per_class[name] = {
            "support": tp + fn,
            "predicted": tp + fp,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "sensitivity": proportion(tp, tp + fn),
            "specificity": proportion(tn, tn + fp),
            "precision": proportion(tp, tp + fp),
            "f1": f1_score(tp, fp, fn),
            "auroc": auroc(y == c, p[:, c]),
        }
    return {
        "accuracy": proportion(np.trace(cm), n),
        "per_class": per_class,
        "macro": _macro(per_class),
        "confusion_matrix": {"labels": names, "rows": "true", "columns": "predicted",
                             "matrix": cm.tolist()},
        "covid_vs_rest": _covid_vs_rest(y, p, pred, names),
        "calibration": calibration(p.max(axis=1), pred == y),
    }


def _macro(per_class: dict) -> dict:
    """Unweighted means over the classes where the metric is defined; the rest are named.

    Macro sensitivity is the balanced accuracy.
    """
    macro, undefined = {}, {}
    for metric in ("sensitivity", "specificity", "precision", "f1", "auroc"):
        values = {}
        for name, m in per_class.items():
            v = m[metric] if metric == "auroc" else m[metric]["value"]
            values[name] = v
        defined = [v for v in values.values() if v is not None]
        macro[metric] = float(np.mean(defined)) if defined else None
        missing = [name for name, v in values.items() if v is None]
        if missing:
            undefined[metric] = missing
    macro["undefined"] = undefined
    return macro


def _covid_vs_rest(y, p, pred, names: list[str]) -> dict | None:
    """The clinically loaded binary question, on fully labelled images, top-1 decision."""
    if COVID not in names:
        return None
    c = names.index(COVID)
    truth, called = y == c, pred == c
    tp = int((truth & called).sum())
    fn = int((truth & ~called).sum())
    fp = int((~truth & called).sum())
    tn = int((~truth & ~called).sum())
    return {
        "positive": COVID,
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "sensitivity": proportion(tp, tp + fn),
        "specificity": proportion(tn, tn + fp),
        "auroc": auroc(truth, p[:, c]),
    }


def _partial_summary(y, pred, names: list[str], partial: np.ndarray, allowed: dict[str, list[int]]) -> dict:
    """Per partial label: n, what was called, not-COVID rate and the rate of an allowed class."""
    rows = y == PARTIAL
    out = {}
    covid = names.index(COVID) if COVID in names else None
    for label in sorted(set(partial[rows])):
        called = pred[rows & (partial == label)]
        n = len(called)
        classes = allowed.get(label)
        out[label] = {
            "n": n,
            "predicted": {name: int((called == c).sum()) for c, name in enumerate(names)},
            "not_called_covid19": _not_called(called, covid) if covid is not None else None,
            "allowed": [names[c] for c in classes] if classes else None,
            "called_allowed": proportion(np.isin(called, classes).sum(), n) if classes else None,
        }
    return out


def _breakdown(keys, y, pred, names: list[str], partial: np.ndarray, allowed: dict[str, list[int]],
               consistent: np.ndarray) -> dict:
    """One compact summary per source or group.

    ``non_covid_not_called_covid19`` is the shortcut check: a model that learned "adult hospital
    film = COVID" calls the adult normals COVID-19, and this rate drops for that source only.
    """
    if keys is None:
        return {}
    covid = names.index(COVID) if COVID in names else None
    out = {}
    for key in sorted(set(keys)):
        members = keys == key
        ys, ps = y[members], pred[members]
        labelled = ys >= 0
        out[key] = {
            "n": int(members.sum()),
            "n_labelled": int(labelled.sum()),
            "accuracy": proportion((ps[labelled] == ys[labelled]).sum(), labelled.sum()),
            # every image, partial labels counted right when an allowed class was called
            "label_consistent": proportion(consistent[members].sum(), members.sum()),
            "sensitivity": {
                name: proportion((ps[ys == c] == c).sum(), (ys == c).sum())
                for c, name in enumerate(names) if (ys == c).any()
            },
            "predicted": {name: int((ps == c).sum()) for c, name in enumerate(names)},
            "non_covid_not_called_covid19": (
                _not_called(ps[labelled & (ys != covid)], covid) if covid is not None else None
            ),
            "partial_labels": _partial_summary(ys, ps, names, partial[members], allowed),
        }
    return out


def _not_called(called: np.ndarray, cls: int) -> dict:
    return proportion((called != cls).sum(), len(called))


# Macro sensitivity (balanced accuracy) this close to chance, or below, counts as no skill; see useless_reasons.
CHANCE_MARGIN = 0.05


def useless_reasons(metrics: dict) -> list[str]:
    """Why a model scored by :func:`evaluate_predictions` (on validation) is useless; empty if it is not.

    Two signs, either enough: a class the model never predicts (on any image, partial labels
    included), and macro sensitivity at or below chance, ``1 / classes`` plus :data:`CHANCE_MARGIN`.
    A model that calls everything one class has exactly chance macro sensitivity and passes the
    accuracy guard (its int8 copy agrees perfectly), so train, export and the model card used to
    present it like any other. The margin, 5 points: guessing at random on a validation split of
    ~50 images per class gives per-class sensitivities with a standard deviation of about 6 points
    (sqrt(p(1 - p) / 50), p = 1/4), so their mean over four classes varies by about 3; 5 points is
    well outside that noise, and far below what any model that learned something scores here
    (models/MODEL_CARD.md: 0.818 on the validation split).
    """
    names = list(metrics.get("class_names") or [])
    if not names or not metrics.get("n"):
        return []
    reasons = []
    predicted = {name: metrics["per_class"][name]["predicted"] for name in names}
    for partial in (metrics.get("partial_labels") or {}).values():
        for name, count in partial["predicted"].items():
            predicted[name] = predicted.get(name, 0) + count
    never = [name for name in names if predicted.get(name, 0) == 0]
    if never:
        reasons.append(f"it never predicts {', '.join(never)} on {metrics['n']} validation images")
    macro = (metrics.get("macro") or {}).get("sensitivity")
    chance = 1.0 / len(names)
    if macro is not None and macro <= chance + CHANCE_MARGIN:
        reasons.append(f"its macro sensitivity {macro:.3f} is at chance (1/{len(names)} = {chance:.3f}, "
                       f"+{CHANCE_MARGIN:g} margin)")
    return reasons


def useless_warning(reasons: Sequence[str]) -> str:
    """The one sentence train, export and the model card print for a useless model."""
    return "this model looks useless: " + "; ".join(reasons)


# --- tables shared by the terminal report and report.md -------------------------------------------


def fmt_rate(rate: dict | None, digits: int = 3) -> str:
    """``0.625 (0.306-0.863)``, or ``-`` when undefined."""
    if not rate or rate.get("value") is None:
        return "-"
    lo, hi = rate["ci"]
    return f"{rate['value']:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def fmt_num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_per_class(metrics: dict) -> tuple[list[str], list[list[str]]]:
    header = ["class", "n", "sensitivity", "specificity", "precision", "F1", "AUROC"]
    rows = []
    for name, m in metrics["per_class"].items():
        rows.append([name, str(m["support"]), fmt_rate(m["sensitivity"]),
                     fmt_rate(m["specificity"]), fmt_rate(m["precision"]), fmt_rate(m["f1"]),
                     fmt_num(m["auroc"])])
    macro = metrics["macro"]
    rows.append(["macro", "", *(fmt_num(macro[k]) for k in
                                 ("sensitivity", "specificity", "precision", "f1", "auroc"))])
    return header, rows


def table_confusion(metrics: dict) -> tuple[list[str], list[list[str]]]:
    cm = metrics["confusion_matrix"]
    header = ["true \\ predicted", *cm["labels"]]
    rows = [[label, *(str(v) for v in row)] for label, row in zip(cm["labels"], cm["matrix"])]
    return header, rows


def table_partial(metrics: dict) -> tuple[list[str], list[list[str]]]:
    header = ["partial label", "n", "allows", "not called covid19", "called an allowed class"]
    rows = [[label, str(m["n"]), " or ".join(m.get("allowed") or ["-"]), fmt_rate(m["not_called_covid19"]),
             fmt_rate(m.get("called_allowed"))]
            for label, m in metrics["partial_labels"].items()]
    return header, rows


def table_called_covid(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """Non-COVID films called COVID-19, one row per source, adult sources first (the shortcut check)."""
    header = ["source", "group", "non-COVID films", "of them partial-label", "called COVID-19", "not called COVID-19"]
    rows = []
    items = sorted(metrics.get("called_covid19_by_source", {}).items(), key=lambda kv: (kv[1]["group"] != "adult", kv[0]))
    for source, m in items:
        called = m["called_covid19"]
        not_called = proportion(called["n"] - called["k"], called["n"]) if called["n"] else None
        rows.append([source, m["group"], str(m["n"]), str(m["n_partial"]), fmt_rate(called), fmt_rate(not_called)])
    return header, rows


def table_breakdown(metrics: dict, key: str = "by_source") -> tuple[list[str], list[list[str]]]:
    """One row per source (or group): accuracy, correct/total per class, the COVID shortcut check."""
    names = metrics["class_names"]
    title = {"by_source": "source", "by_group": "group"}.get(key, key)
    header = [title, "n", "accuracy", "right (partial: allowed class)", *(f"{c} ok" for c in names),
              "non-COVID not called COVID-19", "partial not called COVID-19"]
    rows = []
    for value, m in metrics[key].items():
        per = [f"{m['sensitivity'][c]['k']}/{m['sensitivity'][c]['n']}"
               if c in m["sensitivity"] else "-" for c in names]
        rows.append([value, str(m["n"]), fmt_rate(m["accuracy"]), fmt_rate(m.get("label_consistent")), *per,
                     fmt_rate(m["non_covid_not_called_covid19"]),
                     fmt_rate(_pooled_partial(m["partial_labels"]))])
    return header, rows


def _pooled_partial(partial: dict) -> dict | None:
    """All partial labels of one source together: how many were not called COVID-19."""
    rates = [m["not_called_covid19"] for m in partial.values() if m["not_called_covid19"]]
    if not rates:
        return None
    return proportion(sum(r["k"] for r in rates), sum(r["n"] for r in rates))


def format_metrics(metrics: dict) -> str:
    """A compact terminal report: the numbers a reader checks first, 95% Wilson CIs in brackets."""
    acc = metrics["accuracy"]
    extra = f" (+{metrics['n_partial']} partial-label)" if metrics.get("n_partial") else ""
    parts = [
        f"accuracy {fmt_rate(acc)} on {acc['n']} labelled images{extra}; "
        "95% Wilson intervals in brackets",
        "",
        text_table(*table_per_class(metrics)),
        "",
        "confusion matrix (rows true, columns predicted)",
        text_table(*table_confusion(metrics), indent="  "),
    ]
    cvr = metrics.get("covid_vs_rest")
    if cvr:
        parts += ["", f"COVID-19 vs rest: sensitivity {fmt_rate(cvr['sensitivity'])}, "
                      f"specificity {fmt_rate(cvr['specificity'])}, AUROC {fmt_num(cvr['auroc'])}"]
    cal = metrics["calibration"]
    parts += ["", f"calibration: ECE {fmt_num(cal['ece'])} ({cal['n_bins']} bins of top-1 confidence)"]
    if metrics.get("partial_labels"):
        parts += ["", "partial labels (not in the 4-class numbers)",
                  text_table(*table_partial(metrics), indent="  ")]
    for key, title in (("by_source", "by source"), ("by_group", "by group")):
        if metrics.get(key):
            parts += ["", title, text_table(*table_breakdown(metrics, key), indent="  ")]
    if metrics.get("called_covid19_by_source"):
        parts += ["", "non-COVID films called COVID-19, by source (the shortcut check)",
                  text_table(*table_called_covid(metrics), indent="  ")]
    worst = metrics.get("worst_source")
    if worst:
        parts += ["", f"worst source: {worst['source']}, {fmt_rate(worst['rate'])} right "
                      f"(sources with >= {MIN_SOURCE} images)"]
    return "\n".join(parts)
