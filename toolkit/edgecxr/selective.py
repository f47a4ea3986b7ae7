"""Selective int8 (``--keep-float``): the first remedy when int8 loses accuracy.

The TFLite QuantizationDebugger measures every quantized layer's error (RMSE divided by the
quantization step); the worst few are kept in float (``denylisted_nodes``), the rest stay int8.
"""

from __future__ import annotations

import csv
import io as io_mod
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .converter import check_io_types, make_converter, quiet_converter, representative_dataset, require_tf
from .errors import EdgeCXRError

if TYPE_CHECKING:
    from .export_options import ExportOptions

# --keep-float auto keeps layers whose int8 error is at least AUTO_THRESHOLD quantization steps (the
# cut-off the TensorFlow QuantizationDebugger guide uses), at most AUTO_KEEP_FLOAT and at least one.
AUTO_KEEP_FLOAT = 3
AUTO_THRESHOLD = 0.7


@dataclass
class LayerError:
    """One quantized layer's error as the QuantizationDebugger measured it."""

    name: str  # the tensor name denylisted_nodes expects
    op: str
    rmse_per_scale: float  # RMSE between float and int8 output, in quantization steps
    tensor: int  # index of the layer's quantized output in the debug model

    @property
    def short(self) -> str:
        """``expanded_conv_4/squeeze_excite/Relu/Relu``: the first of the fused op names, without
        the model's name scopes (``edgecxr_mnv3small/MobilenetV3small/``)."""
        first = self.name.split(";")[0]
        parts = first.split("/")
        while len(parts) > 2 and (parts[0].startswith("edgecxr_") or parts[0].lower().startswith("mobilenetv3")):
            parts = parts[1:]
        return "/".join(parts)


def selective_int8(model, size: int, images: np.ndarray, opts: ExportOptions, notes: dict, log) -> bytes:
    """Full-integer int8 except the layers named in ``opts.keep_float`` (or the worst ``auto:K``).

    The debugger quantizes the calibrated model with NumericVerify ops, runs the representative
    images through it and reports each layer's error; RMSE / scale (error in quantization steps)
    ranks layers fairly whatever their range. Denylisted layers run in float between a dequantize
    and a quantize; the rest stay int8.
    """
    tf = require_tf()
    from tensorflow.lite.python import util as lite_util  # modify_model_io_type: what the converter uses

    converter = make_converter(model, size)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(images)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with quiet_converter():
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=representative_dataset(images),
            debug_options=tf.lite.experimental.QuantizationDebugOptions())
        debugger.run()
        layers = _layer_errors(debugger)
        edges = _io_layers(debugger, layers) if opts.io != "float32" else set()
        chosen = _choose_layers(layers, opts.keep_float, edges, opts.io)
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=[l.name for l in chosen])
        tflite = debugger.get_nondebug_quantized_model()
    io_type = getattr(tf, opts.io)
    tflite = lite_util.modify_model_io_type(tflite, io_type, io_type)
    try:
        check_io_types(tflite, opts.io)
    except EdgeCXRError:
        raise EdgeCXRError(f"keeping {', '.join(l.short for l in chosen)} in float leaves the model with float "
                           f"input or output; add --io float32 or leave out the first and last layer") from None
    ranking = sorted(layers, key=lambda l: -l.rmse_per_scale)
    log("int8 layer errors (RMSE in quantization steps), worst first: "
        + ", ".join(f"{l.short} {l.rmse_per_scale:.2f}" for l in ranking[:8]))
    log(f"kept in float ({len(chosen)}): " + ", ".join(f"{l.short} ({l.op}, {l.rmse_per_scale:.2f})" for l in chosen))
    notes["keep_float"] = {
        "asked": list(opts.keep_float),
        "layers": [{"name": l.short, "tensor": l.name, "op": l.op, "rmse_per_scale": round(l.rmse_per_scale, 4)}
                   for l in chosen],
        "quantized_layers": len(layers),
    }
    return tflite


def _layer_errors(debugger) -> list[LayerError]:
    buf = io_mod.StringIO()
    debugger.layer_statistics_dump(buf)
    out = []
    for row in csv.DictReader(io_mod.StringIO(buf.getvalue())):
        scale = float(row["scale"])
        rmse = math.sqrt(max(float(row["mean_squared_error"]), 0.0))
        out.append(LayerError(row["tensor_name"], row["op_name"], rmse / scale if scale > 0 else 0.0,
                              int(row["tensor_idx"])))
    if not out:
        raise EdgeCXRError("internal: the quantization debugger found no quantized layers")
    return out


def _io_layers(debugger, layers: list[LayerError]) -> set[str]:
    """Names of the layers that read the model input or write its output.

    Keeping one of them in float would leave a float input or output, which an integer-I/O model
    cannot have, so ``auto`` skips them. Found in the debug model (the one the statistics came
    from): the layer fed by the input QUANTIZE, and the layer feeding the output DEQUANTIZE.
    """
    from .runtime import interpreter_backend

    interpreter_cls, _, _ = interpreter_backend()
    interp = interpreter_cls(model_content=debugger.get_debug_quantized_model())
    ops = interp._get_ops_details()  # private but stable; the runtime uses it too
    graph_in = {d["index"] for d in interp.get_input_details()}
    graph_out = {d["index"] for d in interp.get_output_details()}
    quantized_in = {t for op in ops if op["op_name"] == "QUANTIZE" and set(op["inputs"]) & graph_in
                    for t in op["outputs"]}
    to_output = {t for op in ops if op["op_name"] == "DEQUANTIZE" and set(op["outputs"]) & graph_out
                 for t in op["inputs"]}
    producer = {t: op for op in ops for t in op["outputs"]}
    edges = set()
    for layer in layers:
        op = producer.get(layer.tensor)
        if layer.tensor in to_output or (op is not None and set(op["inputs"]) & quantized_in):
            edges.add(layer.name)
    return edges


def _choose_layers(layers: list[LayerError], keep: tuple[str, ...], edges: set[str], io: str) -> list[LayerError]:
    if keep[0].startswith("auto"):
        ranked = sorted((l for l in layers if l.name not in edges), key=lambda l: -l.rmse_per_scale)
        if ":" in keep[0]:
            return ranked[:int(keep[0].split(":")[1])]
        bad = [l for l in ranked if l.rmse_per_scale >= AUTO_THRESHOLD][:AUTO_KEEP_FLOAT]
        return bad or ranked[:1]
    chosen = []
    for wanted in keep:
        hits = ([l for l in layers if wanted in (l.name, l.short)]
                or [l for l in layers if wanted in l.short] or [l for l in layers if wanted in l.name])
        if not hits:
            sample = ", ".join(l.short for l in sorted(layers, key=lambda l: -l.rmse_per_scale)[:3])
            raise EdgeCXRError(f"--keep-float: no quantized layer matches {wanted!r} (the worst are: {sample}; "
                               "--keep-float auto picks them for you)")
        chosen += [l for l in hits if l not in chosen]
    return chosen
