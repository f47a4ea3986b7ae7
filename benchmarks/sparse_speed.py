#!/usr/bin/env python
"""Does XNNPACK's sparse inference make our network faster here? Magnitude-pruned 1x1 convolutions, timed.

    python benchmarks/sparse_speed.py --run runs/tl_twostage160_seed46            # writes benchmarks/SPARSE.md
    python benchmarks/sparse_speed.py --config benchmarks/recipes/tl_twostage160_seed46.json --out /tmp/s.md

XNNPACK runs a float32 graph in NCHW layout with sparse-matrix kernels (SpMM) for the 1x1
convolutions when the file stores those weights sparse: the converter does that with
``tf.lite.Optimize.EXPERIMENTAL_SPARSITY`` (a DENSIFY op in front of each sparse weight), and the
TFLite XNNPACK delegate then passes XNNPACK's sparse-inference hint itself. MobileNet-class
networks at 70-90% sparsity are where the field reports 1.3-2x (Elsen et al. 2020, "Fast Sparse
ConvNets").

What this script does, so the lever is measured before anyone fine-tunes for it:

1. takes the Keras model of a trained run (``--run``), or builds the recipe's network with random
   weights (``--config``; latency only: the time depends on the graph and the sparsity pattern, not on
   the values);
2. zeroes the smallest-magnitude fraction of every 1x1 convolution of the backbone (expand, project
   and the last 1x1; the squeeze-excite 1x1s act on a 1x1 map and are left dense), one-shot, no
   fine-tuning;
3. converts each to float32 with and without ``EXPERIMENTAL_SPARSITY`` and checks what the file holds
   (tensors stored sparse, DENSIFY ops, size);
4. times them side by side in one process, interleaved (``int8_speed.time_interleaved``: every round
   times every file in a fresh order), 1 and 2 threads;
5. with ``--run``, scores the validation split of each file (one-shot pruning costs
   accuracy; fine-tuning under the mask is worth it only if the speed is there: the issue's bar is
   15% faster).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "toolkit"))
sys.path.insert(0, str(REPO / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from int8_speed import _version, make_interpreter, time_interleaved  # noqa: E402  (one timing method for every benchmark)

BAR = 0.85  # the issue: fine-tune for sparsity only if the pruned file takes <= 85% of the dense one's time


def load_network(run: str | None, config: str | None, minimalistic: bool = False):
    """(Keras model, TrainConfig, trained?); ``minimalistic`` swaps the recipe's network for the
    minimalistic variant (no squeeze-excite, ReLU, 3x3 kernels; --config only)."""
    import tf_keras as keras

    from edgecxr.config import TrainConfig
    from edgecxr.model import build_model, load_run_model

    if run:
        model, cfg = load_run_model(run)
        return model, cfg, True
    cfg = TrainConfig.load(config)
    cfg = TrainConfig.from_dict({**cfg.__dict__, "weights": "none", "head_epochs": 0,
                                 **({"minimalistic": True} if minimalistic else {})})
    keras.utils.set_random_seed(0)
    return build_model(cfg), cfg, False


@contextlib.contextmanager
def nchw_friendly_graph():
    """Build tf_keras MobileNetV3 inside this block as a graph XNNPACK can run in NCHW (sparse) layout.

    XNNPACK's NCHW rewrite (``xnn_subgraph_rewrite_for_nchw``) takes a chain only if every node in
    it qualifies; Keras' MobileNetV3 has three kinds of node that do not:

    - convolutions with TensorFlow SAME padding (the stem, every stride-1 depthwise): the delegate
      passes them with XNNPACK's ``TENSORFLOW_SAME_PADDING`` flag, which the rewrite refuses. Here
      they become an explicit zero pad + VALID convolution (XNNPACK fuses the pad back in);
    - the stride-2 depthwise convolutions' asymmetric pad (``correct_pad``: 0 before, 1 after for
      3x3); the NCHW kernels need 1 on each side. Here: symmetric. This is the one change that is
      not exact: the sampling grid of the stem and of 4 depthwise layers moves by one pixel;
    - squeeze-excite's hard-sigmoid, ``relu6(x + 3) / 6``: the scalar constants are 0-d tensors and
      the rewrite takes only 4-d binary operands. Here it is ``relu6(x)`` with the +3 folded into the
      preceding 1x1 convolution's bias and the /6 into the projection after the multiply (exact; see
      :func:`fold_se_constants`).
    """
    import tf_keras as keras
    from tf_keras.src.applications import imagenet_utils, mobilenet_v3 as mnv3

    real = keras.layers

    class PaddedLayers:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def _explicit(cls, kwargs, kernel):
            pad = kernel // 2
            name = kwargs.get("name")
            layer = cls(**{**kwargs, "padding": "valid"})
            zero = real.ZeroPadding2D(pad, name=f"{name}/explicit_pad" if name else None)
            return lambda x: layer(zero(x))

        def Conv2D(self, filters, kernel_size=1, **kwargs):
            k = kernel_size if isinstance(kernel_size, int) else kernel_size[0]
            if k > 1 and kwargs.get("padding") == "same":
                return self._explicit(real.Conv2D, {"filters": filters, "kernel_size": kernel_size, **kwargs}, k)
            return real.Conv2D(filters, kernel_size, **kwargs)

        def DepthwiseConv2D(self, kernel_size, **kwargs):
            k = kernel_size if isinstance(kernel_size, int) else kernel_size[0]
            if k > 1 and kwargs.get("padding") == "same":
                return self._explicit(real.DepthwiseConv2D, {"kernel_size": kernel_size, **kwargs}, k)
            return real.DepthwiseConv2D(kernel_size, **kwargs)

    def symmetric_pad(inputs, kernel_size):
        k = kernel_size if isinstance(kernel_size, int) else kernel_size[0]
        return ((k // 2, k // 2), (k // 2, k // 2))

    def se_block(inputs, filters, se_ratio, prefix):
        x = real.GlobalAveragePooling2D(keepdims=True, name=prefix + "squeeze_excite/AvgPool")(inputs)
        x = real.Conv2D(mnv3._depth(filters * se_ratio), kernel_size=1, padding="same",
                        name=prefix + "squeeze_excite/Conv")(x)
        x = real.ReLU(name=prefix + "squeeze_excite/Relu")(x)
        x = real.Conv2D(filters, kernel_size=1, padding="same", name=prefix + "squeeze_excite/Conv_1")(x)
        x = real.ReLU(6.0, name=prefix + "squeeze_excite/Relu6")(x)  # 6 x hard_sigmoid (see the docstring)
        return real.Multiply(name=prefix + "squeeze_excite/Mul")([inputs, x])

    saved = (mnv3.layers, mnv3._se_block, imagenet_utils.correct_pad)
    mnv3.layers, mnv3._se_block, imagenet_utils.correct_pad = PaddedLayers(), se_block, symmetric_pad
    try:
        yield
    finally:
        mnv3.layers, mnv3._se_block, imagenet_utils.correct_pad = saved


def explicit_same_padding(flat: bytes) -> bytes:
    """Rewrite every stride-1 SAME depthwise convolution of a .tflite as PAD + VALID (exact).

    The converter folds the explicit pad :func:`nchw_friendly_graph` puts in front of a stride-1
    depthwise convolution back into SAME padding (the two are equivalent), and XNNPACK refuses SAME
    in an NCHW chain; so the pad is put back into the flatbuffer itself. XNNPACK fuses a zero PAD
    into the convolution that follows, as explicit padding, which the NCHW rewrite accepts.
    """
    from tensorflow.lite.python import schema_py_generated as fb
    from tensorflow.lite.tools import flatbuffer_utils as fu

    model = fu.convert_bytearray_to_object(bytearray(flat))
    codes = [fu.schema_util.get_builtin_code_from_operator_code(c) for c in model.operatorCodes]
    if fb.BuiltinOperator.PAD not in codes:
        code = fb.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = fb.BuiltinOperator.PAD
        code.version = 1
        model.operatorCodes.append(code)
        codes.append(fb.BuiltinOperator.PAD)
    pad_index = codes.index(fb.BuiltinOperator.PAD)
    graph = model.subgraphs[0]
    ops = []
    for op in graph.operators:
        opts = op.builtinOptions
        if (codes[op.opcodeIndex] == fb.BuiltinOperator.DEPTHWISE_CONV_2D and opts.padding == fb.Padding.SAME
                and (opts.strideH, opts.strideW) == (1, 1)):
            k = int(graph.tensors[op.inputs[1]].shape[1])
            p = k // 2
            source = graph.tensors[op.inputs[0]]
            buffer = fb.BufferT()
            buffer.data = np.array([[0, 0], [p, p], [p, p], [0, 0]], np.int32).tobytes()
            model.buffers.append(buffer)
            pads = fb.TensorT()
            pads.shape, pads.type, pads.buffer = [4, 2], fb.TensorType.INT32, len(model.buffers) - 1
            base = source.name if isinstance(source.name, bytes) else str(source.name).encode()
            pads.name = base + b"/explicit_pad/paddings"
            padded = fb.TensorT()
            n, h, w, c = (int(v) for v in source.shape)
            padded.shape, padded.type, padded.buffer = [n, h + 2 * p, w + 2 * p, c], source.type, 0
            padded.name = base + b"/explicit_pad"
            graph.tensors += [pads, padded]
            pad = fb.OperatorT()
            pad.opcodeIndex = pad_index
            pad.inputs = [op.inputs[0], len(graph.tensors) - 2]
            pad.outputs = [len(graph.tensors) - 1]
            pad.builtinOptionsType, pad.builtinOptions = fb.BuiltinOptions.PadOptions, fb.PadOptionsT()
            ops.append(pad)
            op.inputs = [len(graph.tensors) - 1, *list(op.inputs)[1:]]
            opts.padding = fb.Padding.VALID
        ops.append(op)
    graph.operators = ops
    return bytes(fu.convert_object_to_bytearray(model))


PROBES = {  # name -> (what it adds to the base, build_probe keyword arguments)
    "base": ("3x3 stride-2 stem (explicit pad), 4 x [1x1 conv 256 + ReLU, 1x1 conv 32], mean, dense", {}),
    "hard-swish": ("hard-swish instead of ReLU", {"hard_swish": True}),
    "depthwise + residual": ("a 3x3 stride-1 depthwise (SAME, rewritten as PAD + VALID) and a residual add "
                             "per block", {"depthwise": True}),
    "rescaling input": ("Keras' Rescaling (x / 127.5 - 1) before the stem", {"rescale": True}),
    "squeeze-excite": ("a squeeze-excite block per block (mean keepdims, 1x1 64, ReLU, 1x1 256, ReLU6, "
                       "multiply)", {"squeeze_excite": True}),
    "pooled multiply": ("squeeze-excite without its two 1x1 convolutions (mean keepdims, ReLU6, multiply)",
                        {"squeeze_excite": "pooled"}),
}


def build_probe(hard_swish=False, squeeze_excite=False, depthwise=False, rescale=False):
    """A 64 px toy network with 90%-sparse 1x1 convolutions and one MobileNetV3 feature added: which
    feature keeps XNNPACK's sparse path off is read from which probe does not get faster."""
    import tf_keras as keras

    L = keras.layers

    def act(t):
        return L.Multiply()([t, L.ReLU(6.0)(t + 3.0) * (1 / 6)]) if hard_swish else L.ReLU()(t)

    inp = keras.Input((64, 64, 3))
    x = L.Rescaling(1 / 127.5, offset=-1)(inp) if rescale else inp
    x = act(L.Conv2D(32, 3, strides=2, padding="valid")(L.ZeroPadding2D(1)(x)))
    for _ in range(4):
        y = act(L.Conv2D(256, 1)(x))
        if depthwise:
            y = act(L.DepthwiseConv2D(3, padding="same")(y))
        if squeeze_excite:
            e = L.GlobalAveragePooling2D(keepdims=True)(y)
            if squeeze_excite != "pooled":
                e = L.Conv2D(256, 1)(L.ReLU()(L.Conv2D(64, 1)(e)))
            e = L.ReLU(6.0)(e)
            y = L.Multiply()([y, e])
        y = L.Conv2D(32, 1)(y)
        x = L.Add()([x, y]) if depthwise else y
    model = keras.Model(inp, L.Dense(4)(L.GlobalAveragePooling2D()(x)))
    for layer in model.layers:
        if type(layer) is L.Conv2D and layer.kernel_size == (1, 1) and layer.output.shape[1] > 1:
            prune([layer], [layer.get_weights()], 0.9)
    return model


def probe_files(workdir: Path) -> dict[str, Path]:
    import tensorflow as tf
    import tf_keras as keras

    from edgecxr.converter import quiet_converter

    out = {}
    for name, (_, kwargs) in PROBES.items():
        keras.utils.set_random_seed(0)
        model = build_probe(**kwargs)
        for sparse in (False, True):
            conv = tf.lite.TFLiteConverter.from_keras_model(model)
            if sparse:
                conv.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
            with quiet_converter():
                flat = explicit_same_padding(conv.convert())
            path = workdir / f"probe_{name.replace(' ', '').replace('+', '_')}_{'sparse' if sparse else 'dense'}.tflite"
            path.write_bytes(flat)
            out[f"{name}, {'sparse' if sparse else 'dense'}"] = path
    return out


def _all_layers(model) -> list:
    import tf_keras as keras

    out, stack = [], list(model.layers)
    while stack:
        layer = stack.pop(0)
        if isinstance(layer, keras.Model):
            stack = list(layer.layers) + stack
        else:
            out.append(layer)
    return out


def nchw_friendly(model, cfg):
    """``model`` rebuilt inside :func:`nchw_friendly_graph`, with its weights (and the SE constants folded)."""
    from edgecxr.config import TrainConfig
    from edgecxr.model import build_model

    with nchw_friendly_graph():
        twin = build_model(TrainConfig.from_dict({**cfg.__dict__, "weights": "none", "head_epochs": 0}))
    weights = {layer.name: layer.get_weights() for layer in _all_layers(model) if layer.weights}
    for layer in _all_layers(twin):
        if layer.weights:
            layer.set_weights(weights[layer.name])
    fold_se_constants(twin)
    return twin


def fold_se_constants(model) -> None:
    """hard_sigmoid(y) = relu6(y + 3) / 6: +3 into squeeze_excite/Conv_1's bias, /6 into the block's
    projection (a linear 1x1 convolution right after the multiply, so scaling its kernel is exact)."""
    by_name = {layer.name: layer for layer in _all_layers(model)}
    for name, layer in by_name.items():
        if name.endswith("squeeze_excite/Conv_1"):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, bias + 3.0])
            project = by_name[name.split("squeeze_excite/")[0] + "project"]
            project.set_weights([w / 6.0 for w in project.get_weights()])


def prunable(model) -> list:
    """The backbone's 1x1 Conv2D layers on a spatial map (squeeze-excite 1x1s act on a 1x1 map: skipped)."""
    import tf_keras as keras

    return [layer for layer in _all_layers(model)
            if type(layer) is keras.layers.Conv2D and tuple(layer.kernel_size) == (1, 1)
            and "squeeze_excite" not in layer.name]


def prune(layers, original: list[np.ndarray], sparsity: float) -> float:
    """Zero the smallest |w| `sparsity` share of each layer's kernel; returns the share of zeros overall."""
    zeros = total = 0
    for layer, weights in zip(layers, original):
        kernel = weights[0].copy()
        if sparsity > 0:
            k = int(round(kernel.size * sparsity))
            cut = np.partition(np.abs(kernel).ravel(), k - 1)[k - 1]
            kernel[np.abs(kernel) <= cut] = 0.0
        layer.set_weights([kernel, *weights[1:]])
        zeros += int((kernel == 0).sum())
        total += kernel.size
    return zeros / total


def convert(model, size: int, sparse: bool) -> bytes:
    import tensorflow as tf

    from edgecxr.converter import make_converter, quiet_converter

    conv = make_converter(model, size)
    if sparse:
        conv.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    with quiet_converter():
        return conv.convert()


def file_facts(path: Path) -> dict:
    """What the flatbuffer holds: tensors with sparsity parameters, DENSIFY ops, and the op mix."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    sparse = [t for t in it.get_tensor_details() if t.get("sparsity_parameters")]
    ops = [op["op_name"] for op in it._get_ops_details()]
    return {"sparse_tensors": len(sparse), "densify": ops.count("DENSIFY"), "ops": len(ops),
            "mb": path.stat().st_size / 1e6}


# Runs inside the emulated arm64 root (numpy + ai-edge-litert only): per file, the probabilities for
# one fixed input and the p50 of each interleaved round.
EMULATED_SCRIPT = """
import json, random, sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
rounds, calls, names = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
x = np.random.default_rng(0).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
its, out = {}, {"outputs": {}, "p50": {n: [] for n in names}, "errors": {}}
for n in names:
    try:
        it = Interpreter(model_path=n, num_threads=1)
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
    except Exception as exc:  # a file XNNPACK cannot set up here: recorded, the others still timed
        out["errors"][n] = str(exc).splitlines()[0][:160]
        continue
    out["outputs"][n] = it.get_tensor(it.get_output_details()[0]["index"]).ravel().tolist()
    its[n] = it
order = list(its)
rng = random.Random(0)
for _ in range(rounds):
    rng.shuffle(order)
    for n in order:
        ts = []
        for _ in range(calls):
            t0 = time.perf_counter()
            its[n].invoke()
            ts.append(time.perf_counter() - t0)
        out["p50"][n].append(float(np.median(ts)) * 1e3)
json.dump(out, open("result.json", "w"))
"""


def reference_outputs(files: dict[str, Path]) -> dict[str, np.ndarray]:
    """x86 probabilities for the emulated run's fixed input (int8_speed.make_interpreter sets the same
    input: numpy's default_rng(0), uniform 0..255)."""
    out = {}
    for key, path in files.items():
        it = make_interpreter(path, threads=1)
        it.invoke()
        out[key] = it.get_tensor(it.get_output_details()[0]["index"]).ravel()
    return out


def time_emulated(files: dict[str, Path], size: int, cpu: str, rounds: int, calls: int, log) -> dict | None:
    """Interleaved timing and outputs in pi_check.sh's arm64 root under qemu-user (via pi_exec.sh)."""
    with tempfile.TemporaryDirectory(prefix="edgecxr-sparse-arm-") as tmp:
        tmp = Path(tmp)
        names = {}
        for key, path in files.items():
            shutil.copy(path, tmp / path.name)
            names[path.name] = key
        (tmp / "time.py").write_text(EMULATED_SCRIPT.replace("SIZE", str(size)))
        log(f"emulated {cpu}: {rounds} rounds x {calls} invokes x {len(files)} files ...")
        proc = subprocess.run(["bash", str(REPO / "benchmarks" / "pi_exec.sh"), cpu, str(tmp), "python", "time.py",
                               str(rounds), str(calls), *names], capture_output=True, text=True)
        if proc.returncode != 0 or not (tmp / "result.json").is_file():
            log(f"emulated {cpu} failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
            return None
        raw = json.loads((tmp / "result.json").read_text())
    return {"p50": {names[n]: v for n, v in raw["p50"].items()},
            "outputs": {names[n]: np.array(v) for n, v in raw["outputs"].items()},
            "errors": {names[n]: v for n, v in raw["errors"].items()}}


def kernels_used(path: Path, invokes: int = 20) -> dict[str, float] | None:
    """XNNPACK micro-kernels one invoke runs (M instructions each), from callgrind; None without valgrind.

    The load-independent answer to "did the sparse (SpMM, CHW) kernels run?": timings on a shared
    2-core machine cannot tell a 5% change from noise, the kernel names can.
    """
    if not shutil.which("valgrind"):
        return None
    from int8_speed import CALLGRIND_SCRIPT

    with tempfile.TemporaryDirectory() as tmp:
        script, out = Path(tmp) / "cg.py", Path(tmp) / "cg.out"
        script.write_text(CALLGRIND_SCRIPT)
        proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                               str(script), str(path), str(invokes)], capture_output=True, text=True)
        if proc.returncode != 0:
            return None
        ann = subprocess.run(["callgrind_annotate", str(out)], capture_output=True, text=True).stdout
    found = {}
    for line in ann.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+\S*?:(xnn_\w*ukernel\w*)", line)
        if m:
            found[m.group(2)] = int(m.group(1).replace(",", "")) / invokes / 1e6
    return found


def score(paths: dict[str, Path], run: str, cfg, log) -> dict[str, dict]:
    """``edgecxr evaluate`` of each file on the run's own validation split: accuracy, worst source."""
    from edgecxr.evaluate import evaluate
    from edgecxr.model import model_spec
    from edgecxr.spec import sidecar_path

    out = {}
    for key, path in paths.items():
        sidecar_path(path).write_text(model_spec(cfg, name=path.stem).to_json())
        metrics, _ = evaluate(path, data=cfg.data, extra=tuple(cfg.extra_data), split="val",
                              splits_file=str(Path(run) / "splits.csv"), out=path.with_suffix(".eval"), force=True)
        out[key] = metrics
        log(f"scored {key}: {metrics['accuracy']['value']:.1%}")
    return out


def _rate(m: dict) -> str:
    lo, hi = m["ci"]
    return f"{m['value']:.1%} ({lo:.1%}-{hi:.1%}), {m['k']}/{m['n']}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", help="a trained run directory (accuracy is scored with --data)")
    src.add_argument("--config", help="a recipe: its network with random weights, latency only")
    ap.add_argument("--minimalistic", action="store_true", help="with --config: the minimalistic network instead")
    ap.add_argument("--no-score", action="store_true", help="timing only, even with --run")
    ap.add_argument("--sparsity", type=float, nargs="+", default=[0.7, 0.8, 0.9])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "SPARSE.md"))
    ap.add_argument("--keep", help="keep the .tflite files in this directory")
    ap.add_argument("--arm", action="store_true",
                    help="also run the files in pi_check.sh's emulated arm64 root (root needed; see pi_exec.sh)")
    ap.add_argument("--arm-cpus", nargs="+", default=["cortex-a76", "cortex-a72"])
    ap.add_argument("--emulated-rounds", type=int, default=3)
    ap.add_argument("--emulated-calls", type=int, default=20)
    ap.add_argument("--notes", default=str(REPO / "benchmarks" / "sparse_notes.md"),
                    help="hand-written reading put at the top of the report (kept across reruns)")
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"error: {out} exists; pass --force to replace it", file=sys.stderr)
        return 1
    if any(not 0 < s < 1 for s in args.sparsity):
        print("error: --sparsity: each value must be between 0 and 1", file=sys.stderr)
        return 1

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = os.getloadavg()
    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="edgecxr-sparse-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.minimalistic and args.run:
        print("error: --minimalistic: only with --config (a run's network is what it was trained as)", file=sys.stderr)
        return 1
    model, cfg, trained = load_network(args.run, args.config, args.minimalistic)
    files: dict[str, Path] = {}
    achieved: dict[str, float] = {}
    n_params = 0
    for graph, net in (("Keras graph", model), ("NCHW-friendly graph", nchw_friendly(model, cfg))):
        layers = prunable(net)
        original = [layer.get_weights() for layer in layers]
        n_params = sum(w[0].size for w in original)
        plan = [(0.0, False)] + [(s, True) for s in args.sparsity]
        plan += [(max(args.sparsity), False)]  # the same zeros stored dense: do zeros alone change anything?
        for sparsity, sparse in plan:
            zeros = prune(layers, original, sparsity)
            key = f"{graph}, " + ("dense" if sparsity == 0 else
                                  f"{sparsity:.0%} pruned, stored {'sparse' if sparse else 'dense'}")
            t0 = time.perf_counter()
            flat = convert(net, cfg.image_size, sparse)
            if not graph.startswith("Keras"):
                flat = explicit_same_padding(flat)
            tag = "keras" if graph.startswith("Keras") else "nchw"
            path = workdir / f"{tag}_{int(sparsity * 100)}_{'sparse' if sparse else 'dense'}.tflite"
            path.write_bytes(flat)
            files[key] = path
            achieved[key] = zeros
            log(f"built {path.name}: {len(flat) / 1e6:.2f} MB in {time.perf_counter() - t0:.0f} s")
        prune(layers, original, 0.0)
    facts = {k: file_facts(p) for k, p in files.items()}
    timings = {t: time_interleaved({k: (p, True) for k, p in files.items()}, t, args.rounds, args.calls, log)
               for t in (1, 2)}
    sparsest = f"NCHW-friendly graph, {max(args.sparsity):.0%} pruned, stored sparse"
    kernels = {k: kernels_used(files[k]) for k in ("Keras graph, dense", sparsest)}
    emulated = {cpu: time_emulated(files, cfg.image_size, cpu, args.emulated_rounds, args.emulated_calls, log)
                for cpu in args.arm_cpus} if args.arm else {}
    probes = probe_files(workdir) if args.arm else {}
    probed = time_emulated(probes, 64, args.arm_cpus[0], args.emulated_rounds, 5, log) if probes else None
    accuracy = {}
    if trained and not args.no_score:
        accuracy = score(files, args.run, cfg, log)
    load_end = os.getloadavg()

    from edgecxr.bench import _cpu_name

    base = "Keras graph, dense"
    lines = ["# XNNPACK sparse inference: magnitude-pruned 1x1 convolutions, float32", "",
             f"Run {started} with `python benchmarks/sparse_speed.py "
             f"{'--run ' + args.run if args.run else '--config ' + args.config}"
             f"{' --minimalistic' if args.minimalistic else ''}{' --arm' if args.arm else ''} --rounds {args.rounds} "
             f"--calls {args.calls}`. CPU: {_cpu_name()}, {os.cpu_count()} cores. "
             f"ai-edge-litert {_version('ai-edge-litert')}, tensorflow {_version('tensorflow')}. "
             f"Load average (1/5/15 min) at start {'/'.join(f'{v:.1f}' for v in load_start)}, "
             f"at the end {'/'.join(f'{v:.1f}' for v in load_end)}.", "",
             f"Network: MobileNetV3{cfg.architecture.capitalize()}{' minimalistic' if cfg.minimalistic else ''}, "
             f"alpha {cfg.alpha}, {cfg.image_size} px, "
             + ("trained run `" + args.run + "`" if trained else "random weights (latency only)")
             + f". Pruned: {len(prunable(model))} 1x1 convolutions of the backbone, {n_params:,} weights, one-shot by "
             "magnitude per layer, no fine-tuning.", ""]
    if args.notes and Path(args.notes).is_file():
        lines += [Path(args.notes).read_text().strip(), ""]
    for t in (1, 2):
        lines += [f"## p50 per round, {t} thread(s) (ms; {args.calls} invokes per file per round)", "",
                  "| file | zeros in the pruned kernels | tensors stored sparse | DENSIFY ops | size MB | rounds "
                  "| median | vs dense |", "|---|---|---|---|---|---|---|---|"]
        dense_med = float(np.median(timings[t][base]))
        for key in files:
            ps = timings[t][key]
            med = float(np.median(ps))
            f = facts[key]
            lines.append(f"| {key} | {achieved[key]:.0%} | {f['sparse_tensors']} | {f['densify']} | {f['mb']:.2f} | "
                         f"{' / '.join(f'{p:.3f}' for p in ps)} | {med:.3f} | {med / dense_med:.2f}x |")
        lines.append("")
    if accuracy:
        lines += ["## Validation split of the run (one-shot pruning, no fine-tuning; 95% Wilson intervals)", "",
                  "| file | accuracy | worst source |", "|---|---|---|"]
        for key, m in accuracy.items():
            worst = m.get("worst_source")
            lines.append(f"| {key} | {_rate(m['accuracy'])} | "
                         f"{worst['source'] + ' ' + _rate(worst['rate']) if worst else '-'} |")
        lines.append("")
    lines += ["## Which XNNPACK kernels ran (callgrind, 1 thread, M instructions per invoke)", "",
              "Valgrind hides AVX-512, so these are the AVX2 paths; what matters is whether any `spmm` (sparse) or "
              "`chw` (NCHW layout) micro-kernel appears.", "", "| file | spmm / chw kernels | top kernels |",
              "|---|---|---|"]
    for key, found in kernels.items():
        if found is None:
            lines.append(f"| {key} | valgrind not available | |")
            continue
        sparse_k = [n for n in found if "spmm" in n or "chw" in n]
        top = sorted(found.items(), key=lambda kv: -kv[1])[:4]
        lines.append(f"| {key} | {', '.join(f'`{n}`' for n in sparse_k) or 'none'} | "
                     f"{'; '.join(f'`{n}` {v:.1f}' for n, v in top)} |")
    lines.append("")
    if emulated:
        ref = reference_outputs(files)
        lines += ["## Emulated arm64 (qemu-user in pi_check.sh's root, 1 thread)", "",
                  f"{args.emulated_rounds} interleaved rounds x {args.emulated_calls} invokes. qemu translates every "
                  "instruction: the milliseconds are not a Pi's, but the files run the same emulator side by side, so "
                  "a file whose ratio drops well below 1 runs a different, cheaper code path (XNNPACK enables sparse "
                  "inference on ARM, never on x86 with AVX). Max |p_arm64 - p_x86| is for one fixed input.", "",
                  "| file | " + " | ".join(f"{cpu} p50 rounds (ms) | vs dense | max diff vs x86" for cpu in emulated)
                  + " |", "|---|" + "---|---|---|" * len(emulated)]
        for key in files:
            cells = []
            for cpu, res in emulated.items():
                if res is None:
                    cells += ["failed", "", ""]
                    continue
                if key in res["errors"]:
                    cells += [f"fails to load: {res['errors'][key]}", "", ""]
                    continue
                ps = res["p50"][key]
                ratio = float(np.median(ps)) / float(np.median(res["p50"][base]))
                diff = float(np.abs(res["outputs"][key] - ref[key]).max())
                cells += [" / ".join(f"{p:.1f}" for p in ps), f"{ratio:.2f}x", f"{diff:.1e}"]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
        lines.append("")
    if probed:
        lines += [f"## What keeps the sparse path off: toy networks, emulated {args.arm_cpus[0]}", "",
                  "Each probe is a 64 px toy network whose 1x1 convolutions are 90% zeros, with one MobileNetV3 "
                  "feature added; the sparse file stored sparse vs the same zeros stored dense, same emulator, "
                  "interleaved. Sparse inference on is a ratio far below 1.", "",
                  "| probe | what | dense p50 (ms) | sparse p50 (ms) | sparse / dense |", "|---|---|---|---|---|"]
        for name, (what, _) in PROBES.items():
            if any(f"{name}, {kind}" in probed["errors"] for kind in ("dense", "sparse")):
                err = probed["errors"].get(f"{name}, sparse") or probed["errors"].get(f"{name}, dense")
                lines.append(f"| {name} | {what} | | | fails to load: {err} |")
                continue
            d = float(np.median(probed["p50"][f"{name}, dense"]))
            sp = float(np.median(probed["p50"][f"{name}, sparse"]))
            lines.append(f"| {name} | {what} | {d:.0f} | {sp:.0f} | {sp / d:.2f}x |")
        lines.append("")
    best = min((float(np.median(timings[1][k])) / float(np.median(timings[1][base])), k)
               for k in files if k != base)
    lines += ["## Verdict (1 thread)", "",
              f"Fastest pruned file: {best[1]}, {best[0]:.2f}x the dense file's p50 "
              f"({'meets' if best[0] <= BAR else 'misses'} the bar of {BAR:.2f}x that would justify fine-tuning "
              "under the mask).", ""]
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
