#!/usr/bin/env python
"""Does int8 pay on this CPU, and why (not)? Interleaved timing plus load-independent instruction counts.

    python benchmarks/int8_speed.py --int8 I.tflite --float32 F.tflite   # writes benchmarks/INT8_SPEED.md (--force)
    python benchmarks/int8_speed.py --int8 I.tflite --float32 F.tflite --rounds 5 --calls 300 --out /tmp/x.md

Files timed side by side in one process, interleaved (every round times every file, in a fresh
random order, `--calls` invokes each; a round's p50 per file is reported, so load changes hit every
file alike):

- an int8 file and its float32 twin (`--int8`, `--float32`; INT8_SPEED.md timed the minimalistic pair
  shipped until 2026-12-02, which `git show 2fd8fa3:models/edgecxr_int8.tflite` and
  `git show 2fd8fa3:models/edgecxr_float32.tflite` bring back), and the int8 file with XNNPACK off
  (the TFLite reference kernels);
- untrained MobileNetV3Small variants built here (latency does not depend on the weights' values,
  only on the graph; accuracy is NOT measured for them): minimalistic and standard (hard-swish,
  squeeze-excite) at 160 px as float32, float16 weights, int8 with uint8 / int8 / float32 I/O and int8
  with per-tensor weights; minimalistic at 128 and 224 px and width 0.75 (float32 and int8).

Instruction counts: `valgrind --tool=callgrind` runs K and K+100 invokes; the difference / 100 is the
instructions of one invoke, independent of the machine's load. Valgrind hides AVX-512 from the
program, so XNNPACK picks its AVX2 kernels there: the counts describe the AVX2 code path (the
kernel names are printed), the timings the real one. Calibration uses 64 images of --data (read,
never copied).
"""

from __future__ import annotations

import argparse
import os
import random
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
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CALLGRIND_SCRIPT = """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1], num_threads=1)
it.allocate_tensors()
d = it.get_input_details()[0]
rng = np.random.default_rng(0)
x = rng.integers(0, 255, d["shape"]).astype(d["dtype"]) if d["dtype"] != np.float32 else \\
    rng.uniform(0, 255, d["shape"]).astype(np.float32)
it.set_tensor(d["index"], x)
for _ in range(int(sys.argv[2])):
    it.invoke()
"""


def build_variants(workdir: Path, data: str, log) -> dict[str, Path]:
    """Untrained Keras models converted to the formats compared (TensorFlow is imported here only)."""
    import tensorflow as tf
    import tf_keras as keras

    from edgecxr.config import TrainConfig
    from edgecxr.converter import make_converter, quiet_converter
    from edgecxr.data import load_records, representative_sample
    from edgecxr.model import build_model
    from edgecxr.preprocess import load_images

    records = load_records(data, notes=[])
    picked = [records[i].file for i in representative_sample(records, 64, seed=0)]
    out: dict[str, Path] = {}
    configs = [("min160", True, 1.0, 160), ("std160", False, 1.0, 160), ("min128", True, 1.0, 128),
               ("min224", True, 1.0, 224), ("min160_a075", True, 0.75, 160)]
    for key, minimalistic, alpha, size in configs:
        keras.utils.set_random_seed(0)
        cfg = TrainConfig(data=data, image_size=size, weights="none", minimalistic=minimalistic, alpha=alpha)
        model = build_model(cfg)
        images, _ = load_images(picked, size, equalize=True)
        full = key in ("min160", "std160")
        modes = ["float32", "int8_uint8io"] + (["float16", "int8_int8io", "int8_floatio", "int8_pertensor"]
                                                if full else [])
        for mode in modes:
            conv = make_converter(model, size)
            if mode == "float16":
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
                conv.target_spec.supported_types = [tf.float16]
            elif mode.startswith("int8"):
                conv.optimizations = [tf.lite.Optimize.DEFAULT]
                conv.representative_dataset = lambda: ([img[None].astype(np.float32)] for img in images)
                conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                io = {"int8_int8io": tf.int8, "int8_floatio": tf.float32}.get(mode, tf.uint8)
                conv.inference_input_type = conv.inference_output_type = io
                if mode == "int8_pertensor":
                    conv._experimental_disable_per_channel = True
            t0 = time.perf_counter()
            with quiet_converter():
                flat = conv.convert()
            path = workdir / f"{key}_{mode}.tflite"
            path.write_bytes(flat)
            out[f"{key} {mode}"] = path
            log(f"built {path.name} ({len(flat) / 1e6:.2f} MB, {time.perf_counter() - t0:.0f} s)")
    return out


def make_interpreter(path: Path, threads: int, xnnpack: bool = True):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kw = {} if xnnpack else {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    it = Interpreter(model_path=str(path), num_threads=threads, **kw)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 255, d["shape"]).astype(d["dtype"]) if d["dtype"] != np.float32
         else rng.uniform(0, 255, d["shape"]).astype(np.float32))
    if d["dtype"] == np.int8:
        x = rng.integers(-128, 127, d["shape"]).astype(np.int8)
    it.set_tensor(d["index"], x)
    return it


def outside_delegate(path: Path) -> str:
    from edgecxr.delegation import delegation_note

    return delegation_note(path.read_bytes()) or "-"


def time_interleaved(files: dict[str, tuple[Path, bool]], threads: int, rounds: int, calls: int, log):
    """Per file, the p50 (ms) of each round; rounds visit the files in a fresh random order."""
    interps = {k: make_interpreter(p, threads, xnn) for k, (p, xnn) in files.items()}
    for it in interps.values():  # warm-up
        for _ in range(20):
            it.invoke()
    result = {k: [] for k in files}
    order = list(files)
    rng = random.Random(0)
    for r in range(rounds):
        rng.shuffle(order)
        for key in order:
            it = interps[key]
            ts = []
            for _ in range(calls):
                t0 = time.perf_counter()
                it.invoke()
                ts.append(time.perf_counter() - t0)
            result[key].append(float(np.median(ts)) * 1e3)
        log(f"threads {threads}: round {r + 1}/{rounds} done; load {os.getloadavg()[0]:.2f}")
    return result


def callgrind(path: Path, k: int = 10) -> tuple[float, list[tuple[str, float]]] | None:
    """Instructions per invoke (millions) and the top functions of one invoke, or None without valgrind."""
    if not shutil.which("valgrind"):
        return None
    counts, top = [], []
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "cg.py"
        script.write_text(CALLGRIND_SCRIPT)
        for n in (k, k + 100):
            out = Path(tmp) / f"cg.{n}.out"
            proc = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                                   str(script), str(path), str(n)], capture_output=True, text=True)
            m = re.search(r"Collected : (\d+)", proc.stderr)
            if proc.returncode != 0 or not m:  # a killed run still prints a (partial) count
                return None
            counts.append(int(m.group(1)))
            if n == k + 100:
                ann = subprocess.run(["callgrind_annotate", str(out)], capture_output=True, text=True).stdout
                for line in ann.splitlines():
                    m2 = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+\S*?:(\S+)", line)
                    if m2 and "PROGRAM" not in line and len(top) < 6:
                        top.append((m2.group(2), int(m2.group(1).replace(",", "")) / (k + 100) / 1e6))
    return (counts[1] - counts[0]) / 100 / 1e6, top


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cxr"))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "INT8_SPEED.md"))
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--int8", required=True, help="an int8 .tflite with uint8 I/O (see the docstring)")
    ap.add_argument("--float32", required=True, help="its float32 twin")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"error: {out} exists; pass --force to replace it", file=sys.stderr)
        return 1

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    loads = [os.uptime() if hasattr(os, "uptime") else None, os.getloadavg()]
    workdir = Path(tempfile.mkdtemp(prefix="edgecxr-int8-speed-"))
    shipped = {"shipped int8 (uint8 I/O)": Path(args.int8), "shipped float32": Path(args.float32)}
    for path in shipped.values():
        if not path.is_file():
            print(f"error: {path}: not found", file=sys.stderr)
            return 1
    variants = build_variants(workdir, args.data, log)
    files = {k: (p, True) for k, p in shipped.items()}
    files["shipped int8, XNNPACK off"] = (shipped["shipped int8 (uint8 I/O)"], False)
    files["shipped float32, XNNPACK off"] = (shipped["shipped float32"], False)
    files.update({k: (p, True) for k, p in variants.items()})
    timings = {t: time_interleaved(files, t, args.rounds, args.calls, log) for t in (1, 2)}
    loads.append(os.getloadavg())
    cg_keys = ["shipped int8 (uint8 I/O)", "shipped float32", "min160 int8_int8io", "min160 int8_uint8io",
               "std160 float32", "std160 int8_uint8io"]
    cg = {}
    for key in cg_keys:
        log(f"callgrind {key} ...")
        cg[key] = callgrind(files[key][0])
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("Model name")), "?")
    flags = next((ln for ln in cpu.splitlines() if ln.startswith("Flags")), "")
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512fp16") if f" {f}" in flags]

    lines = ["# int8 vs float32 on this CPU: interleaved timing and instruction counts", "",
             f"Run {started} with `python benchmarks/int8_speed.py --rounds {args.rounds} --calls {args.calls}`.",
             f"CPU: {model_name} (`lscpu`; {os.cpu_count()} cores, KVM guest; {', '.join(isa)}). "
             f"ai-edge-litert {_version('ai-edge-litert')}. Load average (1/5/15 min) at start "
             f"{'/'.join(f'{v:.1f}' for v in loads[1])}, at the end {'/'.join(f'{v:.1f}' for v in loads[2])}: "
             "a training run and other developers share the 2 cores, so single timings are noisy; every round "
             "is listed and the rounds interleave the files.", "",
             "Untrained variants: latency only (weights are random; the graph, not the values, sets the time). "
             "Accuracy is measured only for the shipped pair (README, MODEL_CARD).", ""]
    for t in (1, 2):
        lines += [f"## p50 per round, {t} thread(s) (ms; {args.calls} invokes per file per round)", "",
                  "| file | rounds | median of rounds | vs its float32 twin | size MB | outside XNNPACK |",
                  "|---|---|---|---|---|---|"]
        for key, (path, xnn) in files.items():
            ps = timings[t][key]
            med = float(np.median(ps))
            twin = _twin(key)
            ratio = f"{med / float(np.median(timings[t][twin])):.2f}x" if twin in files and twin != key else ""
            outside = outside_delegate(path) if xnn else "all (XNNPACK off)"
            lines.append(f"| {key} | {' / '.join(f'{p:.3f}' for p in ps)} | {med:.3f} | {ratio} | "
                         f"{path.stat().st_size / 1e6:.2f} | {outside} |")
        lines.append("")
    lines += ["## Instructions per invoke (callgrind, 1 thread, AVX2 kernels under valgrind)", "",
              "| file | M instructions / invoke | top functions (M instructions / invoke) |", "|---|---|---|"]
    for key, res in cg.items():
        if res is None:
            lines.append(f"| {key} | - | valgrind not available |")
            continue
        total, top = res
        tops = "; ".join(f"`{name}` {v:.2f}" for name, v in top)
        lines.append(f"| {key} | {total:.2f} | {tops} |")
    lines.append("")
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _twin(key: str) -> str:
    if key.startswith("shipped"):
        return "shipped float32, XNNPACK off" if "XNNPACK off" in key else "shipped float32"
    return key.split(" ")[0] + " float32"


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
