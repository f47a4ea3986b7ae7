"""Copy what the Android build bundles into mobile_app/: the runtime-only edgecxr modules and the model.

    python prepare_android.py [--model path/to/model.tflite]

buildozer packages one directory (this one), so the edgecxr runtime (not the training code, which
needs TensorFlow) is copied to ``mobile_app/edgecxr/`` and the model to
``mobile_app/edgecxr/models/edgecxr_int8.tflite``, where ``default_model_path()`` finds it inside
the APK. Both copies are git-ignored; ``main.py`` prefers ``../toolkit`` when run from a checkout.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The TensorFlow-free modules the app imports (directly or through edgecxr.runtime).
RUNTIME_MODULES = ("__init__.py", "errors.py", "io.py", "preprocess.py", "spec.py", "runtime.py", "saliency.py")
MODEL_NAME = "edgecxr_int8.tflite"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / MODEL_NAME)
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"error: model not found: {args.model} (export one, or pass --model)", file=sys.stderr)
        return 1

    target = HERE / "edgecxr"
    if target.exists():
        shutil.rmtree(target)
    (target / "models").mkdir(parents=True)
    for name in RUNTIME_MODULES:
        shutil.copy2(REPO / "toolkit" / "edgecxr" / name, target / name)
    shutil.copy2(args.model, target / "models" / MODEL_NAME)
    size_mb = args.model.stat().st_size / 1e6
    print(f"bundled {len(RUNTIME_MODULES)} runtime modules and {args.model.name} ({size_mb:.2f} MB) in {target}")
    print("next: buildozer android debug")
    return 0


if __name__ == "__main__":
    sys.exit(main())
