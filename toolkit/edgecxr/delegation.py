"""How much of a TFLite graph XNNPACK runs: the reason an int8 model is fast or slow on a CPU.

TF-free: it reads an allocated interpreter's node list.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


@dataclass
class Delegation:
    """How much of a TFLite graph the default delegate (XNNPACK) took over."""

    partitions: int  # delegate nodes; 1 means the whole graph runs in XNNPACK
    delegated: int  # original ops inside a delegate partition
    total: int  # original ops
    outside: dict[str, int]  # op name -> count of ops left to the reference kernels

    def describe(self) -> str:
        left = ", ".join(f"{k} x{v}" for k, v in sorted(self.outside.items())) or "none"
        return f"{self.partitions} XNNPACK partition(s), {self.delegated}/{self.total} ops delegated; outside: {left}"


def delegation_summary(interpreter) -> Delegation:
    """Which ops XNNPACK took, from an allocated interpreter's node list (TF-free).

    TFLite keeps the replaced nodes in its node list and appends one DELEGATE node per partition,
    whose inputs and outputs are the tensors crossing the partition boundary; walking back from a
    partition's outputs to its inputs visits exactly the ops it replaced.
    """
    ops = interpreter._get_ops_details()  # private, but the only way to see delegation from Python
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    originals = {op["index"]: op for op in ops if op["op_name"] != "DELEGATE"}
    producer = {int(t): op["index"] for op in originals.values() for t in op["outputs"]}
    covered: set[int] = set()
    for node in delegates:
        stop = {int(t) for t in node["inputs"]}
        stack, seen = [int(t) for t in node["outputs"]], set()
        while stack:
            t = stack.pop()
            if t in stop or t in seen or t not in producer:
                continue
            seen.add(t)
            covered.add(producer[t])
            stack.extend(int(x) for x in originals[producer[t]]["inputs"] if x >= 0)
    outside = Counter(op["op_name"] for i, op in originals.items() if i not in covered)
    return Delegation(len(delegates), len(covered), len(originals), dict(outside))


def delegation_note(tflite: bytes) -> str | None:
    from .quiet import filtered_stderr
    from .runtime import interpreter_backend

    interpreter_cls, name, _ = interpreter_backend()
    try:
        with filtered_stderr():
            interp = interpreter_cls(model_content=tflite, num_threads=1)
            interp.allocate_tensors()
        return delegation_summary(interp).describe()
    except (ValueError, RuntimeError, AttributeError, KeyError):
        return None
