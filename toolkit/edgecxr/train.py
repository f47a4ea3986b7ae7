"""``edgecxr train``: fit the model on a patient-level split and keep everything in one run directory.

The run directory holds config.json, splits.csv, history.csv, checkpoints (best and last, written
atomically each epoch), plots, model_spec.json and the validation metrics. Images are decoded once
with the same ``preprocess.load_image`` the runtime uses and kept in memory; augmentation and class
balancing happen in a ``tf.data`` pipeline on the training split only.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data as data_mod
from . import distributed
from . import metrics as metrics_mod
from .config import TrainConfig
from .errors import DataError, EdgeCXRError, require
from .io import atomic_temp_path, atomic_write_text
from .progress import NoBar, predict_in_batches, progress


@dataclass
class SplitArrays:
    """One split held in memory: uint8 images, soft targets, and the records they came from."""

    images: np.ndarray
    targets: np.ndarray
    records: list
    class_names: list

    @property
    def labels(self) -> np.ndarray:
        """Hard labels; -1 for partial-label images (e.g. pneumonia without subtype)."""
        index = {name: i for i, name in enumerate(self.class_names)}
        return np.array([index.get(r.label, -1) for r in self.records], dtype=np.int64)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_splits(cfg: TrainConfig, run_dir: Path, out: Path | None = None):
    """Load the records, make (or read) a patient-level split, refuse leakage, save splits.csv.

    ``out`` is where splits.csv is written (the run directory unless this is a non-chief worker);
    a split is read from the run directory, so every worker of a resumed run uses the chief's.
    """
    records = data_mod.load_records(cfg.data, cfg.extra_data, partial_labels=cfg.partial_labels)
    if cfg.splits_file:
        splits = data_mod.load_splits(cfg.splits_file, records)
    elif (run_dir / "splits.csv").is_file():
        splits = data_mod.load_splits(run_dir / "splits.csv", records)
    else:
        split_seed = cfg.seed if cfg.split_seed < 0 else cfg.split_seed
        splits = data_mod.split_by_patient(records, cfg.val_fraction, cfg.test_fraction, split_seed)
    data_mod.check_leakage(records, splits)
    problem = data_mod.empty_class_problem(records, cfg.class_names, splits)
    if problem:  # before any image is loaded or a model built
        raise DataError(problem)
    data_mod.save_splits((out or run_dir) / "splits.csv", records, splits)
    return records, splits


def load_split(records, splits, which: str, cfg: TrainConfig) -> SplitArrays:
    def skipped(path, message):
        log(f"skipped unreadable image: {message}")

    images, kept = data_mod.load_split_arrays(records, splits, which, cfg.image_size, on_error=skipped,
                                              equalize=cfg.equalize, progress=f"loading {which} images")
    targets = np.stack([data_mod.target_vector(r.label, cfg.class_names, cfg.partial_labels)
                        for r in kept]) if kept else (
        np.zeros((0, len(cfg.class_names)), np.float32)
    )
    return SplitArrays(images, targets.astype(np.float32), kept, list(cfg.class_names))


def distilled_targets(train: SplitArrays, cfg: TrainConfig) -> np.ndarray:
    """The training targets with the teachers' mean probability blended in.

    Why: averaging runs beats any single run (benchmarks/SHIPPED_MODEL.md), but n networks cost n
    times the latency on a Pi; a student trained towards their averaged probabilities costs one.
    Teachers are predictions.csv files rather than models, so anything `edgecxr evaluate` can score
    (a larger network, a run at another image size, an ensemble) can teach, and it is computed once
    instead of at every step. Images a teacher never saw are an error, not a silent hard label.
    """
    from .evaluate import read_predictions

    wanted = [os.path.normpath(r.file) for r in train.records]
    total = np.zeros(train.targets.shape, np.float64)
    for path in cfg.teachers:
        try:
            records, probs = read_predictions(path, cfg.class_names)
        except OSError as exc:
            raise DataError(f"teacher {path}: {exc.strerror or exc}") from None
        by_file = {os.path.normpath(r.file): p for r, p in zip(records, probs)}
        missing = [f for f in wanted if f not in by_file]
        if missing:
            others = len(set(by_file) - set(wanted))
            hint = (f"it scored {others} image(s) outside this run's training split, so it was made for another "
                    "split: train with the teacher's data, split_seed and split fractions" if others else
                    "make one with: edgecxr evaluate RUN --split train")
            raise DataError(f"teacher {path} has no prediction for {len(missing)} training image(s), "
                            f"e.g. {missing[0]}; {hint}")
        total += np.stack([by_file[f] for f in wanted])
    teacher = total / len(cfg.teachers)
    blended = (1 - cfg.distill_weight) * train.targets + cfg.distill_weight * teacher
    # A partial label keeps its own target (the set of classes it allows): a teacher's guess at the
    # subtype is exactly what the label does not know.
    partial = np.any(train.targets < 0, axis=1)
    return np.where(partial[:, None], train.targets, blended).astype(np.float32)


def epoch_indices(train: SplitArrays, cfg: TrainConfig, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """The training order for one epoch and a per-sample weight.

    ``oversample`` draws every fully-labelled class up to the size of the largest one (with
    replacement, reshuffled each epoch with a seed derived from the epoch, so a resumed run sees
    the same sequence); with ``balance_groups`` each class's draw is shared equally between its
    age groups. The images of each partial label are drawn ``partial_share`` of the largest class
    per epoch (each label its own share, so 400 tuberculosis films do not crowd out 250 pneumonias).
    ``class_weight`` keeps the natural order and weights the loss inversely to class frequency.
    """
    rng = np.random.default_rng([cfg.seed, epoch])
    labels = train.labels
    weights = np.ones(len(labels), np.float32)
    if cfg.balance == "oversample":
        classes = [c for c in range(len(cfg.class_names)) if np.any(labels == c)]
        largest = max(int(np.sum(labels == c)) for c in classes)
        groups = np.array([r.group for r in train.records])
        parts = []
        for c in classes:
            members = np.flatnonzero(labels == c)
            cells = [members]
            if cfg.balance_groups:
                big = [members[groups[members] == g] for g in sorted(set(groups[members]))]
                big = [cell for cell in big if len(cell) >= cfg.min_group]
                if len(big) > 1:
                    rest = np.setdiff1d(members, np.concatenate(big))
                    cells = big[:-1] + [np.concatenate([big[-1], rest])]
            share = largest // len(cells)
            for cell in cells:
                parts.append(_draw(cell, share, rng))
        partial_names = np.array([r.label for r in train.records], dtype=object)
        for name in sorted(set(partial_names[labels < 0])):
            members = np.flatnonzero((labels < 0) & (partial_names == name))
            parts.append(_draw(members, int(cfg.partial_share * largest), rng) if cfg.partial_share > 0 else members)
        order = np.concatenate(parts).astype(np.int64)
    else:
        order = np.arange(len(labels))
        if cfg.balance == "class_weight":
            counts = np.bincount(labels[labels >= 0], minlength=len(cfg.class_names)).astype(np.float64)
            present = counts > 0
            per_class = np.where(present, counts.sum() / np.maximum(counts, 1) / present.sum(), 0.0)
            weights = np.where(labels >= 0, per_class[np.maximum(labels, 0)], 1.0).astype(np.float32)
    rng.shuffle(order)
    return order, weights


def _draw(members: np.ndarray, count: int, rng) -> np.ndarray:
    """Every member once, topped up with random repeats (or a random subset if count is smaller)."""
    if count <= len(members):
        return rng.choice(members, count, replace=False)
    return np.concatenate([members, rng.choice(members, count - len(members), replace=True)])


def augmenter(cfg: TrainConfig, tf):
    """The training augmentation the config asks for: ``affine`` (default) or ``keras_layers``."""
    if cfg.augmentation == "keras_layers":
        return keras_layers_augmenter(cfg, tf, require("tf_keras", "train"))
    return affine_augmenter(cfg, tf)


def keras_layers_augmenter(cfg: TrainConfig, tf, keras):
    """The augmentation runs before 2026-11-26 used (the shipped run B among them), kept so that
    recipe can be rerun as it was: Keras preprocessing layers, one resampling pass per transform,
    stateful random draws (a rerun sees other draws)."""
    layers = []
    if cfg.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=cfg.seed))
    if cfg.rotation_deg > 0:
        layers.append(keras.layers.RandomRotation(cfg.rotation_deg / 360.0, fill_mode="constant", seed=cfg.seed + 1))
    if cfg.zoom > 0:
        layers.append(keras.layers.RandomZoom(cfg.zoom, fill_mode="constant", seed=cfg.seed + 2))
    if cfg.shift > 0:
        layers.append(keras.layers.RandomTranslation(cfg.shift, cfg.shift, fill_mode="constant", seed=cfg.seed + 3))
    geometric = keras.Sequential(layers) if layers else None

    def apply(images, step=0):
        x = tf.cast(images, tf.float32)
        if geometric is not None:
            x = geometric(x, training=True)
        batch = tf.shape(x)[0]
        if cfg.brightness > 0:
            x = x + tf.random.uniform([batch, 1, 1, 1], -cfg.brightness, cfg.brightness) * 255.0
        if cfg.contrast > 0:
            factor = tf.random.uniform([batch, 1, 1, 1], 1 - cfg.contrast, 1 + cfg.contrast)
            mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
            x = (x - mean) * factor + mean
        return tf.clip_by_value(x, 0.0, 255.0)

    return apply


def affine_augmenter(cfg: TrainConfig, tf):
    """Training-only augmentation: flips, small rotations, zoom/shift, brightness and contrast.

    The geometric part is one affine warp per image (flip, rotation, zoom and shift composed into a
    single matrix) rather than a chain of Keras preprocessing layers: on two CPU cores the chain of
    four resampling passes cost about a fifth of each training step (benchmarks/AUGMENT_SPEED.md).
    Random draws are stateless, keyed by (seed, batch number), so a run and its resume see the same
    images. Geometric transforms fill with black (the edge of a film); intensity jitter is applied
    in 0..255 so the model's own rescaling still sees the range it expects. ``aspect``, ``gamma`` and
    ``border`` (off by default) blur cues that tell the sources apart rather than the lungs.
    """
    rotation = cfg.rotation_deg * math.pi / 180.0
    geometric = cfg.flip or rotation > 0 or cfg.zoom > 0 or cfg.shift > 0 or cfg.aspect > 0

    def apply(images, step=0):
        x = tf.cast(images, tf.float32)
        batch, height, width = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
        key = tf.stack([tf.constant(cfg.seed, tf.int64), tf.cast(step, tf.int64)])

        def draw(i, low, high):
            return tf.random.stateless_uniform([batch], seed=key + [0, 1_000_003 * i], minval=low, maxval=high)

        if geometric:
            x = tf.raw_ops.ImageProjectiveTransformV3(
                images=x, transforms=affine_transforms(tf, cfg, draw, batch, rotation, height, width),
                output_shape=tf.stack([height, width]), fill_value=0.0,
                interpolation="BILINEAR", fill_mode="CONSTANT")
        if cfg.brightness > 0:
            x = x + tf.reshape(draw(5, -cfg.brightness, cfg.brightness), [-1, 1, 1, 1]) * 255.0
        if cfg.contrast > 0:
            factor = tf.reshape(draw(6, 1 - cfg.contrast, 1 + cfg.contrast), [-1, 1, 1, 1])
            mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
            x = (x - mean) * factor + mean
        x = tf.clip_by_value(x, 0.0, 255.0)
        if cfg.gamma > 0:
            power = tf.reshape(tf.exp(draw(9, -cfg.gamma, cfg.gamma)), [-1, 1, 1, 1])
            x = 255.0 * tf.pow(x / 255.0, power)
        if cfg.border > 0:
            x = x * border_mask(tf, draw, cfg.border, height, width)
        return x

    return apply


def border_mask(tf, draw, share: float, height, width):
    """Per-image masks that are 0 within a random band (up to ``share`` of the side) at each edge."""
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    rows = tf.range(h)[None, :] + 0.5
    cols = tf.range(w)[None, :] + 0.5
    top, bottom = draw(10, 0.0, share)[:, None] * h, h - draw(11, 0.0, share)[:, None] * h
    left, right = draw(12, 0.0, share)[:, None] * w, w - draw(13, 0.0, share)[:, None] * w
    keep_rows = tf.cast((rows >= top) & (rows <= bottom), tf.float32)
    keep_cols = tf.cast((cols >= left) & (cols <= right), tf.float32)
    return (keep_rows[:, :, None] * keep_cols[:, None, :])[..., None]


def affine_transforms(tf, cfg: TrainConfig, draw, batch, rotation: float, height, width):
    """Per-image 8-vectors mapping output pixels back to input pixels (what the warp op expects).

    Forward, an image is flipped about its centre, rotated by t, scaled by (sx, sy) and shifted by
    d; the inverse map is in = F R(-t) S^-1 (out - c - d) + c.
    """
    ones, zero = tf.ones([batch]), tf.zeros([batch])
    flip = tf.where(draw(1, 0.0, 1.0) < 0.5, -ones, ones) if cfg.flip else ones
    angle = draw(2, -rotation, rotation) if rotation > 0 else zero
    scale = draw(3, 1 - cfg.zoom, 1 + cfg.zoom) if cfg.zoom > 0 else ones
    stretch = tf.sqrt(draw(8, 1 - cfg.aspect, 1 + cfg.aspect)) if cfg.aspect > 0 else ones
    sx, sy = scale * stretch, scale / stretch
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    dx = draw(4, -cfg.shift, cfg.shift) * w if cfg.shift > 0 else zero
    dy = draw(7, -cfg.shift, cfg.shift) * h if cfg.shift > 0 else zero
    cx, cy = (w - 1) / 2, (h - 1) / 2
    cos, sin = tf.cos(angle), tf.sin(angle)
    a00, a01, a10, a11 = flip * cos / sx, flip * sin / sy, -sin / sx, cos / sy
    ox, oy = cx + dx, cy + dy
    return tf.stack([a00, a01, cx - a00 * ox - a01 * oy,
                     a10, a11, cy - a10 * ox - a11 * oy, zero, zero], axis=1)


def make_dataset(train: SplitArrays, cfg: TrainConfig, first_epoch: int, tf, keras, global_batch: int,
                 end_epoch: int | None = None, shard: tuple[int, int] = (0, 1), batch: int | None = None):
    """A tf.data pipeline over epochs ``first_epoch`` to ``end_epoch`` (default: the last), with a
    fixed number of steps per epoch.

    ``shard=(p, n)`` keeps input pipeline p's slice of every global batch (one pipeline per worker,
    see distributed.shard_order), in batches of ``batch`` (the per-replica batch).
    """
    orders, weights = [], None
    for epoch in range(first_epoch, cfg.epochs if end_epoch is None else end_epoch):
        order, weights = epoch_indices(train, cfg, epoch)
        orders.append(order)
    steps = math.ceil(len(orders[0]) / global_batch)
    # pad each epoch to whole batches so every epoch is exactly `steps` batches
    orders = [np.resize(o, steps * global_batch) for o in orders]
    index = np.concatenate(orders)
    pipeline, pipelines = shard
    batch = batch or global_batch
    if pipelines > 1:
        index = distributed.shard_order(index, global_batch, pipeline, pipelines)
    local = global_batch // pipelines // batch  # this pipeline's batches per step
    images = tf.constant(train.images)
    targets = tf.constant(train.targets)
    sample_weights = tf.constant(weights)
    augment = augmenter(cfg, tf) if cfg.augment else None

    def gather(number, idx):
        # one augmentation key per (step, replica): a single pipeline's keys are its batch numbers
        step = (number // local) * (pipelines * local) + pipeline * local + number % local
        x = tf.gather(images, idx)
        if augment is not None:
            x = augment(x, step)
        else:
            x = tf.cast(x, tf.float32)
        return x, tf.gather(targets, idx), tf.gather(sample_weights, idx)

    ds = tf.data.Dataset.from_tensor_slices(index).batch(batch, drop_remainder=True)
    # batches are numbered from the start of the run, so a resumed run draws the same augmentations
    ds = ds.enumerate(start=first_epoch * steps * local)
    ds = ds.map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
    return ds, steps


def training_input(train: SplitArrays, cfg: TrainConfig, first_epoch: int, tf, keras, global_batch: int, strategy,
                   end_epoch: int | None = None):
    """The training dataset and steps per epoch; with several workers, each reads only its shard.

    Multi-worker input is built per worker with ``distribute_datasets_from_function`` (no tf.data
    auto-sharding: FILE cannot apply to images held in memory, and DATA would make every worker
    decode and augment the whole global batch, then drop all but its share).
    """
    if cfg.strategy != "multiworker":
        return make_dataset(train, cfg, first_epoch, tf, keras, global_batch, end_epoch=end_epoch)
    steps = []

    def per_worker(context):
        batch = context.get_per_replica_batch_size(global_batch)
        ds, n = make_dataset(train, cfg, first_epoch, tf, keras, global_batch, end_epoch=end_epoch,
                             shard=(context.input_pipeline_id, context.num_input_pipelines), batch=batch)
        steps.append(n)
        log(f"input pipeline {context.input_pipeline_id} of {context.num_input_pipelines}: "
            f"{global_batch // context.num_input_pipelines} of every {global_batch} images per step, "
            f"in batches of {batch}")
        return ds

    dataset = strategy.distribute_datasets_from_function(per_worker)
    return dataset, steps[0]


def strategy_for(cfg: TrainConfig, tf):
    if cfg.strategy == "mirrored":
        return tf.distribute.MirroredStrategy(tf.config.list_logical_devices("CPU") + tf.config.list_logical_devices("GPU"))
    if cfg.strategy == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def learning_rate(cfg: TrainConfig, steps_per_epoch: int, keras, base: float | None = None,
                  epochs: int | None = None, warmup_epochs: int | None = None):
    """The learning rate (or schedule) of one training stage: by default the whole run's."""
    base = cfg.learning_rate if base is None else base
    epochs = cfg.epochs if epochs is None else epochs
    warmup_epochs = cfg.warmup_epochs if warmup_epochs is None else warmup_epochs
    if cfg.lr_schedule == "constant":
        return base
    warmup = min(warmup_epochs, max(0, epochs - 1)) * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=base if warmup == 0 else base * 0.1,
        decay_steps=max(1, epochs * steps_per_epoch - warmup),
        alpha=0.01,
        warmup_target=base if warmup else None,
        warmup_steps=warmup,
    )


@dataclass
class Stage:
    """A stretch of epochs trained with one set of trainable layers and one learning rate."""

    start: int
    end: int
    trainable_top: int | None  # backbone layers trained from the top; None = all (from scratch)
    learning_rate: float
    warmup_epochs: int
    name: str


def training_stages(cfg: TrainConfig) -> list[Stage]:
    """One stage, or the usual two-stage transfer recipe: the head on a frozen backbone first (a
    random head's large gradients would wreck pretrained features), then the top ``fine_tune``
    layers too, at a lower learning rate."""
    from .model import pretrained

    if not pretrained(cfg):
        return [Stage(0, cfg.epochs, None, cfg.learning_rate, cfg.warmup_epochs, "from scratch")]
    if cfg.head_epochs == 0:
        name = f"top {cfg.fine_tune} backbone layers and head" if cfg.fine_tune else "head on a frozen backbone"
        return [Stage(0, cfg.epochs, cfg.fine_tune, cfg.learning_rate, cfg.warmup_epochs, name)]
    return [Stage(0, cfg.head_epochs, 0, cfg.learning_rate, cfg.warmup_epochs, "head on a frozen backbone"),
            Stage(cfg.head_epochs, cfg.epochs, cfg.fine_tune, cfg.learning_rate * cfg.backbone_lr_scale, 0,
                  f"top {cfg.fine_tune} backbone layers and head")]


def partial_label_loss(tf, label_smoothing: float, n_classes: int):
    """Cross-entropy for class targets; -log(summed probability of the allowed classes) for partial
    labels, whose targets mark those classes with -1 (``data.target_vector``)."""

    def loss(y_true, y_pred):
        p = tf.clip_by_value(y_pred, 1e-7, 1.0)
        partial = tf.reduce_any(y_true < 0, axis=-1)
        allowed = tf.nn.relu(-y_true)
        set_loss = -tf.math.log(tf.clip_by_value(tf.reduce_sum(p * allowed, axis=-1), 1e-7, 1.0))
        t = tf.nn.relu(y_true)
        if label_smoothing:
            t = t * (1.0 - label_smoothing) + label_smoothing / n_classes
        cross_entropy = -tf.reduce_sum(t * tf.math.log(p), axis=-1)
        return tf.where(partial, set_loss, cross_entropy)

    return loss


def label_consistent_accuracy(tf):
    """Top-1 accuracy where a partial label counts right when one of its allowed classes is called."""

    def accuracy(y_true, y_pred):
        called = tf.one_hot(tf.argmax(y_pred, axis=-1), tf.shape(y_pred)[-1])
        truth = tf.where(tf.reduce_any(y_true < 0, axis=-1, keepdims=True), tf.nn.relu(-y_true),
                         tf.one_hot(tf.argmax(y_true, axis=-1), tf.shape(y_true)[-1]))
        return tf.reduce_sum(called * truth, axis=-1)

    return accuracy


def numpy_loss(targets: np.ndarray, probs: np.ndarray) -> float:
    """The validation loss, as ``partial_label_loss`` computes it (without label smoothing)."""
    p = np.clip(probs, 1e-7, 1.0)
    partial = np.any(targets < 0, axis=1)
    set_loss = -np.log(np.clip(np.sum(p * np.maximum(-targets, 0), axis=1), 1e-7, 1.0))
    cross_entropy = -np.sum(np.maximum(targets, 0) * np.log(p), axis=1)
    return float(np.mean(np.where(partial, set_loss, cross_entropy)))


class Checkpointer:
    """Evaluate on the validation split after each epoch and write last/best weights atomically.

    Keras' own validation only reports loss and accuracy on hard labels; the best checkpoint is
    chosen on our metrics (e.g. macro sensitivity) computed with the same code as ``evaluate``.
    The state file makes ``--resume`` continue at the right epoch with the right best value.
    """

    def __init__(self, keras, run_dir: Path, val: SplitArrays, cfg: TrainConfig, best: float | None,
                 best_epoch: int | None = None):
        self.keras, self.run_dir, self.val, self.cfg, self.best = keras, run_dir, val, cfg, best
        self.best_epoch, self.improved = best_epoch, False
        self.bar = NoBar()  # EpochReporter's bar while an epoch runs: validation moves it too
        self.ckpt_dir = run_dir / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)

    def _save(self, model, name: str) -> None:
        tmp = atomic_temp_path(self.ckpt_dir / name)
        model.save_weights(str(tmp))
        os.replace(tmp, self.ckpt_dir / name)

    def callback(self, model):
        keras, outer = self.keras, self

        class _CB(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs = logs if logs is not None else {}
                logs.update(outer.validate(model))
                outer._save(model, "last.weights.h5")
                value = logs.get(outer.cfg.monitor)
                improved = value is not None and (outer.best is None or outer.better(value, outer.best))
                outer.improved = improved
                if improved:
                    outer.best, outer.best_epoch = value, epoch
                    outer._save(model, "best.weights.h5")
                state = {"epoch": epoch + 1, "best": outer.best, "best_epoch": outer.best_epoch,
                         "monitor": outer.cfg.monitor}
                atomic_write_text(outer.ckpt_dir / "state.json", json.dumps(state) + "\n")
                logs["best"] = 1.0 if improved else 0.0  # every row has the column: see HistoryWriter

        return _CB()

    def better(self, value: float, best: float) -> bool:
        return value < best if self.cfg.monitor_mode == "min" else value > best

    def validate(self, model) -> dict:
        if len(self.val.images) == 0:
            return {}
        probs = predict_in_batches(lambda x: model.predict(x.astype(np.float32), batch_size=64, verbose=0),
                                   self.val.images, self.bar)
        records = self.val.records
        m = metrics_mod.evaluate_predictions(
            self.val.labels, probs, self.cfg.class_names, sources=[r.source for r in records],
            partial_labels=[r.label for r in records], partial_allowed=self.cfg.partial_labels)
        out = {"val_loss": numpy_loss(self.val.targets, probs), "val_accuracy": m["accuracy"]["value"]}
        if m.get("worst_source"):
            out["val_worst_source"] = m["worst_source"]["rate"]["value"]
        macro = m.get("macro", {}).get("sensitivity")
        if macro is not None:
            out["val_macro_sensitivity"] = macro
        covid = (m.get("covid_vs_rest") or {}).get("sensitivity") or {}
        if isinstance(covid, dict) and covid.get("value") is not None:
            out["val_covid_sensitivity"] = covid["value"]
        return out


def configure_tensorflow(cfg: TrainConfig):
    tf = require("tensorflow", "train")
    keras = require("tf_keras", "train")
    if cfg.num_threads:
        tf.config.threading.set_intra_op_parallelism_threads(cfg.num_threads)
    keras.utils.set_random_seed(cfg.seed)
    return tf, keras


# What a run directory holds (besides files of the user's own, which are never touched).
RUN_FILES = ("config.json", "splits.csv", "history.csv", "model_spec.json", "metrics.json", "report.md",
             "confusion_matrix.png", "reliability.png")
RUN_DIRS = ("checkpoints", "plots", "export")


def clear_run(run_dir: Path) -> list[str]:
    """Remove an earlier run's files from ``run_dir``; return their names.

    ``--force`` means start over: a kept splits.csv would silently reuse the old split under a config
    that claims another seed, and kept exports or evaluations would describe a model that is gone.
    """
    import shutil

    removed = []
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            (run_dir / name).unlink()
            removed.append(name)
    for path in [*(run_dir / d for d in RUN_DIRS), *run_dir.glob("eval-*")]:
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(path.name + "/")
    return removed


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False, force: bool = False) -> Path:
    """Train a model and return its run directory.

    A new run that fails before its first epoch is saved (no ImageNet download, a wrong weights
    file, unusable data) leaves no half-made run behind, so the same command can simply be rerun.
    """
    run_dir = Path(out_dir)
    role = distributed.role_from_env() if cfg.strategy == "multiworker" else None
    chief = role is None or role.is_chief
    if cfg.strategy != "multiworker" and os.environ.get("TF_CONFIG"):
        log(f"note: TF_CONFIG is set, but the strategy is {cfg.strategy}: training alone "
            "(--strategy multiworker trains with the cluster it names)")
    if resume:
        if not (run_dir / "config.json").is_file():
            raise EdgeCXRError(f"--resume: {run_dir} has no config.json to resume from" + ("" if chief else (
                f"; worker {role.position} resumes from the chief's run directory, so it must be readable "
                "here at the same path (shared storage, or a copy of the chief's)")))
        cfg = TrainConfig.load(run_dir / "config.json") if not cfg.data else cfg
    elif chief and run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise EdgeCXRError(f"{run_dir} already holds a run; use --resume to continue it or --force to start over")
    cfg.validate()
    if not cfg.data:
        raise DataError("no data given: pass a folder with class sub-folders or a manifest CSV")
    from .model import weights_path

    weights_path(cfg)  # no weights (a missing file, ImageNet offline) fails here, before any image is loaded
    if role is not None:
        distributed.check_port_free(role)
    if resume or not chief:  # a non-chief worker never touches the run directory
        with distributed.write_dir(run_dir, role) as out:
            return _train(cfg, run_dir, resume=resume, role=role, out=out)
    existed = run_dir.exists()
    if existed and force:
        removed = clear_run(run_dir)
        if removed:
            log(f"--force: removed the earlier run's {', '.join(removed)} from {run_dir}")
    try:
        return _train(cfg, run_dir, resume=False, role=role)
    except BaseException:
        if not (run_dir / "checkpoints" / "best.weights.h5").is_file():
            clear_run(run_dir)
            if not existed and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
        raise


def _train(cfg: TrainConfig, run_dir: Path, resume: bool, role=None, out: Path | None = None) -> Path:
    """Fit, reading a resumed run from ``run_dir`` and writing to ``out`` (the run directory on the
    chief; a temporary directory on the other workers of a multi-worker run)."""
    from . import model as model_mod
    from . import report

    out = out or run_dir

    state_path = run_dir / "checkpoints" / "state.json"
    first_epoch, best, best_epoch = 0, None, None
    if resume and out != run_dir and not state_path.is_file():
        raise EdgeCXRError(f"--resume: worker {role.position} finds no {state_path}; it resumes from the chief's "
                           "checkpoints, so the run directory must be readable here at the same path "
                           "(shared storage, or a copy of the chief's)")
    if resume and state_path.is_file():
        state = json.loads(state_path.read_text())
        first_epoch, best, best_epoch = int(state["epoch"]), state.get("best"), state.get("best_epoch")
        if first_epoch >= cfg.epochs:
            log(f"{run_dir} already finished {first_epoch} of {cfg.epochs} epochs; raise --epochs to train more")
            return run_dir
        log(f"resuming at epoch {first_epoch + 1} of {cfg.epochs} from {run_dir / 'checkpoints' / 'last.weights.h5'}")
    out.mkdir(parents=True, exist_ok=True)
    tf, keras = configure_tensorflow(cfg)
    if cfg.strategy == "multiworker":
        log(f"this is {role.describe()}; waiting for all {role.num_workers} workers to join" if role else
            "multiworker strategy without TF_CONFIG: training as the only worker")

    records, splits = prepare_splits(cfg, run_dir if resume else out, out)  # a new run: each worker splits alike
    cfg.save(out / "config.json")
    t0 = time.time()
    train_arr = load_split(records, splits, "train", cfg)
    val_arr = load_split(records, splits, "val", cfg)
    if len(train_arr.images) == 0:
        raise DataError("the training split has no readable images")
    if cfg.teachers:
        train_arr.targets = distilled_targets(train_arr, cfg)
        log(f"distilling: {cfg.distill_weight:.0%} of every target from the mean of {len(cfg.teachers)} teacher(s)")
    log(f"loaded {len(train_arr.images)} train / {len(val_arr.images)} val images "
        f"at {cfg.image_size}px in {time.time() - t0:.1f}s")

    strategy = strategy_for(cfg, tf)
    global_batch = cfg.batch_size * strategy.num_replicas_in_sync
    workers = role.num_workers if role else 1
    log(f"training on {strategy.num_replicas_in_sync} replica(s) with {strategy.__class__.__name__}, "
        f"global batch {global_batch} = batch {cfg.batch_size} x {strategy.num_replicas_in_sync} replica(s)"
        + (f" on {workers} workers" if role else ""))
    with strategy.scope():
        model = model_mod.build_model(cfg)
        if first_epoch > 0:
            model.load_weights(str(run_dir / "checkpoints" / "last.weights.h5"))

    checkpointer = Checkpointer(keras, out, val_arr, cfg, best, best_epoch)
    reporter = EpochReporter(keras, cfg, len(val_arr.images), checkpointer)
    callbacks = [
        checkpointer.callback(model),
        EpochTimer(keras),
        HistoryWriter(keras, out / "history.csv", first_epoch),
        reporter,
    ]
    stopper = None
    if cfg.early_stopping:
        stopper = keras.callbacks.EarlyStopping(monitor=cfg.monitor, mode=cfg.monitor_mode,
                                                patience=cfg.early_stopping)
        callbacks.append(stopper)
    fit_start = time.time()
    interrupted = False
    steps = 0
    try:
        for stage in training_stages(cfg):
            if stage.end <= first_epoch:
                continue
            start = max(first_epoch, stage.start)
            with strategy.scope():
                steps = fit_stage(model, stage, start, train_arr, cfg, tf, keras, global_batch, callbacks)
            if cfg.early_stopping and model.stop_training:
                break
        if stopper is not None and stopper.stopped_epoch > 0:
            log(f"early stopping after epoch {stopper.stopped_epoch + 1}: {cfg.monitor} did not improve "
                f"for {cfg.early_stopping} epochs")
    except KeyboardInterrupt:
        reporter.close()
        interrupted = True
        log(f"interrupted: the last finished epoch is saved in {run_dir / 'checkpoints'}; "
            f"continue with: edgecxr train --resume --out {run_dir}")
    except tf.errors.OpError as exc:
        if role is None:
            raise
        raise EdgeCXRError(distributed.lost_worker(role, run_dir, exc)) from None
    fit_seconds = time.time() - fit_start

    # a resumed non-chief worker writes best.weights.h5 only when it improves on the chief's best
    if not (out / "checkpoints" / ("best.weights.h5" if out == run_dir else "last.weights.h5")).is_file():
        raise EdgeCXRError("training stopped before the first epoch finished; nothing was saved")
    if role is not None and not interrupted:
        # every worker reads its weights (a collective read of BatchNorm statistics), so they can be compared
        log(f"{role.task_type} {role.index}: final weights {distributed.weights_fingerprint(model.get_weights())}")
        if not role.is_chief:
            distributed.barrier(strategy, tf, role, run_dir)  # stay until the chief has written the run
            log(f"{role.task_type} {role.index}: done; the chief {role.addresses[0]} wrote {run_dir}")
            return run_dir
    atomic_write_text(run_dir / "model_spec.json", model_mod.model_spec(cfg).to_json() + "\n")
    report.plot_history(run_dir / "history.csv", run_dir / "plots")
    session = _read_history(run_dir / "history.csv")[first_epoch:]
    summary = finish(run_dir, cfg, val_arr, keras, train_images=len(train_arr.images),
                     fit_seconds=fit_seconds, steps=steps, global_batch=global_batch,
                     epochs_run=len(session), epoch_seconds=_column(session, "epoch_seconds"))
    if interrupted:
        raise KeyboardInterrupt
    if role is not None:
        distributed.barrier(strategy, tf, role, run_dir)
    log(summary)
    return run_dir


def fit_stage(model, stage: Stage, start: int, train_arr: SplitArrays, cfg: TrainConfig, tf, keras,
              global_batch: int, callbacks) -> int:
    """Train epochs ``start`` to ``stage.end`` of one stage (compiling afresh: which layers train
    changed); return the steps per epoch."""
    from .model import set_backbone_trainable

    if stage.trainable_top is not None:
        set_backbone_trainable(model, stage.trainable_top)
    dataset, steps = training_input(train_arr, cfg, start, tf, keras, global_batch, tf.distribute.get_strategy(),
                                    end_epoch=stage.end)
    lr = learning_rate(cfg, steps, keras, base=stage.learning_rate, epochs=stage.end - stage.start,
                       warmup_epochs=stage.warmup_epochs)
    optimizer = (keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay) if cfg.weight_decay
                 else keras.optimizers.Adam(lr))
    model.compile(optimizer=optimizer,
                  loss=partial_label_loss(tf, cfg.label_smoothing, len(cfg.class_names)),
                  metrics=[keras.metrics.MeanMetricWrapper(label_consistent_accuracy(tf), name="accuracy")])
    if start > stage.start:
        optimizer.iterations.assign((start - stage.start) * steps)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    log(f"epochs {start + 1}-{stage.end}: {stage.name}, learning rate {stage.learning_rate:g}, "
        f"{trainable:,} trainable parameters")
    # Keras' own progress output is off: it shows neither an ETA in non-interactive logs nor our
    # validation metrics' names, and its s/epoch leaves out validation (EpochReporter instead).
    model.fit(dataset, epochs=stage.end, initial_epoch=start, steps_per_epoch=steps,
              callbacks=callbacks, verbose=0)
    return steps


class EpochTimer:
    """Adds seconds per epoch to the logs (and so to history.csv); built lazily because the
    Keras callback base class lives in tf_keras, which this module does not import at load time."""

    def __new__(cls, keras):
        class _Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.time()

            def on_epoch_end(self, epoch, logs=None):
                if logs is not None:
                    logs["epoch_seconds"] = time.time() - self.t0

        return _Timer()


# The epoch line's columns: history.csv key, the name shown, and whether it is a rate (shown in %).
EPOCH_COLUMNS = (
    ("loss", "train loss", False),
    ("accuracy", "train acc", True),
    ("val_loss", "val loss", False),
    ("val_accuracy", "val acc", True),
    ("val_macro_sensitivity", "val macro sens", True),
    ("val_covid_sensitivity", "val covid sens", True),
    ("val_worst_source", "val worst source", True),
)


def epoch_line(epoch: int, epochs: int, logs: dict, monitor: str, best: float | None,
               best_epoch: int | None, improved: bool) -> str:
    """One line per finished epoch, every number named, e.g.
    ``epoch 3/15  train loss 0.912  train acc 61.0%  val loss 1.020  val acc 55.2%  ...  41.2 s/epoch
    | best val_macro_sensitivity 0.5310 (epoch 3, saved)``. The time covers the training steps and
    the validation pass, and is the figure the final summary averages."""
    parts = [f"epoch {epoch + 1}/{epochs}"]
    for key, name, rate in EPOCH_COLUMNS:
        value = logs.get(key)
        if value is not None:
            parts.append(f"{name} {float(value):.1%}" if rate else f"{name} {float(value):.3f}")
    if logs.get("epoch_seconds") is not None:
        parts.append(f"{float(logs['epoch_seconds']):.1f} s/epoch")
    line = "  ".join(parts)
    if best is None:
        return line
    where = f"epoch {best_epoch + 1}" if best_epoch is not None else "an earlier epoch"
    return f"{line} | best {monitor} {best:.4f} ({where}{', saved' if improved else ''})"


class EpochReporter:
    """A progress bar with ETA over each epoch (its training steps, then the validation images)
    and, when the epoch ends, one ``epoch_line``. The bar is drawn on a terminal only; the lines
    are always printed, so a log shows every epoch too."""

    def __new__(cls, keras, cfg: TrainConfig, val_images: int, checkpointer: Checkpointer):
        import contextlib

        class _Reporter(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.stack = contextlib.ExitStack()

            def on_epoch_begin(self, epoch, logs=None):
                self.close()
                steps = int((self.params or {}).get("steps") or 0)  # set by fit for each stage
                bar = self.stack.enter_context(
                    progress(None, steps + val_images, f"epoch {epoch + 1}/{cfg.epochs}", count=False))
                self.bar = checkpointer.bar = bar

            def on_train_batch_end(self, batch, logs=None):
                self.bar.update(1)

            def on_epoch_end(self, epoch, logs=None):
                self.close()
                log(epoch_line(epoch, cfg.epochs, logs or {}, cfg.monitor, checkpointer.best,
                               checkpointer.best_epoch, checkpointer.improved))

            def close(self):
                """End the bar's line (also on Ctrl-C, so the next message starts on a line of its own)."""
                self.stack.close()
                self.bar = checkpointer.bar = NoBar()

        return _Reporter()


class HistoryWriter:
    """history.csv: one row per finished epoch, the whole file rewritten atomically each epoch.

    Keras' CSVLogger takes its columns from the first epoch of each session and appends, so a
    resumed run whose first epoch logged other keys wrote its rows under the wrong header (and the
    plots drew validation accuracy from the wrong column). Here the columns are the union of every
    row's keys, and a resumed run keeps exactly the rows of the epochs it resumes after.
    """

    def __new__(cls, keras, path: Path, first_epoch: int):
        rows = _read_history(path)[:first_epoch] if first_epoch > 0 else []

        class _Writer(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                rows.append({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}})
                columns = ["epoch"] + sorted({k for row in rows for k in row} - {"epoch"})
                buf = io.StringIO()
                writer = csv.DictWriter(buf, fieldnames=columns, restval="NA", lineterminator="\n")
                writer.writeheader()
                writer.writerows(rows)
                atomic_write_text(path, buf.getvalue())

        return _Writer()


def _column(rows: list[dict], name: str) -> list[float]:
    values = []
    for row in rows:
        try:
            values.append(float(row[name]))
        except (KeyError, TypeError, ValueError):
            pass
    return values


def _read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return [{k: v for k, v in row.items() if k is not None} for row in csv.DictReader(fh)]



def finish(run_dir: Path, cfg: TrainConfig, val: SplitArrays, keras, train_images: int,
           fit_seconds: float, steps: int, global_batch: int, epochs_run: int,
           epoch_seconds: list[float] | None = None) -> str:
    """Evaluate the best checkpoint on the validation split and write metrics, report and summary.

    Seconds per epoch is the mean of the per-epoch times EpochReporter printed (training steps and
    validation), so the summary and the epoch lines agree; ``seconds`` is the whole fit.
    """
    from . import model as model_mod
    from . import report

    model, _ = model_mod.load_run_model(run_dir, "best")
    if len(val.images):
        with progress(None, len(val.images), "scoring the best checkpoint on val") as bar:
            probs = predict_in_batches(lambda x: model.predict(x.astype(np.float32), batch_size=64, verbose=0),
                                       val.images, bar)
    else:
        probs = np.zeros((0, len(cfg.class_names)), np.float32)
    metrics = metrics_mod.evaluate_predictions(
        val.labels, probs, cfg.class_names,
        sources=[r.source for r in val.records], groups=[r.group for r in val.records],
        partial_labels=[r.label for r in val.records], partial_allowed=cfg.partial_labels,
    )
    if epoch_seconds:
        per_epoch = float(np.mean(epoch_seconds))
    else:
        per_epoch = fit_seconds / epochs_run if epochs_run > 0 else float("nan")
    metrics["training"] = {
        "epochs_run": epochs_run,
        "seconds": round(fit_seconds, 1),
        "seconds_per_epoch": round(per_epoch, 2) if epochs_run else None,
        "train_images_per_second": round(steps * global_batch / per_epoch, 1) if epochs_run else None,
        "train_images": train_images,
        "split": "val",
    }
    report.write_evaluation(metrics, run_dir, title=f"{run_dir.name}: validation split")
    acc = metrics["accuracy"]
    lo, hi = acc.get("ci", [None, None])
    ci = f" (95% CI {lo:.1%}-{hi:.1%})" if lo is not None else ""
    done = (f"done: {run_dir} | val accuracy {acc['value']:.1%}{ci} on {len(val.images)} images | "
            f"{epochs_run} epoch{'s' if epochs_run != 1 else ''}, {per_epoch:.1f} s/epoch (mean)")
    reasons = metrics_mod.useless_reasons(metrics) if len(val.images) else []
    if reasons:  # no "next: export" for a model that predicts one class for everything
        return (f"{done}\nwarning: {metrics_mod.useless_warning(reasons)}; edgecxr export refuses it without "
                "--force (train longer, check the data with edgecxr data check, or change the recipe)")
    return f"{done} | next: edgecxr export {run_dir} --quantize {suggested_quantization(cfg)}"


def suggested_quantization(cfg: TrainConfig) -> str:
    """What to export a run as first: int8 for the minimalistic network, float16 for the standard one,
    whose full-integer int8 collapses (hard-swish and squeeze-excite: 47-53% validation accuracy in
    benchmarks/TRANSFER.md) and is not faster on the CPUs measured there."""
    return "int8" if cfg.minimalistic else "float16"
