"""The model spec: the facts a deployed model needs besides its weights.

Labels, input size, colour, value range and resize rule travel together so that nothing downstream
(runtime, bench, the app, the model card) hard-codes 224 or the label order. Export writes the spec
twice: inside the ``.tflite`` file (as a zip of associated files appended to the flatbuffer, the same
mechanism TFLite metadata uses for label files, which the interpreter ignores) and as a sidecar
``<model>.json``. Reading it needs only the standard library.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from . import CLASS_NAMES, PARTIAL_LABELS
from .errors import ModelFileError

SPEC_MEMBER = "edgecxr_spec.json"
LABELS_MEMBER = "labels.txt"


@dataclass
class ModelSpec:
    """How to feed the model and read its output."""

    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    # labels that are not classes -> the classes they allow (how evaluate and the guard score them)
    partial_labels: dict = field(default_factory=lambda: {k: list(v) for k, v in PARTIAL_LABELS.items()})
    image_size: int = 224
    # Pixels go in as RGB values 0..255 (float32, or uint8/int8 when the input is quantized); the
    # model rescales them itself (Keras MobileNetV3 include_preprocessing=True).
    color: str = "RGB"
    input_range: tuple[float, float] = (0.0, 255.0)
    resize: str = "squash"  # straight to image_size x image_size, no crop or letterbox
    equalize: bool = False  # histogram equalization after resizing (preprocess.load_image)
    architecture: str = "MobileNetV3Small"
    minimalistic: bool = False
    alpha: float = 1.0
    quantization: str = "none"  # none | float16 | dynamic | int8
    io_dtype: str = "float32"  # float32 | uint8 | int8
    name: str = "edgecxr"
    version: str = ""
    notes: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "input_range" in kwargs:
            kwargs["input_range"] = tuple(kwargs["input_range"])
        spec = cls(**kwargs)
        if not spec.class_names or spec.image_size <= 0:
            raise ModelFileError("model spec has no class names or no image size")
        return spec

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        return cls.from_dict(json.loads(text))


def embed_spec(tflite_bytes: bytes, spec: ModelSpec) -> bytes:
    """Return the flatbuffer with the spec and a labels file appended as a zip archive."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(SPEC_MEMBER, spec.to_json())
        zf.writestr(LABELS_MEMBER, "\n".join(spec.class_names) + "\n")
    return tflite_bytes + buf.getvalue()


def sidecar_path(model_path: str | Path) -> Path:
    model_path = Path(model_path)
    return model_path.with_suffix(".json")


def read_spec(model_path: str | Path) -> ModelSpec:
    """Read the spec embedded in a ``.tflite`` file, else its sidecar JSON.

    Raises ModelFileError naming the file when neither exists, so a plain TFLite model from
    elsewhere gets a message that says what is missing rather than a wrong label order.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelFileError(f"{model_path}: model file not found")
    try:
        with zipfile.ZipFile(model_path) as zf:
            return ModelSpec.from_json(zf.read(SPEC_MEMBER).decode("utf-8"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError):
        pass
    side = sidecar_path(model_path)
    if side.is_file():
        try:
            return ModelSpec.from_json(side.read_text(encoding="utf-8"))
        except (ValueError, TypeError) as exc:
            raise ModelFileError(f"{side}: not a valid edgecxr model spec ({exc})") from None
    raise ModelFileError(
        f"{model_path}: no edgecxr metadata inside the model and no sidecar {side.name}; "
        "export it with `edgecxr export` or write the sidecar JSON"
    )
