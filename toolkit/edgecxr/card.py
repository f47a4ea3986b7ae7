"""The model card ``<stem>.md``: what an exported model is, how it was made and how it did, in one page.

One card per exported file, named like it (``edgecxr_int8_uint8io.md`` beside
``edgecxr_int8_uint8io.tflite`` and ``.json``), so every export in a folder keeps its own card.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from . import data as data_mod
from . import metrics as metrics_mod
from .guard import GuardReport
from .spec import ModelSpec
from .tables import counts, mb, md_table, pct


def render_model_card(spec: ModelSpec, guard: GuardReport, *, cfg=None, model_file: str = "", size_bytes: int = 0,
                      latency_ms: float | None = None, data_summary: dict | None = None,
                      notes: dict | None = None) -> str:
    """The card for one exported model, from its spec and the guard's evaluation."""
    notes = notes or spec.notes or {}
    m = guard.tflite_metrics
    names = list(spec.class_names)
    out = [
        f"# Model card: {spec.name}",
        "",
        "**Research prototype, not a medical device.** It has not been evaluated clinically and must "
        "not be used to diagnose, triage or treat anyone.",
        "",
        *([f"**Warning: {metrics_mod.useless_warning(notes['useless'])}.** It was exported only because "
           "`--force` was given; do not deploy it.", ""] if notes.get("useless") else []),
        "## Model",
        "",
        f"- File: `{model_file}` ({mb(size_bytes)}), edgecxr {spec.version}; spec embedded in the file "
        f"and in `{Path(model_file).stem}.json`",
        f"- Architecture: {spec.architecture}{' (minimalistic: ReLU, no squeeze-excite)' if spec.minimalistic else ''}, "
        f"alpha {spec.alpha:g}, input {spec.image_size}x{spec.image_size} {spec.color} "
        f"{spec.input_range[0]:g}..{spec.input_range[1]:g}, resize {spec.resize}"
        f"{', histogram-equalized' if getattr(spec, 'equalize', False) else ''}",
        f"- Classes (output order): {', '.join(names)}",
        f"- Quantization: {spec.quantization} ({notes.get('quantize', {}).get('summary', spec.quantization)}), "
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
                split_line(data_summary)]
        if cfg.partial_labels:
            out.append("- Partial labels, trained on the summed probability of the classes they allow: "
                       + "; ".join(f"`{k}` -> {' or '.join(v)}" for k, v in cfg.partial_labels.items()))
        if cfg.teachers:
            out.append(f"- Distilled: {cfg.distill_weight:.0%} of every training target is the mean probability "
                       f"of {len(cfg.teachers)} teacher(s) ({', '.join(f'`{t}`' for t in cfg.teachers)})")
    if data_summary:
        out += ["", "## Data and splits", "", md_table(*_summary_table(data_summary["by_class"], "label")),
                "", md_table(*_summary_table(data_summary["by_source"], "source (group)"))]
    acc = m["accuracy"]
    out += ["", f"## Validation metrics of this file ({guard.n_images} {guard.split} images)", "",
            f"Accuracy {metrics_mod.fmt_rate(acc)} on {acc['n']} fully labelled images (Keras model: "
            f"{metrics_mod.fmt_rate(guard.keras_metrics['accuracy'])}); top-1 agreement with Keras "
            f"{pct(guard.total.agreement)}. 95% Wilson intervals in brackets. These are validation numbers "
            "(the split used to pick the checkpoint); report test-split numbers from `edgecxr evaluate`.", "",
            md_table(*metrics_mod.table_per_class(m))]
    for key in ("by_source", "by_group"):
        if m.get(key):
            out += ["", md_table(*metrics_mod.table_breakdown(m, key))]
    if m.get("partial_labels"):
        out += ["", "Partial labels (scored on what their label says, not in the 4-class numbers):", "",
                md_table(*metrics_mod.table_partial(m))]
    if m.get("called_covid19_by_source"):
        out += ["", "### Non-COVID films called COVID-19, by source", "",
                "The shortcut check: a model that learned which hospital sent the COVID-19 films calls other "
                "adult films from those hospitals COVID-19. 95% Wilson intervals.", "",
                md_table(*metrics_mod.table_called_covid(m))]
    worst = m.get("worst_source")
    if worst:
        out += ["", f"Worst source: **{worst['source']}**, {metrics_mod.fmt_rate(worst['rate'])} of its images "
                    f"right (partial labels: an allowed class; sources with >= {metrics_mod.MIN_SOURCE} images)."]
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
            "- Four classes only; anything else (effusion, devices, lateral views, and tuberculosis, which "
            "training only teaches is neither normal nor COVID-19) is forced into one of them.",
            ""]
    return "\n".join(out)


def split_line(data_summary: dict | None) -> str:
    """Only claim patient-level splits when the data said who the patients are."""
    missing = (data_summary or {}).get("without_patient_id", 0)
    if not missing:
        return "- Splits are by patient (no patient in two splits)."
    return (f"- Splits are by patient id, but {missing} of {data_summary['images']} images had none and each "
            f"counts as its own patient: one patient's images may be in two splits")


def _quantization_lines(notes: dict) -> list[str]:
    lines = []
    cal = notes.get("calibration")
    if cal:
        lines.append(f"- Calibration: {cal['images']} training images (asked {cal['requested']}), stratified by "
                     f"class ({counts(Counter(cal['by_class']))}) and source ({counts(Counter(cal['by_source']))})")
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
