#!/usr/bin/env python
"""Would test-time flipping help? Score each run on its mirrored validation images.

    python benchmarks/flip_tta.py runs/a runs/b          # writes runs/a/eval-val-flip/predictions.csv
    python benchmarks/ensemble.py runs/a/eval-val runs/a/eval-val-flip

The second command prints the run on the images as they are, on the mirrored images, and the mean of
the two: flip test-time augmentation, which would double the latency of every prediction on a device.
Training already flips, so the mirrored view is in distribution; whether averaging both views pays
for the second pass is what this measures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from edgecxr import data as data_mod
from edgecxr.errors import EdgeCXRError
from edgecxr.evaluate import select_split, load_eval_arrays, write_predictions
from edgecxr.model import load_run_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (their splits.csv gives the validation split)")
    args = p.parse_args(argv)
    try:
        for run in map(Path, args.runs):
            model, cfg = load_run_model(run)
            records = data_mod.load_records(cfg.data, tuple(cfg.extra_data))
            records = select_split(records, "val", run / "splits.csv")
            images, kept = load_eval_arrays(records, cfg.image_size, cfg.equalize)
            mirrored = np.ascontiguousarray(images[:, :, ::-1]).astype(np.float32)
            probs = model.predict(mirrored, batch_size=64, verbose=0)
            out = run / "eval-val-flip" / "predictions.csv"
            out.parent.mkdir(exist_ok=True)
            write_predictions(out, kept, probs, list(cfg.class_names))
            print(f"{run}: {len(kept)} mirrored validation images -> {out}")
    except (OSError, EdgeCXRError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
