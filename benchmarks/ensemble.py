#!/usr/bin/env python
"""Would averaging runs help? Score the mean of several evaluations' predictions.csv files.

    edgecxr evaluate runs/a --split val --out runs/a/eval-val      # once per run
    python benchmarks/ensemble.py runs/a/eval-val runs/b/eval-val

Each input is scored alone and then their average probability, on the images all of them saw, with the
same scorer as `edgecxr evaluate`. An ensemble is not something to ship on a Pi (n times the latency);
a clear gain is the case for distilling it into one small model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from edgecxr import CLASS_NAMES
from edgecxr.errors import EdgeCXRError
from edgecxr.evaluate import read_predictions, score

ROWS = [("accuracy", lambda m: m["accuracy"]),
        ("macro sensitivity", lambda m: {"value": m["macro"]["sensitivity"]}),
        *((f"{c} sensitivity", lambda m, c=c: m["per_class"][c]["sensitivity"]) for c in CLASS_NAMES),
        ("NIH adult normals not called COVID-19",
         lambda m: m["by_source"].get("nih", {}).get("non_covid_not_called_covid19", {})),
        ("adult pneumonia not called COVID-19",
         lambda m: m["partial_labels"].get("pneumonia_unspecified", {}).get("not_called_covid19", {}))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("evaluations", nargs="+", help="folders (or files) holding predictions.csv")
    args = p.parse_args(argv)
    try:
        loaded = [read_predictions(_csv(e), CLASS_NAMES) for e in args.evaluations]
    except (OSError, EdgeCXRError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    common = set.intersection(*({r.file for r in recs} for recs, _ in loaded))
    columns, records = [], None
    for recs, probs in loaded:
        keep = [i for i, r in enumerate(recs) if r.file in common]
        order = sorted(keep, key=lambda i: recs[i].file)
        records = [recs[i] for i in order]
        columns.append(probs[order])
    names = [Path(e).parent.name + "/" + Path(e).name if Path(e).is_dir() else e for e in args.evaluations]
    results = [score(records, probs, CLASS_NAMES) for probs in columns]
    results.append(score(records, np.mean(columns, axis=0), CLASS_NAMES))
    print(f"{len(records)} images seen by all {len(columns)} evaluations")
    print("| metric | " + " | ".join([*names, "mean of all"]) + " |")
    print("|---" * (len(names) + 2) + "|")
    for label, get in ROWS:
        print(f"| {label} | " + " | ".join(_fmt(get(m)) for m in results) + " |")
    return 0


def _csv(evaluation: str) -> Path:
    path = Path(evaluation)
    return path / "predictions.csv" if path.is_dir() else path


def _fmt(entry: dict) -> str:
    value = entry.get("value")
    if value is None:
        return "n/a"
    ci = f" ({entry['ci'][0]:.1%}-{entry['ci'][1]:.1%})" if entry.get("ci") else ""
    return f"{value:.1%}{ci}"


if __name__ == "__main__":
    sys.exit(main())
