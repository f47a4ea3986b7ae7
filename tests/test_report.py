"""edgecxr.report: files on disk, readable Markdown, and PNGs that are real pictures."""

import json
import sys

import numpy as np
import pytest
from PIL import Image

from edgecxr.errors import ModelFileError
from edgecxr.metrics import evaluate_predictions
from edgecxr.report import plot_history, plot_tradeoff, write_evaluation

NAMES = ["normal", "covid19", "bacterial", "viral"]


@pytest.fixture
def metrics():
    rng = np.random.default_rng(0)
    y = np.array([0, 1, 2, 3] * 6 + [-1] * 4)
    logits = rng.normal(size=(len(y), 4))
    logits[y >= 0, y[y >= 0]] += 2.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    sources = ["kermany"] * 12 + ["ieee8023"] * 12 + ["adult"] * 4
    groups = ["pediatric"] * 12 + ["adult"] * 16
    partial = [""] * 24 + ["pneumonia_unspecified"] * 4
    return evaluate_predictions(y, probs, NAMES, sources=sources, groups=groups,
                                partial_labels=partial)


def assert_real_png(path, min_side=200):
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert min(img.size) >= min_side
        pixels = np.asarray(img.convert("RGB"))
    # a drawing, not a blank canvas: many distinct colours
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10


def test_write_evaluation_writes_every_artifact(metrics, tmp_path):
    out = tmp_path / "eval out"
    paths = write_evaluation(metrics, out, title="Validation of run 1")
    assert set(paths) == {"metrics.json", "report.md", "confusion_matrix.png", "reliability.png"}
    assert all(p.parent == out and p.is_file() for p in paths.values())
    assert json.loads(paths["metrics.json"].read_text()) == metrics
    md = paths["report.md"].read_text()
    assert md.startswith("# Validation of run 1")
    for needle in ("## Per class", "| normal |", "## Confusion matrix", "## COVID-19 vs rest",
                   "Expected calibration error", "## Partial labels", "pneumonia_unspecified",
                   "## By source", "| kermany |", "## By group", "| pediatric |",
                   "![confusion matrix](confusion_matrix.png)", "![reliability diagram](reliability.png)"):
        assert needle in md, needle
    acc = metrics["accuracy"]
    assert f"{acc['value']:.3f} ({acc['ci'][0]:.3f}-{acc['ci'][1]:.3f})" in md
    assert_real_png(paths["confusion_matrix.png"])
    assert_real_png(paths["reliability.png"])
    # no temporary files left behind
    assert sorted(p.name for p in out.iterdir()) == sorted(paths)


def test_write_evaluation_without_matplotlib(metrics, tmp_path, monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    paths = write_evaluation(metrics, tmp_path)
    assert set(paths) == {"metrics.json", "report.md"}
    md = paths["report.md"].read_text()
    assert "matplotlib is not installed" in md and ".png" not in md
    assert not list(tmp_path.glob("*.png"))


def test_write_evaluation_cleans_nan_from_hand_made_metrics(metrics, tmp_path):
    metrics["per_class"]["viral"]["auroc"] = float("nan")
    paths = write_evaluation(metrics, tmp_path)
    saved = json.loads(paths["metrics.json"].read_text())
    assert saved["per_class"]["viral"]["auroc"] is None


HISTORY = """epoch,accuracy,learning_rate,loss,val_accuracy,val_loss
0,0.40,0.001,1.30,0.45,1.20
1,0.55,0.001,1.05,0.50,1.10
2,0.65,0.001,0.90,0.62,0.95
2,0.66,0.001,0.89,0.63,0.94
3,0.72,0.0005,0.75,0.61,0.97
"""


def test_plot_history_writes_accuracy_and_loss(tmp_path):
    csv_path = tmp_path / "history.csv"
    csv_path.write_text(HISTORY)
    paths = plot_history(csv_path, tmp_path / "plots")
    assert set(paths) == {"accuracy.png", "loss.png"}
    for path in paths.values():
        assert_real_png(path)


def test_plot_history_without_validation_or_file(tmp_path):
    csv_path = tmp_path / "history.csv"
    csv_path.write_text("epoch,loss\n0,1.0\n1,0.8\n")
    assert set(plot_history(csv_path, tmp_path)) == {"loss.png"}
    with pytest.raises(ModelFileError, match="not found"):
        plot_history(tmp_path / "missing.csv", tmp_path)
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ModelFileError, match="epoch"):
        plot_history(tmp_path / "bad.csv", tmp_path)


def test_plot_tradeoff_skips_failed_rows(tmp_path):
    rows = [
        {"model": "keras float32", "p50_ms": 180.0, "accuracy": 0.91},
        {"model": "int8", "p50_ms": 12.5, "accuracy": 0.90},
        {"model": "float16", "p50_ms": None, "accuracy": None, "status": "failed"},
    ]
    path = plot_tradeoff(rows, tmp_path / "tradeoff.png")
    assert path == tmp_path / "tradeoff.png"
    assert_real_png(path)
    assert plot_tradeoff(rows[2:], tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_plot_tradeoff_draws_thread_counts_and_intervals(tmp_path):
    """What `edgecxr bench --threads 1,2 --plot` passes: a model's rows at two thread counts share its
    accuracy and its Wilson interval (a model without one is drawn without a bar)."""
    rows = [{"model": m, "threads": t, "p50_ms": ms / t, "accuracy": acc, "accuracy_ci": ci}
            for m, ms, acc, ci in (("a160", 0.46, 0.79, [0.76, 0.82]), ("a128", 0.30, 0.73, [0.70, 0.76]))
            for t in (1, 2)]
    rows.append({"model": "no-ci", "threads": 1, "p50_ms": 0.9, "accuracy": 0.5, "accuracy_ci": None})
    path = plot_tradeoff(rows, tmp_path / "threads.png")
    assert_real_png(path)


def test_report_has_the_called_covid_table_and_worst_source():
    from edgecxr.metrics import evaluate_predictions
    from edgecxr.report import render_markdown

    names = ["normal", "covid19", "bacterial", "viral"]
    y = [0] * 12 + [1] * 12 + [-1] * 12
    pred = [1] * 3 + [0] * 9 + [1] * 12 + [2] * 10 + [1] * 2
    probs = np.eye(4)[pred] * 0.7 + 0.075
    sources = ["nih"] * 12 + ["ieee8023"] * 12 + ["tbx11k"] * 12
    m = evaluate_predictions(y, probs, names, sources=sources, groups=["adult"] * 36,
                             partial_labels=[""] * 24 + ["tuberculosis"] * 12)
    text = render_markdown(m, "t")
    section = text.split("## Non-COVID films called COVID-19, by source")[1]
    assert "| nih | adult | 12 | 0 | 0.250 (" in section
    assert "| tbx11k | adult | 12 | 12 | 0.167 (" in section
    assert "**Worst source: nih**, 0.750 (" in text
