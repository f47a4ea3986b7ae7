"""Training on several machines: which worker this process is, who the chief is, where it may write.

``tf.distribute.MultiWorkerMirroredStrategy`` reads the cluster from the ``TF_CONFIG`` environment
variable; every worker runs the same ``edgecxr train`` command and keeps an identical copy of the
model (gradients are all-reduced each step). Only the chief (the ``chief`` task, or worker 0 when
the cluster has none) may write the run directory: the others still save checkpoints, because
saving reads variables through collective operations every worker must join, but into a
temporary directory that is removed when they finish. This module holds those rules and imports
no TensorFlow, so they are tested without starting a cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import EdgeCXRError


@dataclass(frozen=True)
class WorkerRole:
    """One process's place in the cluster that ``TF_CONFIG`` describes."""

    task_type: str  # "worker" or "chief"
    index: int  # the task index within its type
    addresses: tuple[str, ...]  # every task, chief first (the order TensorFlow numbers them in)
    position: int  # this task's place in ``addresses``

    @property
    def is_chief(self) -> bool:
        return self.position == 0

    @property
    def num_workers(self) -> int:
        return len(self.addresses)

    @property
    def address(self) -> str:
        return self.addresses[self.position]

    def describe(self) -> str:
        me = "the chief" if self.is_chief else f"chief: {self.addresses[0]}"
        return (f"{self.task_type} {self.index} of {self.num_workers} workers at {self.address} ({me}; "
                f"{'it writes the run directory' if self.is_chief else 'this worker writes nothing there'})")


def parse_workers(text: str) -> list[str]:
    """``host:port,host:port`` as a list, each entry checked (a typo fails here, not in gRPC)."""
    workers = [w.strip() for w in text.split(",") if w.strip()]
    if not workers:
        raise EdgeCXRError("--workers takes host:port,host:port,... (one entry per worker, the chief first)")
    for w in workers:
        host, sep, port = w.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise EdgeCXRError(f"--workers: {w!r} is not host:port (e.g. 10.0.0.1:12345)")
    if len(set(workers)) != len(workers):
        raise EdgeCXRError("--workers: an address is listed twice; every worker needs its own host:port")
    return workers


def tf_config(workers: list[str], index: int) -> dict:
    """The TF_CONFIG of worker ``index`` in a cluster of ``workers`` (worker 0 is the chief)."""
    if not 0 <= index < len(workers):
        raise EdgeCXRError(f"--worker-index must be 0..{len(workers) - 1} for {len(workers)} worker(s), not {index}")
    return {"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": index}}


def configure(workers: str | None, index: int | None, environ=os.environ) -> None:
    """Set ``TF_CONFIG`` from ``--workers``/``--worker-index``; both or neither, and not on top of one."""
    if workers is None and index is None:
        return
    if workers is None or index is None:
        raise EdgeCXRError("--workers and --worker-index go together: the same --workers list on every "
                           "worker, and each its own --worker-index (0 is the chief)")
    if environ.get("TF_CONFIG"):
        raise EdgeCXRError("TF_CONFIG is already set; use it or --workers/--worker-index, not both "
                           "(unset TF_CONFIG to use the options)")
    environ["TF_CONFIG"] = json.dumps(tf_config(parse_workers(workers), index))


def role_from_env(environ=os.environ) -> WorkerRole | None:
    """This process's role from ``TF_CONFIG``, or None when it is not set (a single worker)."""
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        task_type, index = str(task["type"]), int(task["index"])
        chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise EdgeCXRError('TF_CONFIG is not {"cluster": {"worker": ["host:port", ...]}, '
                           '"task": {"type": "worker", "index": N}}') from None
    if task_type not in ("chief", "worker"):
        raise EdgeCXRError(f"TF_CONFIG task type {task_type!r}: edgecxr trains with chief and worker tasks only")
    if len(chiefs) > 1:
        raise EdgeCXRError("TF_CONFIG lists more than one chief")
    members = chiefs if task_type == "chief" else workers
    if not 0 <= index < len(members):
        raise EdgeCXRError(f"TF_CONFIG task index {index} is not among the {len(members)} {task_type} address(es)")
    addresses = tuple(chiefs + workers)
    position = index if task_type == "chief" else len(chiefs) + index
    return WorkerRole(task_type, index, addresses, position)


def check_port_free(role: WorkerRole) -> None:
    """Refuse to start when this worker's port is taken (TensorFlow would abort with a C++ trace)."""
    port = int(role.address.rpartition(":")[2])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            raise EdgeCXRError(f"port {port} of this worker ({role.address}) is in use: another worker or program "
                               "holds it; pick a free port in --workers (or TF_CONFIG) on every worker") from None


@contextlib.contextmanager
def write_dir(run_dir: Path, role: WorkerRole | None):
    """Where this process writes: the run directory on the chief, a temporary one elsewhere."""
    if role is None or role.is_chief:
        yield run_dir
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"edgecxr-worker{role.position}-"))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def shard_order(index: np.ndarray, global_batch: int, pipeline: int, pipelines: int) -> np.ndarray:
    """The part of every global batch that input pipeline ``pipeline`` of ``pipelines`` reads.

    Every worker draws the same seeded epoch order; batch ``s`` of the run is
    ``index[s*global_batch:(s+1)*global_batch]`` and pipeline ``p`` takes its ``p``-th equal slice,
    so the workers together read each global batch exactly once and each decodes and augments only
    its own images (what tf.data's DATA auto-shard policy would not do: it runs the whole pipeline on
    every worker and drops the others' elements).
    """
    if global_batch % pipelines or len(index) % global_batch:
        raise ValueError("the order must be whole global batches that split evenly across pipelines")
    share = global_batch // pipelines
    steps = index.reshape(-1, global_batch)
    return steps[:, pipeline * share:(pipeline + 1) * share].reshape(-1)


def weights_fingerprint(weights: list) -> str:
    """A short hash of a model's weights, printed by every worker so they can be compared."""
    import hashlib

    digest = hashlib.sha256()
    for w in weights:
        digest.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def lost_worker(role: WorkerRole, run_dir: Path, exc: Exception) -> str:
    """The one-line error when another worker stops answering in the middle of training."""
    text = str(getattr(exc, "message", exc))
    unhealthy = re.search(r"unhealthy[^\n]*\n((?:\s*/job:\S+\n?)+)", text)
    if unhealthy:
        tasks = re.findall(r"/job:(\w+)/replica:\d+/task:(\d+)", unhealthy.group(1))
        why = ", ".join(f"{kind} {index}" for kind, index in tasks) + " stopped answering"
    else:
        lines = [re.sub(r"\{\{.*?\}\}\s*", "", line).strip() for line in text.splitlines()]
        why = next((line for line in lines if line), exc.__class__.__name__)[:160]
    return (f"{role.task_type} {role.index}: lost contact with the cluster ({why}); the last finished epoch is "
            f"in {run_dir / 'checkpoints'} on the chief; start every worker again with the same command plus --resume")


def barrier(strategy, tf, role: WorkerRole, run_dir: Path) -> None:
    """Wait until every worker gets here: a worker that exits while the chief still writes the run
    is reported as crashed by TensorFlow's coordination service, and a chief that fails while
    writing must not leave the others waiting without a word."""
    try:
        strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
    except tf.errors.OpError as exc:
        raise EdgeCXRError(lost_worker(role, run_dir, exc)) from None
