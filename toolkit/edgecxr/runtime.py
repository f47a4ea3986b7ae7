"""Run an exported ``.tflite`` model on images: the code the CLI, the benchmark and the app share.

Only numpy, Pillow and a TFLite interpreter are imported (``ai_edge_litert``, else ``tflite_runtime``,
else ``tensorflow.lite`` as a last resort), so this works on a Raspberry Pi or a phone without
TensorFlow. Labels, input size and value range come from the model's own spec (``edgecxr.spec``),
and images go through ``edgecxr.preprocess.load_image``, the very function training used, so the
deployed model sees what it was trained on.

    >>> clf = Classifier("models/edgecxr_float16.tflite")
    >>> clf.predict("chest.jpg").label
    'normal'
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ImageError, MissingExtraError, ModelFileError
from .preprocess import load_image, xray_warning
from .quiet import filtered_stderr
from .spec import ModelSpec, read_spec

DEFAULT_MODEL_NAME = "edgecxr_float16.tflite"
MODEL_ENV = "EDGECXR_MODEL"
# A TFLite flatbuffer carries its file identifier at bytes 4..8.
TFLITE_IDENTIFIER = b"TFL3"
# Largest batch handed to the interpreter at once: bounds memory when a folder has 5,000 images.
MAX_BATCH = 32


@dataclass
class Prediction:
    """One image's result. ``time_ms`` is the whole call: decode + preprocess + inference."""

    label: str
    index: int
    probabilities: dict[str, float]
    time_ms: float
    file: str | None = None
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    # preprocess.xray_warning of what the model saw: "" for a plausible film, else why the answer
    # means nothing (a photo, a blank). The label is still given.
    warning: str = ""

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]

    def to_dict(self) -> dict:
        return {"file": self.file, "label": self.label, "confidence": self.confidence, **asdict(self)}

    def to_text(self) -> str:
        """``chest.png: covid19 95.0%  (normal 1.2%, covid19 95.0%, ...)  3.1 ms``"""
        probs = ", ".join(f"{name} {p:.1%}" for name, p in self.probabilities.items())
        name = self.file if self.file is not None else "<image>"
        return f"{name}: {self.label} {self.confidence:.1%}  ({probs})  {self.time_ms:.1f} ms"


def default_model_path() -> Path:
    """The shipped model: $EDGECXR_MODEL, else ``<repo>/models/``, else the installed package data.

    The repository copy is found relative to this file (``toolkit/edgecxr/../../models``) so an
    editable install and a plain checkout both use it; a wheel carries it as ``edgecxr/models/``.
    """
    env = os.environ.get(MODEL_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ModelFileError(f"{MODEL_ENV}={env} does not name a model file")
        return path
    here = Path(__file__).resolve().parent
    candidates = [here.parent.parent / "models" / DEFAULT_MODEL_NAME, here / "models" / DEFAULT_MODEL_NAME]
    for path in candidates:
        if path.is_file():
            return path
    raise ModelFileError(
        f"no shipped model found (looked for {candidates[0]} and {candidates[1]}); "
        f"pass a model file or set {MODEL_ENV}"
    )


def interpreter_backend():
    """Return ``(Interpreter class, backend name, version)``, preferring the TensorFlow-free ones."""
    from importlib import metadata

    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter, "ai_edge_litert", _version(metadata, "ai-edge-litert")
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter, "tflite_runtime", _version(metadata, "tflite-runtime")
    except ImportError:
        pass
    try:
        # Last resort only: pulls in all of TensorFlow (seconds to import, hundreds of MB), so it is
        # imported by name here and never on the normal runtime path.
        from .quiet import import_tensorflow

        tf = import_tensorflow()

        return tf.lite.Interpreter, "tensorflow.lite", tf.__version__
    except ImportError:
        raise MissingExtraError(
            "no TFLite interpreter installed; install one with: pip install ai-edge-litert"
        ) from None


def _version(metadata, dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def expand_images(paths) -> tuple[list[str], list[tuple[str, str]]]:
    """Files to classify from command-line arguments: files as given, folders by their images.

    Folders are searched recursively (collections keep one sub-folder per class) for what
    ``preprocess.is_image_file`` counts (its suffixes, and suffix-less DICOM files). Returns ``(files, problems)``, problems as ``(folder, message)``: a
    folder without images is a problem, not an error, so the other arguments still run. Missing
    files are kept: predicting them reports them.
    """
    from .preprocess import is_image_file

    files, problems = [], []
    for arg in paths:
        path = Path(arg)
        if not path.is_dir():
            files.append(str(path))
            continue
        found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        if not found:
            problems.append((str(path), f"{path}: no images in this folder"))
        files += [str(p) for p in found]
    return files, problems


def check_tflite_file(path: Path) -> None:
    """Fail early, naming the file, when it is missing or not a TFLite flatbuffer at all."""
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    with path.open("rb") as fh:
        head = fh.read(8)
    if len(head) < 8 or head[4:8] != TFLITE_IDENTIFIER:
        raise ModelFileError(f"{path}: not a TensorFlow Lite model (no TFL3 identifier)")


def display_name(spec: ModelSpec, model_path: str | Path) -> str:
    """What :attr:`Classifier.name` says, for callers that read only the spec (``bench``)."""
    path = Path(model_path)
    name = (spec.name or "").strip()
    if not name:
        return path.stem
    return name if name == path.stem else f"{name} (file {path.name})"


class Classifier:
    """An edgecxr ``.tflite`` model ready to classify images.

    ``num_threads=None`` leaves the choice to the interpreter (ai_edge_litert's Python API then
    uses one thread). Raises ModelFileError, naming the file, for anything that is not an edgecxr
    TFLite model with the input its spec promises.
    """

    def __init__(self, model_path: str | Path | None = None, num_threads: int | None = None):
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        check_tflite_file(self.model_path)
        interpreter_cls, self.interpreter_name, self.interpreter_version = interpreter_backend()
        self.num_threads = num_threads
        # The interpreter verifies the flatbuffer, so a truncated file is named as such before
        # the spec (appended at the very end, hence lost first) is looked for.
        try:
            with filtered_stderr():  # LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate"
                self.interpreter = interpreter_cls(model_path=str(self.model_path), num_threads=num_threads)
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{self.model_path}: damaged or truncated TFLite file ({exc})") from None
        self.spec: ModelSpec = read_spec(self.model_path)
        _check_spec_supported(self.spec, self.model_path)
        try:
            with filtered_stderr():
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{self.model_path}: the interpreter cannot run it ({exc})") from None
        self.input_details, self.output_details = self._check_io()
        self.input_dtype = np.dtype(self.input_details["dtype"]).name
        self.output_dtype = np.dtype(self.output_details["dtype"]).name
        self.xnnpack = _delegate_applied(self.interpreter)
        self._batch = int(self.input_details["shape"][0])
        self._input_table: np.ndarray | str | None = None  # to_input's uint8 -> input lookup, or "identity"

    # -- public API ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The model's one name, as ``predict``, ``bench`` and the app show it: the spec's ``name``.

        ``edgecxr export`` makes it the file stem, so normally the two are one. A file renamed
        since (or a spec without a name) also shows the file name, so the name on screen always
        leads back to the file."""
        return display_name(self.spec, self.model_path)

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    @property
    def image_size(self) -> int:
        return int(self.spec.image_size)

    def load(self, image) -> np.ndarray:
        """The model's input image: a ``(size, size, 3)`` uint8 RGB array, as training made it.

        Everything, arrays included, goes through ``preprocess.load_image`` with the spec's
        settings (size, histogram equalization), so there is one preprocessing path. Use
        ``predict_arrays`` for arrays that are already ``load_image`` output.
        """
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise ImageError(
                    f"image array must be uint8 RGB 0..255 (as decoded from a file), not {image.dtype}"
                )
            if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
                raise ImageError(f"image array must be (H, W), (H, W, 3) or (H, W, 4), not {image.shape}")
            image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
        return load_image(image, self.image_size, equalize=self.spec.equalize)

    def predict(self, image) -> Prediction:
        """Classify one image (path, bytes, PIL image or uint8 array). Raises ImageError if unreadable."""
        t0 = time.perf_counter()
        arr = self.load(image)
        t1 = time.perf_counter()
        probs = self.predict_arrays(arr[None])[0]
        t2 = time.perf_counter()
        return self._prediction(probs, image, (t2 - t0) * 1e3, (t1 - t0) * 1e3, (t2 - t1) * 1e3,
                                xray_warning(arr))

    def predict_batch(self, images, on_error=None) -> list[Prediction]:
        """Classify many images, invoking the interpreter on batches of up to MAX_BATCH.

        Unreadable images raise ImageError, or, when ``on_error(image, message)`` is given, are
        reported to it and left out of the result. Each prediction's ``inference_ms`` is its share
        of its batch's invoke time.
        """
        images = list(images)
        results: list[Prediction] = []
        for start in range(0, len(images), MAX_BATCH):
            chunk, arrays, load_ms = [], [], []
            for image in images[start : start + MAX_BATCH]:
                t0 = time.perf_counter()
                try:
                    arrays.append(self.load(image))
                except ImageError as exc:
                    if on_error is None:
                        raise
                    on_error(image, str(exc))
                    continue
                chunk.append(image)
                load_ms.append((time.perf_counter() - t0) * 1e3)
            if not arrays:
                continue
            t0 = time.perf_counter()
            probs = self.predict_arrays(np.stack(arrays))
            share = (time.perf_counter() - t0) * 1e3 / len(arrays)
            for image, arr, p, ms in zip(chunk, arrays, probs, load_ms):
                results.append(self._prediction(p, image, ms + share, ms, share, xray_warning(arr)))
        return results

    def predict_arrays(self, arrays: np.ndarray) -> np.ndarray:
        """Probabilities ``(N, C)`` for preprocessed images: ``load`` output, uint8 ``(N, size, size, 3)``."""
        arrays = np.asarray(arrays)
        size = self.image_size
        if arrays.dtype != np.uint8 or arrays.ndim != 4 or arrays.shape[1:] != (size, size, 3):
            raise ImageError(
                f"expected uint8 images of shape (N, {size}, {size}, 3), "
                f"got {arrays.dtype} {arrays.shape}"
            )
        if len(arrays) == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        parts = [self._invoke(arrays[i : i + MAX_BATCH]) for i in range(0, len(arrays), MAX_BATCH)]
        return np.concatenate(parts)

    def to_input(self, arrays: np.ndarray) -> np.ndarray:
        """Map uint8 pixels to the input tensor: the spec's value range, then quantize if needed."""
        if arrays.dtype == np.uint8 and np.dtype(self.input_details["dtype"]) != np.float32:
            # A uint8 pixel has 256 values: quantize them once and index, instead of float math on
            # every pixel. The shipped model takes uint8 with scale 1, zero point 0: the table is
            # the identity and the pixels go in as they are (benchmarks/LOADER_SPEED.md, "model call").
            if self._input_table is None:
                every = np.arange(256, dtype=np.uint8)
                table = self._quantize(every)
                self._input_table = "identity" if table.dtype == np.uint8 and np.array_equal(table, every) else table
            if isinstance(self._input_table, str):
                return np.ascontiguousarray(arrays)
            return np.take(self._input_table, arrays)
        return self._quantize(arrays)

    def _quantize(self, arrays: np.ndarray) -> np.ndarray:
        lo, hi = self.spec.input_range
        x = arrays.astype(np.float32)
        if (lo, hi) != (0.0, 255.0):
            x = lo + x * np.float32((hi - lo) / 255.0)
        dtype = np.dtype(self.input_details["dtype"])
        if dtype == np.float32:
            return x
        scale, zero_point = self.input_details["quantization"]
        if scale:
            x = np.round(x / scale + zero_point)
        info = np.iinfo(dtype)
        return np.clip(x, info.min, info.max).astype(dtype)

    def to_probabilities(self, raw: np.ndarray) -> np.ndarray:
        """Dequantize the output and renormalise it, since int8 softmax rows need not sum to 1."""
        out = raw.astype(np.float32)
        scale, zero_point = self.output_details["quantization"]
        if np.dtype(self.output_details["dtype"]) != np.float32 and scale:
            out = (out - zero_point) * np.float32(scale)
        out = np.clip(out, 0.0, None)
        total = out.sum(axis=1, keepdims=True)
        uniform = np.full_like(out, 1.0 / out.shape[1])
        return np.where(total > 0, out / np.where(total > 0, total, 1.0), uniform)

    def describe(self) -> str:
        """One line naming the model and how it runs, for CLI headers."""
        xnn = {True: "XNNPACK on", False: "XNNPACK off", None: "XNNPACK unknown"}[self.xnnpack]
        threads = self.num_threads if self.num_threads is not None else "default"
        weights = {"none": "float32", "dynamic": "int8 (dynamic-range)"}.get(self.spec.quantization,
                                                                          self.spec.quantization)
        return (
            f"{self.name}: {weights} weights, {self.input_dtype} input, "
            f"{self.image_size} px, classes {', '.join(self.class_names)}; "
            f"{self.interpreter_name} {self.interpreter_version}, {xnn}, threads {threads}"
        )

    # -- internals ----------------------------------------------------------------------------

    def _check_io(self) -> tuple[dict, dict]:
        inputs = self.interpreter.get_input_details()
        outputs = self.interpreter.get_output_details()
        size = self.image_size
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(
                f"{self.model_path}: expected one input and one output, found "
                f"{len(inputs)} and {len(outputs)}"
            )
        shape = [int(d) for d in inputs[0].get("shape_signature", inputs[0]["shape"])]
        if len(shape) != 4 or shape[1:] != [size, size, 3] or shape[0] not in (-1, 1):
            raise ModelFileError(
                f"{self.model_path}: wrong input shape {shape}; its spec promises "
                f"[1, {size}, {size}, 3] (RGB, image_size {size})"
            )
        n_out = int(outputs[0]["shape"][-1])
        if n_out != len(self.class_names):
            raise ModelFileError(
                f"{self.model_path}: the model has {n_out} outputs but its spec names "
                f"{len(self.class_names)} classes"
            )
        return inputs[0], outputs[0]

    def bind_input(self, x: np.ndarray):
        """Set ``x`` (an input tensor, see ``to_input``) and return the bare engine call.

        ``edgecxr bench`` times what this returns, the same way for every engine (TFLite here,
        ONNX Runtime in ``edgecxr.peers``), so model-only latency means one thing in every row.
        """
        self.interpreter.set_tensor(self.input_details["index"], x)
        return self.interpreter.invoke

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        if not self.resize_batch(len(batch)):
            return np.concatenate([self._invoke(batch[i : i + 1]) for i in range(len(batch))])
        self.interpreter.set_tensor(self.input_details["index"], self.to_input(batch))
        self.interpreter.invoke()
        return self.to_probabilities(self.interpreter.get_tensor(self.output_details["index"]))

    def resize_batch(self, n: int) -> bool:
        """Make the input hold ``n`` images; False (and unchanged) when the batch size is fixed."""
        if n == self._batch:
            return True
        size = self.image_size
        try:
            self.interpreter.resize_tensor_input(self.input_details["index"], [n, size, size, 3])
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError):
            self.interpreter.resize_tensor_input(self.input_details["index"], [self._batch, size, size, 3])
            self.interpreter.allocate_tensors()
            return False
        self._batch = n
        return True

    def _prediction(self, probs, image, total_ms, load_ms, infer_ms, warning: str = "") -> Prediction:
        index = int(np.argmax(probs))
        return Prediction(
            label=self.class_names[index],
            index=index,
            probabilities={name: float(p) for name, p in zip(self.class_names, probs)},
            time_ms=total_ms,
            file=str(image) if isinstance(image, (str, Path)) else None,
            preprocess_ms=load_ms,
            inference_ms=infer_ms,
            warning=warning,
        )


def _check_spec_supported(spec: ModelSpec, path: Path) -> None:
    if spec.color != "RGB" or spec.resize != "squash":
        raise ModelFileError(
            f"{path}: spec asks for color {spec.color!r} / resize {spec.resize!r}; "
            "this runtime supports RGB input resized by 'squash' only"
        )


def _delegate_applied(interpreter) -> bool | None:
    """Whether a delegate node replaced part of the graph (with no explicit delegates: XNNPACK).

    ai_edge_litert applies XNNPACK by default when tensors are allocated; the delegated kernels then
    show up as a ``DELEGATE`` node. ``_get_ops_details`` is private API, so None means "can't tell".
    """
    ops_details = getattr(interpreter, "_get_ops_details", None)
    if ops_details is None:
        return None
    try:
        return any(op.get("op_name") == "DELEGATE" for op in ops_details())
    except (ValueError, RuntimeError, TypeError):
        return None
