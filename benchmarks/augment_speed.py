#!/usr/bin/env python
"""Training augmentation: one affine warp vs the chain of Keras layers it replaced (both in edgecxr.train).

    python benchmarks/augment_speed.py            # writes benchmarks/AUGMENT_SPEED.md (--force to redo)

Both pipelines draw the same kinds of transform (flip, rotation, zoom, shift, brightness, contrast)
with the shipped recipe's ranges. Measured side by side in one process: augmentation alone on
batches of 32 (images/s), and one training step of the shipped recipe's network with each in the
input pipeline (images/s), so the ratio is what a training run gains, not a guess.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from quant_speed import cpu_name  # benchmarks/ is on sys.path when run as a script

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "benchmarks" / "recipes" / "shipped_long.json"
OUT = REPO / "benchmarks" / "AUGMENT_SPEED.md"


def rate(fn, images_per_call: int, calls: int) -> float:
    fn()  # warm-up / tracing
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return images_per_call * calls / (time.perf_counter() - t0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--force", action="store_true")
    p.add_argument("--steps", type=int, default=15, help="timed training steps per pipeline and round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the table shows the median")
    args = p.parse_args(argv)
    if Path(args.out).exists() and not args.force:
        print(f"error: {args.out} exists (use --force)", file=sys.stderr)
        return 1
    import tensorflow as tf
    import tf_keras as keras

    from edgecxr.config import TrainConfig
    from edgecxr.io import atomic_write_text
    from edgecxr.model import build_model
    from edgecxr.train import affine_augmenter, keras_layers_augmenter

    cfg = TrainConfig.from_dict({**json.loads(RECIPE.read_text()), "weights": "none"})
    batch, size = cfg.batch_size, cfg.image_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch * 8, size, size, 3), dtype=np.uint8)
    labels = np.eye(len(cfg.class_names), dtype=np.float32)[rng.integers(0, len(cfg.class_names), len(images))]
    pipelines = {"Keras layers (before)": keras_layers_augmenter(cfg, tf, keras),
                 "one affine warp (now)": affine_augmenter(cfg, tf)}
    model = build_model(cfg)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="categorical_crossentropy")
    datasets, alone = {}, {}
    for name, aug in pipelines.items():
        fn = tf.function(aug)
        x = tf.constant(images[:batch])
        alone[name] = rate(lambda: fn(x, 0).numpy(), batch, 30)
        datasets[name] = (tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch).enumerate().repeat()
                          .map(lambda i, xy, aug=aug: (aug(xy[0], i), xy[1]), num_parallel_calls=tf.data.AUTOTUNE)
                          .prefetch(2))
    for ds in datasets.values():
        model.fit(ds, steps_per_epoch=3, verbose=0)  # warm-up and tracing
    # Interleaved rounds: a noisy neighbour on a shared VM then slows every pipeline alike.
    trained = {name: [] for name in datasets}
    for _ in range(args.rounds):
        for name, ds in datasets.items():
            t0 = time.perf_counter()
            model.fit(ds, steps_per_epoch=args.steps, verbose=0)
            trained[name].append(batch * args.steps / (time.perf_counter() - t0))
    results = {name: (alone[name], float(np.median(trained[name]))) for name in pipelines}
    spread = {name: (min(v), max(v)) for name, v in trained.items()}

    (old_a, old_t), (new_a, new_t) = results.values()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = ["# Augmentation speed: one affine warp vs a chain of Keras layers", "",
             f"Reproduce: `python benchmarks/augment_speed.py --force` "
             f"({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu_name()}, "
             f"{os.cpu_count()} CPUs, load average {load:.2f} at the end; tensorflow {tf.__version__}).", "",
             f"Shipped recipe: MobileNetV3Small minimalistic, {size} px, batch {batch}, from scratch; random images; "
             f"{args.rounds} interleaved rounds of {args.steps} timed training steps per pipeline (median, "
             "min-max in brackets) after 3 warm-up steps.", "",
             "| pipeline | augmentation alone, images/s | training with it, images/s |",
             "|---|---:|---:|"]
    for name, (rate_alone, rate_trained) in results.items():
        low, high = spread[name]
        lines.append(f"| {name} | {rate_alone:.0f} | {rate_trained:.0f} ({low:.0f}-{high:.0f}) |")
    lines += ["",
              f"The affine warp augments {new_a / old_a:.1f}x faster and training with it runs "
              f"{new_t / old_t:.2f}x faster than with the Keras chain (medians).", ""]
    atomic_write_text(args.out, "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
