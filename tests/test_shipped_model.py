"""The shipped default model: loads without TensorFlow, says what it expects, and keeps its answers.

The golden file pins the model's output on a few synthetic images (made here, never real X-rays).
Regenerate it only when the shipped model is replaced on purpose:
    python tests/test_shipped_model.py --regenerate
"""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from edgecxr.runtime import Classifier, default_model_path
from synthetic import CLASSES, synthetic_image

GOLDEN = Path(__file__).parent / "golden" / "shipped_model.csv"
TOLERANCE = 0.02  # probabilities; float kernels may round differently on other CPUs (XNNPACK, ARM)


def golden_images():
    rng = np.random.default_rng(2024)
    return [(f"{label}_{i}", np.repeat(synthetic_image(label, rng, 256)[:, :, None], 3, axis=2))
            for label in CLASSES for i in range(2)]


def test_shipped_model_loads_without_tensorflow():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'tf_keras', 'keras'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import json\n"
        "from edgecxr.runtime import Classifier\n"
        "clf = Classifier()\n"
        "import numpy as np\n"
        "p = clf.predict(np.full((300, 300, 3), 128, np.uint8))\n"
        "print(json.dumps({'labels': clf.spec.class_names, 'size': clf.spec.image_size, 'label': p.label,\n"
        "                  'tf': any(m.split('.')[0] == 'tensorflow' for m in sys.modules)}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["labels"] == ["normal", "covid19", "bacterial", "viral"]
    assert out["tf"] is False and out["label"] in out["labels"]


def test_shipped_model_is_the_documented_float16_model():
    """README and MODEL_CARD.md describe a float16 file with float32 I/O at 160 px, under 3 MB."""
    path = default_model_path()
    assert path.name == "edgecxr_float16.tflite"
    assert path.stat().st_size <= 3e6
    clf = Classifier(path)
    assert clf.spec.quantization == "float16" and clf.input_dtype == "float32"
    assert clf.spec.image_size == 160 and clf.spec.equalize and clf.spec.color == "RGB"
    assert clf.spec.architecture == "MobileNetV3Small" and not clf.spec.minimalistic
    assert set(clf.spec.partial_labels) == {"pneumonia_unspecified", "tuberculosis"}


def test_the_float32_twin_gives_the_same_answers():
    """float16 weights are expanded to float32 at load, so the twin must agree on every golden image."""
    half, full = Classifier(default_model_path()), Classifier(default_model_path().with_name("edgecxr_float32.tflite"))
    for _, image in golden_images():
        a, b = half.predict(image), full.predict(image)
        assert a.label == b.label
        assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in half.spec.class_names) < 0.01


def test_shipped_model_matches_its_golden_outputs():
    clf = Classifier(default_model_path())
    with GOLDEN.open() as fh:
        golden = {row["image"]: row for row in csv.DictReader(fh)}
    assert len(golden) == 8
    for name, image in golden_images():
        pred = clf.predict(image)
        row = golden[name]
        assert pred.label == row["label"], name
        for label in clf.spec.class_names:
            assert abs(pred.probabilities[label] - float(row[label])) <= TOLERANCE, (name, label)


def regenerate():
    clf = Classifier(default_model_path())
    with GOLDEN.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", *clf.spec.class_names])
        for name, image in golden_images():
            pred = clf.predict(image)
            writer.writerow([name, pred.label, *(f"{pred.probabilities[c]:.4f}" for c in clf.spec.class_names)])


if __name__ == "__main__" and "--regenerate" in sys.argv:
    sys.path.insert(0, str(Path(__file__).parent))
    regenerate()
