"""``edgecxr evaluate``: honest metrics for a run directory (Keras) or an exported ``.tflite``.

Both paths feed the same uint8 images (``preprocess.load_image``) and score them with the same
numpy-only ``metrics.evaluate_predictions``, so a Keras number and a TFLite number can be compared.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np

from . import data as data_mod
from . import metrics as metrics_mod
from .errors import DataError, ModelFileError
from .io import atomic_write_text, refuse_overwrite
from .progress import predict_in_batches, progress


# What one evaluation writes into its folder (the PNGs need matplotlib).
EVALUATION_FILES = ("metrics.json", "report.md", "predictions.csv", "confusion_matrix.png", "reliability.png")


def written_files(out_dir: Path) -> list[Path]:
    """The evaluation's files in ``out_dir``, in EVALUATION_FILES order (for "wrote ..." lines)."""
    return [Path(out_dir) / name for name in EVALUATION_FILES if (Path(out_dir) / name).is_file()]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def select_split(records, split: str, splits_file: Path | None):
    """The records of one split; ``all`` (or no split file) means every record."""
    if split == "all":
        return records
    if splits_file is None:
        raise DataError(f"--split {split} needs a splits.csv (pass --splits FILE, e.g. a run's, or --split all)")
    if not Path(splits_file).is_file():
        raise DataError(f"{splits_file}: splits file not found")
    splits = data_mod.load_splits(splits_file, records)
    data_mod.check_leakage(records, splits)
    chosen = [r for r, s in zip(records, splits) if s == split]
    if not chosen:
        raise DataError(f"no images in split {split!r} of {splits_file}")
    return chosen


def default_split(split: str | None, splits_file) -> tuple[str, str | None]:
    """The split to score when none was named: the test split of a splits file, else every image.
    Returns it with a note to show the user, or None when the split was named."""
    if split is not None:
        return split, None
    if splits_file:
        return "test", f"no --split given: scoring the test split of {splits_file}"
    return "all", "no splits file given: scoring every image"


def load_eval_arrays(records, size: int, equalize: bool = False):
    def skipped(path, message):
        _log(f"skipped unreadable image: {message}")

    splits = ["eval"] * len(records)
    return data_mod.load_split_arrays(records, splits, "eval", size, on_error=skipped, equalize=equalize,
                                      progress="loading images")


def score(records, probs, class_names, partial_labels: dict | None = None) -> dict:
    """Metrics of ``probs`` on ``records``; ``partial_labels`` maps each partial label to the classes
    it allows (the model's own mapping; default ``edgecxr.PARTIAL_LABELS``)."""
    index = {name: i for i, name in enumerate(class_names)}
    y = np.array([index.get(r.label, -1) for r in records], dtype=np.int64)
    return metrics_mod.evaluate_predictions(
        y, probs, list(class_names),
        sources=[r.source for r in records], groups=[r.group for r in records],
        partial_labels=[r.label for r in records], partial_allowed=partial_labels,
    )


def evaluate(target: str | Path, data: str | None = None, split: str | None = None,
             splits_file: str | None = None, out: str | Path | None = None,
             extra: tuple[str, ...] = (), threads: int | None = None,
             force: bool = False) -> tuple[dict, Path]:
    """Score ``target`` on ``data`` and write metrics.json, report.md and plots; return both.

    ``split`` None means the test split when a splits file is known, else every image. Results go
    to ``out``, by default ``RUN/eval-SPLIT`` for a run and ``./eval-MODEL-SPLIT`` for a model file:
    never beside a model file, which may sit in a checkout (the shipped one does) or a read-only
    folder (in the repository's own checkout, .gitignore ignores ``eval-*/``). An earlier
    evaluation there is kept unless ``force``, which replaces all of its files.
    """
    from . import report

    target = Path(target)
    if target.is_dir():
        from .model import load_run_model

        model, cfg = load_run_model(target)
        own_data = data is None
        data = data or cfg.data
        extra = tuple(extra) or (tuple(cfg.extra_data) if own_data else ())
        if splits_file is None and own_data:
            splits_file = target / "splits.csv"
        class_names, size, equalize = list(cfg.class_names), cfg.image_size, cfg.equalize
        partial_labels = cfg.partial_labels

        def predict(images):
            return model.predict(images.astype(np.float32), batch_size=64, verbose=0)

        default_dir, prefix = target, "eval"
    elif target.is_file():
        from .runtime import Classifier

        if data is None:
            raise DataError("evaluating a .tflite file needs --data DATA")
        clf = Classifier(target, num_threads=threads)
        class_names, size, equalize = list(clf.spec.class_names), clf.spec.image_size, clf.spec.equalize
        partial_labels = clf.spec.partial_labels
        predict = clf.predict_arrays
        default_dir, prefix = Path.cwd(), f"eval-{target.stem}"
    else:
        # The path is what is wrong (a typo, a file not exported yet): say so first, in one line.
        raise ModelFileError(f"{target}: not found (evaluate takes a run directory or a .tflite model file)")

    split, note = default_split(split, splits_file)
    if note:
        _log(f"note: {note}")
    out_dir = Path(out) if out else default_dir / f"{prefix}-{split}"
    refuse_overwrite(out_dir / "metrics.json", force)
    for stale in written_files(out_dir):  # --force: none of the earlier evaluation's files survive
        stale.unlink()
    notes: list[str] = []
    records = data_mod.load_records(data, extra, notes=notes, partial_labels=partial_labels)
    for note in notes:
        _log(f"note: {note}")
    records = select_split(records, split, Path(splits_file) if splits_file else None)
    _log(f"scoring {target.name} on {len(records)} images ({split})")
    images, kept = load_eval_arrays(records, size, equalize)
    if not kept:
        raise DataError(f"no readable images to evaluate in {data}")
    with progress(None, len(images), f"scoring {target.name}") as bar:
        probs = predict_in_batches(predict, images, bar)
    metrics = score(kept, probs, class_names, partial_labels)
    metrics["evaluated"] = {"target": str(target), "data": str(data), "split": split, "images": len(kept)}
    if target.is_file():  # an exported model's sidecar may carry its training split's fingerprint
        from .fingerprint import count_training_images, training_note

        seen = count_training_images(target, [r.file for r in kept])
        metrics["evaluated"]["training_images"] = seen
        if seen:
            _log(f"note: {training_note(seen, len(kept))}")
    report.write_evaluation(metrics, out_dir, title=f"{target.name} on {Path(data).name} ({split})")
    write_predictions(out_dir / "predictions.csv", kept, probs, class_names)
    return metrics, out_dir


def write_predictions(path: Path, records, probs, class_names) -> None:
    """One row per image: what it is, what the model said, with every class probability.

    Metrics say how often a model is wrong; this file says on which images, which is where error
    analysis starts, and it lets runs be compared or averaged without running the models again.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "label", "source", "group", "patient_id", "predicted",
                     *(f"p_{name}" for name in class_names)])
    for record, p in zip(records, probs):
        writer.writerow([record.file, record.label, record.source, record.group, record.patient_id,
                         class_names[int(np.argmax(p))], *(f"{float(v):.6f}" for v in p)])
    atomic_write_text(path, buf.getvalue())


def read_predictions(path: str | Path, class_names) -> tuple[list, np.ndarray]:
    """Records and probabilities back from a predictions.csv (in ``class_names`` order)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = [n for n in class_names if f"p_{n}" not in (rows[0] if rows else {})]
    if not rows or missing:
        raise DataError(f"{path}: not a predictions.csv with columns p_{', p_'.join(class_names)}")
    records = [data_mod.Record(file=r["file"], label=r["label"], patient_id=r["patient_id"],
                               source=r["source"], group=r["group"]) for r in rows]
    probs = np.array([[float(r[f"p_{n}"]) for n in class_names] for r in rows], dtype=np.float64)
    return records, probs
