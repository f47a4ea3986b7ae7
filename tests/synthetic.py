"""Small synthetic chest-X-ray-like data sets for tests (real images never enter the repository).

The classes differ by an easy visual cue (where a bright blob sits), so a tiny model trained for a
few epochs must beat chance; patient ids repeat across images so group splitting is exercised.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("normal", "covid19", "bacterial", "viral")
# folder names as real collections spell them, to exercise alias matching
FOLDER_NAMES = {"normal": "NORMAL", "covid19": "COVID-19", "bacterial": "bacteria", "viral": "Virus"}


def synthetic_image(label: str, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A grayscale 'chest' with a class-specific bright blob and noise, as uint8 (size, size)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 60 + 40 * np.exp(-(((xx - 0.5) / 0.35) ** 2 + ((yy - 0.5) / 0.45) ** 2))
    centers = {"normal": None, "covid19": (0.3, 0.3), "bacterial": (0.7, 0.3), "viral": (0.5, 0.75)}
    c = centers[label]
    if c is not None:
        cx, cy = c[0] + rng.normal(0, 0.03), c[1] + rng.normal(0, 0.03)
        img = img + 150 * np.exp(-(((xx - cx) / 0.12) ** 2 + ((yy - cy) / 0.12) ** 2))
    img = img + rng.normal(0, 8, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def make_dataset(
    root: str | Path,
    per_class: int = 12,
    size: int = 64,
    layout: str = "folders",
    images_per_patient: int = 2,
    seed: int = 0,
    sources: tuple[str, ...] = ("kermany", "ieee8023"),
) -> Path:
    """Write a data set and return the path to pass to edgecxr.

    layout="folders": ``root/<ClassFolder>/<file>.png`` with Kermany-style names
    (``personN_bacteria_K``), so patient ids come from file names. layout="manifest": a flat
    ``root/images`` folder plus ``root/manifest.csv`` with file,label,patient_id,source; the
    returned path is the CSV.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    for ci, label in enumerate(CLASSES):
        for i in range(per_class):
            patient = f"p{ci}_{i // images_per_patient}"
            source = sources[(i // images_per_patient) % len(sources)]
            arr = synthetic_image(label, rng, size)
            if layout == "folders":
                folder = root / FOLDER_NAMES[label]
                kind = {"bacterial": "bacteria", "viral": "virus"}.get(label)
                pid = ci * 1000 + i // images_per_patient
                name = f"person{pid}_{kind}_{i}.png" if kind else f"IM-{pid:04d}-{i:04d}.png"
            else:
                folder = root / "images"
                name = f"{label}_{i:03d}.png"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr, mode="L").save(folder / name)
            rows.append((f"{folder.name}/{name}", label, patient, source))
    if layout == "folders":
        return root
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "patient_id", "source"])
        writer.writerows(rows)
    return manifest
