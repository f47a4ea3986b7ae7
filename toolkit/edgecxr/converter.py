"""From a run's Keras model to TFLite bytes: the graph rewrites int8 needs and the converter.

TensorFlow and tf_keras are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from pathlib import Path

import numpy as np

from .errors import EdgeCXRError, ModelFileError, require
from .quiet import filtered_stderr

# Built models and traced serving functions, kept for the process (see load_model, make_converter).
_MODEL_CACHE: dict = {}
_MODEL_CACHE_SIZE = 4
_SERVING: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def require_tf():
    tf = require("tensorflow", "train")
    require("tf_keras", "train")
    return tf


def load_model(run_dir: Path, rewrite_hard_swish: bool = False):
    """``model.load_run_model``, remembered for the process while the checkpoint is unchanged.

    Building tf_keras MobileNetV3 takes seconds; exporting several modes of one run in one process
    (tests, notebooks, a script exporting every mode) builds it once. Nothing in the export
    changes a loaded model's weights (QAT trains a clone), so sharing it is safe.
    """
    from .model import load_run_model

    ckpt = Path(run_dir) / "checkpoints" / "best.weights.h5"
    config = Path(run_dir) / "config.json"
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) if p.is_file() else None for p in (ckpt, config))
    key = (str(Path(run_dir).resolve()), stamp, rewrite_hard_swish)
    if key not in _MODEL_CACHE:
        with delegate_friendly_hard_swish() if rewrite_hard_swish else contextlib.nullcontext():
            loaded = load_run_model(run_dir)
        while len(_MODEL_CACHE) >= _MODEL_CACHE_SIZE:
            _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
        _MODEL_CACHE[key] = loaded
    return _MODEL_CACHE[key]


@contextlib.contextmanager
def delegate_friendly_hard_swish():
    """Build tf_keras MobileNetV3 with hard-swish as ``(x / 6) * relu6(x + 3)`` inside this block.

    Keras writes ``x * relu6(x + 3) / 6``, which the TFLite converter fuses into one HARD_SWISH op;
    XNNPACK has no int8 kernel for it, so every block falls back to the slow reference kernel and
    splits the graph into ~19 partitions. Scaling x first keeps the converter from fusing, and the
    ADD/RELU6/MUL it leaves are all delegated in int8. No weights are involved, so a checkpoint
    trained with either form loads into the other.
    """
    keras = require("tf_keras", "train")
    try:
        from tf_keras.src.applications import mobilenet_v3 as mnv3
    except ImportError:  # pragma: no cover - tf_keras moved its internals
        raise EdgeCXRError("this tf_keras version hides MobileNetV3's hard_swish; export with hard_swish='keras'") from None

    def hard_swish(x):
        return keras.layers.Multiply()([x * (1.0 / 6.0), keras.layers.ReLU(6.0)(x + 3.0)])

    original = mnv3.hard_swish
    mnv3.hard_swish = hard_swish
    try:
        yield
    finally:
        mnv3.hard_swish = original


def fold_head_batchnorm(model):
    """The model as one flat graph with the head's BatchNorm folded away: exact at inference.

    The preprint head is Dense(relu) -> BatchNorm -> Dropout -> Dense. Folding the BatchNorm into
    the *last* Dense (W' = s * W) gives that layer input rows scaled by 1/sqrt(variance) - ranges
    spanning orders of magnitude within one output channel, which int8's per-output-channel
    weight scales cannot hold (the QuantizationDebugger measured 12.8 quantization steps of error
    there on the shipped run, ~0.3 everywhere else). So the scale goes *through* the ReLU instead,
    since relu(z) * |s| = relu(z * |s|): |s| into the first Dense (per output channel, which int8
    scales per channel anyway), its sign and the shift t into the last Dense (W' = sign(s) * W,
    b' = t @ W + b). A BatchNorm not after a ReLU Dense is folded into the next Dense.

    The backbone's layers are shared with ``model`` (not called again); head layers are copies.
    tfmot needs this flat layout too, and cannot quantize a BatchNorm after a Dense layer.
    """
    keras = require("tf_keras", "train")
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1:
        raise ModelFileError("expected the edgecxr model layout (one backbone model and a head)")
    backbone = nested[0]
    x = backbone.output
    last_dense, previous, pending = None, None, None  # pending: (input scale, shift) for the next Dense
    for layer in model.layers[model.layers.index(backbone) + 1:]:
        if isinstance(layer, keras.layers.BatchNormalization):
            scale, shift = _batchnorm_affine(layer)
            if previous is last_dense and last_dense is not None and _is_relu(last_dense.activation):
                kernel, bias = last_dense.get_weights()
                last_dense.set_weights([kernel * np.abs(scale), bias * np.abs(scale)])
                scale = np.sign(scale)
            pending = (scale, shift)
            previous = layer
            continue
        if isinstance(layer, keras.layers.Dense):
            kernel, bias = layer.get_weights() if layer.use_bias else (layer.get_weights()[0], 0.0)
            if pending is not None:
                scale, shift = pending
                kernel, bias, pending = scale[:, None] * kernel, shift @ kernel + bias, None
            new = keras.layers.Dense(layer.units, activation=layer.activation, name=layer.name)
            x = new(x)
            new.set_weights([kernel, np.broadcast_to(bias, (layer.units,)).astype(np.float32)])
            last_dense = previous = new
            continue
        if pending is not None and not isinstance(layer, keras.layers.Dropout):
            raise ModelFileError(f"cannot fold the head's BatchNorm past a {type(layer).__name__} layer")
        new = type(layer).from_config(layer.get_config())  # a copy: QAT may change it (Dropout rate)
        x = new(x)
        if layer.weights:
            new.set_weights(layer.get_weights())
        previous = new if not isinstance(layer, keras.layers.Dropout) else previous
    if pending is not None:
        raise ModelFileError("the head ends in a BatchNorm layer; nothing to fold it into")
    return keras.Model(backbone.input, x, name=model.name + "_folded")


def _batchnorm_affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """BN(x) = x * s + t at inference."""
    gamma = bn.gamma.numpy() if bn.scale else 1.0
    beta = bn.beta.numpy() if bn.center else 0.0
    s = gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    return s.astype(np.float32), (beta - bn.moving_mean.numpy() * s).astype(np.float32)


def _is_relu(activation) -> bool:
    return getattr(activation, "__name__", "") == "relu"


def _serving_function(model, size: int):
    tf = require_tf()
    return tf.function(lambda x: model(x, training=False),
                       input_signature=[tf.TensorSpec((1, size, size, 3), tf.float32, name="image")])


def make_converter(model, size: int):
    """A TFLiteConverter for one image at a time (batch 1: what phones and the Pi run).

    Converting the concrete function with the tf.function as its trackable object skips the
    SavedModel round trip ``from_keras_model`` makes: ~2 s instead of ~20 s for tf_keras MobileNetV3.
    """
    tf = require_tf()
    if model not in _SERVING:  # tracing MobileNetV3 takes seconds; one trace per model and size
        _SERVING[model] = {}
    if size not in _SERVING[model]:
        serve = _serving_function(model, size)
        _SERVING[model][size] = (serve, serve.get_concrete_function())
    serve, concrete = _SERVING[model][size]
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], serve)


@contextlib.contextmanager
def quiet_converter():
    """Silence what the converter prints that says nothing about this model (locally, not globally):
    two Python warnings, and its C++ lines (op counts, "fully_quantize: 0 ...", see edgecxr.quiet)."""
    with warnings.catch_warnings(), filtered_stderr():
        # Emitted for every int8 conversion; the representative data set supplies the statistics.
        warnings.filterwarnings("ignore", "Statistics for quantized inputs", UserWarning)
        # The QuantizationDebugger uses tf.lite.Interpreter internally; nothing to act on here.
        warnings.filterwarnings("ignore", ".*tf.lite.Interpreter is deprecated", UserWarning)
        yield


def representative_dataset(images: np.ndarray, label: str = "int8 calibration"):
    """The converter's calibration input, one image at a time, with a progress bar on a terminal
    (at 224 px a few hundred images take a minute or more)."""
    from .progress import progress

    def generate():
        with progress(None, len(images), label) as bar:
            for img in images:
                yield [img[None].astype(np.float32)]
                bar.update(1)

    return generate


def check_io_types(tflite: bytes, io: str) -> None:
    from .runtime import interpreter_backend

    interpreter_cls, _, _ = interpreter_backend()
    with filtered_stderr():
        interp = interpreter_cls(model_content=tflite)
    got = {np.dtype(d["dtype"]).name for d in (*interp.get_input_details(), *interp.get_output_details())}
    if got != {io}:
        raise EdgeCXRError(f"internal: asked for {io} input/output, the converter produced {sorted(got)}")


# --- to ONNX (edgecxr bench --peers) -----------------------------------------------------------------


def tflite_to_onnx(tflite_path: str | Path, onnx_path: str | Path) -> None:
    """Convert a float32 ``.tflite`` to ONNX with tf2onnx, the route an engineer would take.

    From the exported ``.tflite`` rather than from Keras: the same graph (head BatchNorm folded,
    batch 1) that LiteRT runs, and no run directory needed. tf2onnx imports TensorFlow, which is
    why this lives here and ``edgecxr.peers`` calls it in a child process (``python -m
    edgecxr.converter``), keeping TensorFlow out of the benchmarking process and its memory numbers.
    """
    require("onnx", "peers")
    tf2onnx = require("tf2onnx", "peers")
    with quiet_converter(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf2onnx.convert.from_tflite(str(tflite_path), output_path=str(onnx_path))


def _main(argv: list[str]) -> int:
    """``python -m edgecxr.converter to-onnx IN.tflite OUT.onnx``: errors as one line on stderr."""
    import sys

    if len(argv) != 3 or argv[0] != "to-onnx":
        print("usage: python -m edgecxr.converter to-onnx IN.tflite OUT.onnx", file=sys.stderr)
        return 2
    try:
        tflite_to_onnx(argv[1], argv[2])
    except EdgeCXRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises anything; the parent reports it
        lines = str(exc).strip().splitlines()
        print(f"error: tf2onnx failed: {exc.__class__.__name__}: {lines[0] if lines else ''}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    import os
    import sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(_main(sys.argv[1:]))
