"""Copy what the Android build bundles into mobile_app/: the runtime-only edgecxr modules and the model.

    python prepare_android.py [--model path/to/model.tflite]

buildozer packages one directory (this one), so the edgecxr runtime (not the training code, which
needs TensorFlow) is copied to ``mobile_app/edgecxr/`` and the model to
``mobile_app/edgecxr/models/`` under the shipped model's name (``runtime.DEFAULT_MODEL_NAME``), where ``default_model_path()`` finds it inside
the APK. Both copies are git-ignored; ``main.py`` prefers ``../toolkit`` when run from a checkout.
"""

from __future__ import annotations

import argparse
import ast
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PACKAGE = REPO / "toolkit" / "edgecxr"
# The edgecxr modules the app imports itself; what they import is found by runtime_modules().
APP_MODULES = ("runtime", "saliency", "preprocess", "dicom", "io", "errors")


def _model_name() -> str:
    """runtime.DEFAULT_MODEL_NAME, read from the source: one name for the shipped file."""
    tree = ast.parse((PACKAGE / "runtime.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "DEFAULT_MODEL_NAME" for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError("runtime.py defines no DEFAULT_MODEL_NAME")


MODEL_NAME = _model_name()


def _relative_imports(module: str) -> set[str]:
    """The edgecxr modules ``module`` imports anywhere in its source (``from .x import``, ``from . import x``)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:  # `from . import dicom` is a module, `from . import PARTIAL_LABELS` a name in __init__
                found.update(a.name for a in node.names if (PACKAGE / f"{a.name}.py").is_file())
    return found


def runtime_modules() -> list[str]:
    """File names of every edgecxr module the app can reach from APP_MODULES (a copy that misses one
    fails on the phone, not here), plus ``__init__.py``."""
    todo, seen = list(APP_MODULES), set()
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(_relative_imports(module) - seen)
    return ["__init__.py", *sorted(f"{m}.py" for m in seen)]


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
    modules = runtime_modules()
    for name in modules:
        shutil.copy2(PACKAGE / name, target / name)
    shutil.copy2(args.model, target / "models" / MODEL_NAME)
    size_mb = args.model.stat().st_size / 1e6
    print(f"bundled {len(modules)} runtime modules and {args.model.name} ({size_mb:.2f} MB) in {target}")
    print("next: buildozer android debug")
    return 0


if __name__ == "__main__":
    sys.exit(main())
