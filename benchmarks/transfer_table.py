"""One Markdown table of several runs' metrics (validation by default, or any evaluate output).

    python benchmarks/transfer_table.py runs/tl_frozen160 runs/tl_twostage160 ...
    python benchmarks/transfer_table.py runs/a/eval-test/metrics.json ...

Each cell is a rate with its 95% Wilson interval or k/n. The adult checks are "not called COVID-19"
for each adult non-COVID source (NIH normals, NIH pneumonia without subtype, TBX11K tuberculosis,
the ieee8023 collection's own non-COVID films); the last column is the worst source, the number
runs are chosen by (edgecxr.metrics.worst_source).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rate(r, pct=True):
    if not r or r.get("value") is None:
        return "-"
    lo, hi = r["ci"]
    return f"{100 * r['value']:.1f} ({100 * lo:.0f}-{100 * hi:.0f})"


def kn_not_called(m, source, partial=None):
    src = m.get("by_source", {}).get(source)
    if not src:
        return "-"
    r = src["partial_labels"].get(partial, {}).get("not_called_covid19") if partial else src["non_covid_not_called_covid19"]
    if not r or not r["n"]:
        return "-"
    return f"{r['k']}/{r['n']} ({100 * r['value']:.0f}%)"


def row(path: Path) -> list[str]:
    metrics_file = path if path.is_file() else path / "metrics.json"
    m = json.loads(metrics_file.read_text())
    per = m["per_class"]
    worst = m.get("worst_source")
    training = m.get("training") or {}
    name = path.name if path.is_dir() else f"{path.parent.parent.name}/{path.parent.name}"
    return [name, str(m["n"]), rate(m["accuracy"]), f"{100 * m['macro']['sensitivity']:.1f}",
            rate(per["covid19"]["sensitivity"]), rate(per["viral"]["sensitivity"]),
            kn_not_called(m, "nih"), kn_not_called(m, "nih", "pneumonia_unspecified"),
            kn_not_called(m, "tbx11k", "tuberculosis"), kn_not_called(m, "ieee8023"),
            f"{worst['source']} {rate(worst['rate'])}" if worst else "-",
            f"{training['seconds_per_epoch']:.0f}" if training.get("seconds_per_epoch") else "-"]


HEADER = ["run", "images", "accuracy %", "macro sens %", "COVID-19 sens %", "viral sens %",
          "NIH normals not COVID", "NIH pneumonia not COVID", "TB not COVID", "ieee8023 non-COVID not COVID",
          "worst source %", "s/epoch"]


def main(paths: list[str]) -> None:
    rows = [row(Path(p)) for p in paths]
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "|".join(" --- " for _ in HEADER) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
