"""Make a copy of a data folder with every X-ray cropped to its lung fields, for an experiment.

Question: the shipped model may tell sources (one pediatric hospital, several adult ones) apart by
what lies outside the lungs: text and markers, borders, shoulders and arms, the body's outline.
Does training on the lung fields alone keep adult non-COVID images from being called COVID-19
better than the source-cue augmentations do, and at what cost in accuracy?

No lung masks come with the data and no segmentation model can be downloaded here, so the boxes
come from the `lungs-finder` package on PyPI (Apache-2.0): OpenCV HOG, Haar and LBP detectors of
the left and right lung, bundled with it. Darkness-based lung finders were tried first and fail on
the images that matter, because an opacity is exactly what makes a lung not dark.

    pip install "opencv-python-headless<5" lungs-finder    # OpenCV 5 has no HOGDescriptor
    python benchmarks/lung_crop.py ../shared/data/cxr runs/lungcrop-data/cxr
    python benchmarks/lung_crop.py ../shared/data/cxr_adult_pneumonia runs/lungcrop-data/cxr_adult_pneumonia
    edgecxr train --config benchmarks/recipes/lungcrop_seed45.json --out runs/lungcrop45

The copy keeps MANIFEST.csv and the file names, so the patient-level split (split_seed 42) is the
same as the shipped model's. It is written outside the repository (`runs/` is ignored): the images
never enter git. ``boxes.csv`` beside the copy records each box and whether the detector found one.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

FINDER_SIZE = 256  # the detectors were trained on small films; 256 px takes ~30 ms per image
PAD = 0.06  # of the image, on every side of the box, so the costophrenic angles stay in
MIN_W, MIN_H = 0.45, 0.40  # a box narrower or shorter than this is a miss: keep the whole film


def _finders():
    try:
        from lungs_finder import haar_finder, hog_finder, lbp_finder
    except ImportError as exc:
        sys.exit(f"lung_crop.py needs OpenCV 4 and lungs-finder ({exc}); "
                 "pip install 'opencv-python-headless<5' lungs-finder")
    return hog_finder, haar_finder, lbp_finder


def lung_box(gray: np.ndarray) -> tuple[float, float, float, float] | None:
    """Both lungs' box in relative coordinates, or None when the detectors miss.

    Same order of detectors as lungs-finder's own ``get_lungs`` (HOG, then LBP when the two HOG
    boxes overlap, then Haar and LBP for a lung not found, a missing lung mirrored across the
    spine), but returning the box rather than the cropped pixels.
    """
    hog, haar, lbp = _finders()
    right, left = hog.find_right_lung_hog(gray), hog.find_left_lung_hog(gray)
    if right is not None and left is not None and abs(right[0] - left[0]) < min(right[2], left[2]):
        right, left = lbp.find_right_lung_lbp(gray), lbp.find_left_lung_lbp(gray)
    right = right if right is not None else haar.find_right_lung_haar(gray)
    left = left if left is not None else haar.find_left_lung_haar(gray)
    right = right if right is not None else lbp.find_right_lung_lbp(gray)
    left = left if left is not None else lbp.find_left_lung_lbp(gray)
    if right is None and left is None:
        return None
    if right is None:
        x, y, w, h = left
        right = (int(x - w - w / 5), y, w, h)
    if left is None:
        x, y, w, h = right
        left = (int(x + w + w / 5), y, w, h)
    size = float(gray.shape[1])
    x0 = min(right[0], left[0]) / size - PAD
    y0 = min(right[1], left[1]) / size - PAD
    x1 = max(right[0] + right[2], left[0] + left[2]) / size + PAD
    y1 = max(right[1] + right[3], left[1] + left[3]) / size + PAD
    x0, y0, x1, y1 = max(0.0, x0), max(0.0, y0), min(1.0, x1), min(1.0, y1)
    if x1 - x0 < MIN_W or y1 - y0 < MIN_H:
        return None
    return x0, y0, x1, y1


def crop_folder(src: Path, dst: Path) -> dict:
    rows = list(csv.DictReader(open(src / "MANIFEST.csv", newline="", encoding="utf-8")))
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "MANIFEST.csv", dst / "MANIFEST.csv")
    counts = {"found": 0, "whole film": 0}
    boxes = []
    for row in rows:
        with Image.open(src / row["file"]) as opened:
            img = ImageOps.exif_transpose(opened).convert("RGB")
        gray = np.asarray(img.convert("L").resize((FINDER_SIZE, FINDER_SIZE), Image.Resampling.BILINEAR))
        box = lung_box(gray)
        kind = "found" if box else "whole film"
        counts[kind] += 1
        x0, y0, x1, y1 = box or (0.0, 0.0, 1.0, 1.0)
        w, h = img.size
        out = dst / row["file"]
        out.parent.mkdir(parents=True, exist_ok=True)
        img.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h))).save(out, quality=95)
        boxes.append([row["file"], kind, f"{x0:.3f}", f"{y0:.3f}", f"{x1:.3f}", f"{y1:.3f}"])
    with open(dst / "boxes.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "box", "x0", "y0", "x1", "y1"])
        writer.writerows(boxes)
    return counts


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    if not (src / "MANIFEST.csv").is_file():
        sys.exit(f"{src}: no MANIFEST.csv")
    counts = crop_folder(src, dst)
    print(f"{dst}: {counts['found']} cropped to the lungs, {counts['whole film']} kept whole (no lungs found)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
