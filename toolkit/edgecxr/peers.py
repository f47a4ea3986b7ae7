"""ONNX Runtime rows for ``edgecxr bench --peers``: the engine an edge engineer would try instead.

A user who exports our float32 model will also convert it with tf2onnx and run it in ONNX Runtime,
float32 and statically quantized to int8 (QDQ, per-channel weights). ``--peers`` does exactly that
and benchmarks the results with the same code as the TFLite rows: the same model-only timing of
the bare engine call (``Classifier.bind_input``), the same end-to-end path (``preprocess``), the
same accuracy scoring and the same size column, so a row of each engine means the same thing.

Conversion runs ``python -m edgecxr.converter`` in a child process, because tf2onnx imports
TensorFlow: the benchmarking process stays TensorFlow-free (its memory column stays honest).
onnxruntime, onnx and tf2onnx are the optional ``peers`` extra; without them ``--peers`` adds
one note and no rows.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from .errors import EdgeCXRError, ModelFileError, require
from .runtime import Classifier, check_tflite_file
from .spec import read_spec

PEER_MODULES = ("onnxruntime", "onnx", "tf2onnx")
# Calibration images for ONNX Runtime's static int8, as many as `edgecxr export` uses for ours.
CALIBRATION_IMAGES = 200
CONVERT_TIMEOUT_S = 600


def missing_extra() -> str | None:
    """The one-line note for a machine without the ``peers`` extra, or None when it is installed."""
    missing = [m for m in PEER_MODULES if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (f"--peers: ONNX Runtime rows skipped, {', '.join(missing)} not installed "
            "(pip install 'edgecxr[peers]')")


def onnx_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        return "unknown"


class OnnxClassifier(Classifier):
    """An ONNX model with an edgecxr spec, driven like ``Classifier`` (same preprocessing and output).

    The spec comes from the ``.tflite`` it was converted from; input and output stay float32
    (tf2onnx keeps them, and ONNX Runtime's QDQ int8 quantizes inside the graph), so ``to_input``
    and ``to_probabilities`` apply unchanged.
    """

    def __init__(self, onnx_path: str | Path, spec, num_threads: int | None = None):
        ort = require("onnxruntime", "peers")
        self.model_path = Path(onnx_path)
        self.spec = spec
        self.num_threads = num_threads
        self.interpreter_name, self.interpreter_version = "onnxruntime", onnx_version()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads or 0  # 0 = ONNX Runtime's default
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(self.model_path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise ModelFileError(f"{self.model_path}: ONNX Runtime cannot load it ({_first_line(exc)})") from None
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self._input_name = inp.name
        self._fixed_batch = inp.shape[0] == 1
        size = self.image_size
        if list(inp.shape[1:]) != [size, size, 3]:
            raise ModelFileError(f"{self.model_path}: input shape {inp.shape}, expected [N, {size}, {size}, 3]")
        self.input_details = {"index": inp.name, "dtype": np.float32, "quantization": (0.0, 0),
                              "shape": np.array([1, size, size, 3])}
        self.output_details = {"index": out.name, "dtype": np.float32, "quantization": (0.0, 0)}
        self.input_dtype = self.output_dtype = "float32"
        self.xnnpack = None  # not a TFLite delegate question
        self._batch = 1

    def bind_input(self, x: np.ndarray):
        feed = {self._input_name: x}
        session = self.session

        def run():
            session.run(None, feed)

        return run

    def resize_batch(self, n: int) -> bool:
        return n == 1 or not self._fixed_batch

    def _invoke(self, batch: np.ndarray) -> np.ndarray:
        if not self.resize_batch(len(batch)):
            return np.concatenate([self._invoke(batch[i : i + 1]) for i in range(len(batch))])
        raw = self.session.run(None, {self._input_name: self.to_input(batch)})[0]
        return self.to_probabilities(raw)


def float_sources(models: list[Path], default_used: bool) -> tuple[list[Path], list[Path], list[str]]:
    """Which float32 ``.tflite`` files to convert, which of them to add as LiteRT rows, and notes.

    The float32 files among ``models``; when there are none, the float32 twin of each model found
    next to it (same architecture and image size, quantization none), which is also benchmarked
    as a LiteRT row, so the table answers "int8 vs float32" for both engines.
    """
    chosen, added, notes = [], [], []
    specs = {}
    for m in models:
        try:
            specs[m] = read_spec(m)
        except EdgeCXRError:
            continue
    chosen = [m for m, s in specs.items() if s.quantization == "none"]
    if chosen:
        return chosen, added, notes
    for m, s in specs.items():
        twin = _float_twin(m, s)
        if twin is not None and twin not in added:
            added.append(twin)
            notes.append(f"--peers: added {twin.name}, the float32 twin of {m.name} (ONNX conversion starts "
                         "from float32)")
    if not added:
        what = "the shipped model" if default_used else "the models"
        notes.append(f"--peers: no float32 .tflite among {what} or next to them; pass one (ONNX conversion "
                     "starts from float32)")
    return added, added, notes


def _float_twin(model: Path, spec) -> Path | None:
    for other in sorted(model.parent.glob("*.tflite")):
        if other == model:
            continue
        try:
            s = read_spec(other)
        except EdgeCXRError:
            continue
        if (s.quantization == "none" and s.image_size == spec.image_size
                and s.architecture == spec.architecture and s.minimalistic == spec.minimalistic
                and s.alpha == spec.alpha):
            return other
    return None


def convert(tflite: Path, workdir: Path, calibration: np.ndarray | None, notes: list[str]) -> list[tuple]:
    """ONNX float32 (and, with calibration images, static int8) of one float32 ``.tflite``.

    Returns ``(name, path, spec)`` per converted file, or ``(name, None, error)`` for a failed
    step, which the benchmark turns into a failed row.
    """
    check_tflite_file(tflite)
    spec = read_spec(tflite)
    f32 = workdir / f"{tflite.stem}.onnx"
    name = f"{f32.name} (tf2onnx)"
    error = _convert_float(tflite, f32)
    if error:
        return [(name, None, error)]
    out = [(name, f32, spec)]
    if calibration is None or not len(calibration):
        notes.append("--peers: no images to calibrate ONNX Runtime int8; its row is left out")
        return out
    q = workdir / f"{tflite.stem}_qdq_int8.onnx"
    qname = f"{q.name} (QDQ per-channel)"
    try:
        _quantize_static(f32, q, spec, calibration)
    except Exception as exc:  # noqa: BLE001 - onnxruntime.quantization raises anything
        return [*out, (qname, None, f"static int8 quantization failed: {_first_line(exc)}")]
    return [*out, (qname, q, replace(spec, quantization="int8"))]


def _convert_float(tflite: Path, onnx_path: Path) -> str:
    """Run the converter in a child process; return an error line, or "" on success."""
    command = [sys.executable, "-m", "edgecxr.converter", "to-onnx", str(tflite), str(onnx_path)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=CONVERT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"tf2onnx conversion did not finish: {_first_line(exc)}"
    if proc.returncode != 0 or not onnx_path.is_file():
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
        return lines[-1][len("error: "):] if lines else f"tf2onnx conversion failed (exit {proc.returncode})"
    return ""


def _quantize_static(f32: Path, out: Path, spec, calibration: np.ndarray) -> None:
    """ONNX Runtime's static int8: QDQ format, per-channel int8 weights, int8 activations (MinMax)."""
    require("onnxruntime", "peers")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    lo, hi = spec.input_range
    name = _onnx_input_name(f32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(calibration)

        def get_next(self):
            img = next(self._it, None)
            if img is None:
                return None
            x = img[None].astype(np.float32)
            if (lo, hi) != (0.0, 255.0):
                x = lo + x * np.float32((hi - lo) / 255.0)
            return {name: x}

    # It logs "consider pre-processing" to the root logger on every call: nothing a user can act on.
    logging.disable(logging.WARNING)
    try:
        quantize_static(str(f32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)


def _onnx_input_name(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return next(i.name for i in model.graph.input if i.name not in inits)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {lines[0] if lines else ''}"
