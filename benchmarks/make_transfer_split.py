"""Write benchmarks/splits/transfer_split.csv: the shipped model's patient split, extended to the new data.

The earlier shipped models were trained on ``split_by_patient`` (seed 42, 15% val, 15% test) of
``cxr`` + ``cxr_adult_pneumonia``. The transfer-learning runs add ``cxr_adult_tb`` and
``cxr_hannover``. A fresh split of the larger set would move old test patients into training, so
the old and new models could no longer be compared on one test split. Instead:

- every image of ``cxr`` and ``cxr_adult_pneumonia`` keeps its old split;
- a Hannover film goes where its patient (same id in ``cxr``) already is;
- the tuberculosis patients (new to every model) are split by patient with the same rule and seed.

The file lists ``file,split`` only (paths relative to ../shared/data, no patient ids), so it can be
committed and passed as ``--splits`` / ``splits_file`` from the repository root.

    python benchmarks/make_transfer_split.py [--data-root ../shared/data]
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from collections import Counter
from pathlib import Path

from edgecxr import data as data_mod
from edgecxr.io import atomic_write_text

OUT = Path(__file__).parent / "splits" / "transfer_split.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default="../shared/data")
    args = ap.parse_args()
    root = Path(args.data_root)
    old = data_mod.load_records(root / "cxr", [root / "cxr_adult_pneumonia"], notes=[])
    old_splits = data_mod.split_by_patient(old, 0.15, 0.15, seed=42)
    by_patient = {r.patient_id: s for r, s in zip(old, old_splits)}
    hannover = data_mod.load_records(root / "cxr_hannover", notes=[])
    tb = data_mod.load_records(root / "cxr_adult_tb", notes=[])
    missing = [r for r in hannover if r.patient_id not in by_patient]
    if missing:
        raise SystemExit(f"{len(missing)} Hannover films have a patient that is not in cxr")
    tb_splits = data_mod.split_by_patient(tb, 0.15, 0.15, seed=42)
    records = old + hannover + tb
    splits = old_splits + [by_patient[r.patient_id] for r in hannover] + tb_splits
    data_mod.check_leakage(records, splits)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "split"])
    for rec, split in zip(records, splits):
        writer.writerow([os.path.relpath(rec.file, root.resolve()), split])
    OUT.parent.mkdir(exist_ok=True)
    atomic_write_text(OUT, buf.getvalue())
    counts = Counter((r.label, s) for r, s in zip(records, splits))
    for label in data_mod.known_labels({r.label: () for r in records}):
        if any(k[0] == label for k in counts):
            print(f"{label:24s}", "  ".join(f"{s} {counts[(label, s)]:4d}" for s in data_mod.SPLITS))
    print(f"wrote {OUT} ({len(records)} images)")


if __name__ == "__main__":
    main()
