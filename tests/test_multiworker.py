"""Multi-worker training: the TF_CONFIG rules, the input sharding, and two real workers on 127.0.0.1.

The two-worker test starts ``edgecxr train`` twice as subprocesses (tests/multiworker_worker.py:
the real command with a tiny backbone), kills one worker after the first checkpoint, checks that
the chief stops with a one-line error, resumes both with --resume, and checks what each worker
wrote and logged. Every wait is bounded and every worker is killed in a ``finally``.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import edgecxr
from edgecxr import distributed
from edgecxr.cli import main
from edgecxr.errors import EdgeCXRError
from synthetic import make_dataset

WORKER = Path(__file__).with_name("multiworker_worker.py")


# --- TF_CONFIG, roles, sharding (no TensorFlow) -------------------------------------------------


def test_workers_option_sets_tf_config_for_each_worker():
    env = {}
    distributed.configure("10.0.0.1:2222,10.0.0.2:2222", 1, environ=env)
    assert json.loads(env["TF_CONFIG"]) == {"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]},
                                            "task": {"type": "worker", "index": 1}}
    role = distributed.role_from_env(env)
    assert (role.position, role.num_workers, role.is_chief, role.address) == (1, 2, False, "10.0.0.2:2222")
    assert "chief: 10.0.0.1:2222" in role.describe()
    assert distributed.role_from_env({}) is None


@pytest.mark.parametrize("workers, index, env, message", [
    ("10.0.0.1:2222", None, {}, "go together"),
    ("10.0.0.1", 0, {}, "is not host:port"),
    ("a:1,a:1", 0, {}, "listed twice"),
    ("a:1,b:1", 2, {}, "must be 0..1"),
    ("a:1,b:1", 0, {"TF_CONFIG": "{}"}, "already set"),
])
def test_bad_worker_options_are_one_line_errors(workers, index, env, message):
    with pytest.raises(EdgeCXRError, match=message):
        distributed.configure(workers, index, environ=env)


def test_a_chief_task_comes_first_and_bad_tf_config_is_explained():
    cluster = {"chief": ["c:1"], "worker": ["w:1", "w:2"]}
    def role(task_type, index):
        return distributed.role_from_env({"TF_CONFIG": json.dumps({"cluster": cluster,
                                                                   "task": {"type": task_type, "index": index}})})

    chief, second = role("chief", 0), role("worker", 1)
    assert chief.is_chief and chief.num_workers == 3
    assert not second.is_chief and second.position == 2 and second.address == "w:2"
    for bad in ("not json", json.dumps({"task": {}}),
                json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 5}}),
                json.dumps({"cluster": cluster, "task": {"type": "ps", "index": 0}})):
        with pytest.raises(EdgeCXRError):
            distributed.role_from_env({"TF_CONFIG": bad})


def test_shards_split_every_global_batch_between_workers():
    order = np.random.default_rng(0).permutation(48)  # 3 steps of a global batch of 16
    shards = [distributed.shard_order(order, 16, p, 2) for p in range(2)]
    for step in range(3):
        mine = [set(s[step * 8:(step + 1) * 8]) for s in shards]
        assert not mine[0] & mine[1]
        assert mine[0] | mine[1] == set(order[step * 16:(step + 1) * 16])


def test_only_the_chief_writes_the_run_directory(tmp_path):
    chief = distributed.WorkerRole("worker", 0, ("a:1", "b:1"), 0)
    other = distributed.WorkerRole("worker", 1, ("a:1", "b:1"), 1)
    with distributed.write_dir(tmp_path, chief) as out:
        assert out == tmp_path
    with distributed.write_dir(tmp_path, other) as out:
        assert out != tmp_path and out.is_dir()
        (out / "checkpoints").mkdir()
    assert not out.exists()


def test_a_taken_port_is_refused_before_tensorflow_starts():
    with socket.socket() as sock:
        sock.bind(("", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(EdgeCXRError, match=f"port {port} .* is in use"):
            distributed.check_port_free(distributed.WorkerRole("worker", 0, (f"127.0.0.1:{port}",), 0))


def test_cli_worker_options_fail_in_one_line(tmp_path, monkeypatch):
    # --workers sets TF_CONFIG in this process; setenv makes monkeypatch remove it again afterwards,
    # so later tests in the same process do not see a cluster.
    monkeypatch.setenv("TF_CONFIG", "")
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "r"), "--workers", "a:1,b:2"])
    assert result.exit_code == 1 and "error: --workers and --worker-index go together" in result.output
    result = CliRunner().invoke(main, ["train", str(tmp_path), "--out", str(tmp_path / "r"), "--workers", "a:1",
                                       "--worker-index", "0", "--strategy", "mirrored"])
    assert result.exit_code == 1 and "multiworker" in result.output and "Traceback" not in result.output


def test_a_worker_cannot_resume_without_the_chiefs_run_directory(tmp_path, monkeypatch):
    from edgecxr.config import TrainConfig
    from edgecxr.train import train

    monkeypatch.setenv("TF_CONFIG", json.dumps(distributed.tf_config(["127.0.0.1:1", "127.0.0.1:2"], 1)))
    with pytest.raises(EdgeCXRError, match="readable here at the same path"):
        train(TrainConfig(data=str(tmp_path), strategy="multiworker"), tmp_path / "not here", resume=True)


# --- two real workers ------------------------------------------------------------------------------


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """Two ``edgecxr train`` workers on 127.0.0.1; logs in files, every process killed at the end."""

    def __init__(self, root: Path):
        self.root, self.procs, self.logs = root, [], []
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(edgecxr.__file__).parents[1]),
                                                                  os.environ.get("PYTHONPATH", "")]),
                    "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.env.pop("TF_CONFIG", None)

    def start(self, name: str, args_for):
        """Start worker i with ``args_for(i)``; a fresh pair of ports each time."""
        ports = free_ports(2)
        workers = ",".join(f"127.0.0.1:{p}" for p in ports)
        self.procs, self.logs = [], []
        (self.root / f"tmp-{name}").mkdir()
        env = {**self.env, "TMPDIR": str(self.root / f"tmp-{name}")}
        for i in range(2):
            log = self.root / f"{name}-worker{i}.log"
            self.logs.append(log)
            with log.open("w") as fh:
                self.procs.append(subprocess.Popen(
                    [sys.executable, str(WORKER), "train", *args_for(i), "--workers", workers, "--worker-index", str(i)],
                    env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=self.root))
        return ports

    def wait(self, proc, deadline):
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        return proc.returncode

    def text(self, i):
        return self.logs[i].read_text()

    def kill_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def test_two_workers_train_one_run_and_resume_after_a_worker_dies(tmp_path):
    pytest.importorskip("tf_keras")
    data = make_dataset(tmp_path / "data", per_class=16, size=32)
    run, elsewhere = tmp_path / "run", tmp_path / "worker 1 out"
    common = ["--weights", "none", "--image-size", "32", "--batch-size", "8", "--minimalistic",
              "--set", "head_width=16", "--set", "augment=false", "--set", "val_fraction=0.25",
              "--set", "test_fraction=0.0", "--set", "num_threads=1"]
    cluster = Cluster(tmp_path)
    deadline = time.monotonic() + 240  # the whole test; each phase below has its own bound too
    try:
        # 1. A new run; worker 1 is given another --out to show it writes nothing at its own either.
        ports = cluster.start("first", lambda i: [str(data), "--out", str(run if i == 0 else elsewhere),
                                                  "--epochs", "3", *common])
        state = run / "checkpoints" / "state.json"
        phase = min(deadline, time.monotonic() + 150)
        while not (state.is_file() and json.loads(state.read_text())["epoch"] >= 1):
            assert all(p.poll() is None for p in cluster.procs), cluster.text(0)[-2000:] + cluster.text(1)[-2000:]
            assert time.monotonic() < phase, "no checkpoint within 150 s"
            time.sleep(0.2)
        cluster.procs[1].kill()
        assert cluster.wait(cluster.procs[0], min(deadline, time.monotonic() + 90)) == 1
        chief_log = cluster.text(0)
        # how the loss shows depends on where the chief was (a heartbeat timeout names the worker)
        error = [line for line in chief_log.splitlines() if line.startswith("error: ")]
        assert len(error) == 1 and error[0].startswith("error: worker 0: lost contact with the cluster ("), chief_log
        assert error[0].endswith("plus --resume") and "Traceback" not in chief_log, chief_log
        assert f"worker 0 of 2 workers at 127.0.0.1:{ports[0]} (the chief" in chief_log
        assert f"worker 1 of 2 workers at 127.0.0.1:{ports[1]} (chief: 127.0.0.1:{ports[0]}" in cluster.text(1)
        assert not elsewhere.exists()
        stopped_at = json.loads(state.read_text())["epoch"]
        assert 1 <= stopped_at < 3

        # 2. Both workers again with --resume (the chief's run directory, readable by worker 1 here).
        cluster.start("resumed", lambda i: ["--out", str(run), "--resume"])
        codes = [cluster.wait(p, min(deadline, time.monotonic() + 150)) for p in cluster.procs]
        logs = [cluster.text(0), cluster.text(1)]
        assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    finally:
        cluster.kill_all()

    for i, log in enumerate(logs):
        assert f"resuming at epoch {stopped_at + 1} of 3" in log
        assert "global batch 16 = batch 8 x 2 replica(s) on 2 workers" in log
        assert f"input pipeline {i} of 2: 8 of every 16 images per step" in log
    fingerprints = [re.search(r"worker \d: final weights (\w+)", log).group(1) for log in logs]
    assert fingerprints[0] == fingerprints[1]
    assert "done: " in logs[0] and "wrote " in logs[1]

    with open(run / "history.csv") as fh:
        assert [line.split(",")[0] for line in fh.read().splitlines()[1:]] == ["0", "1", "2"]
    assert json.loads((run / "checkpoints" / "state.json").read_text())["epoch"] == 3
    expected = {"config.json", "splits.csv", "history.csv", "model_spec.json", "metrics.json", "report.md",
                "confusion_matrix.png", "reliability.png", "checkpoints", "plots"}
    assert {p.name for p in run.iterdir()} == expected
    assert {p.name for p in (run / "checkpoints").iterdir()} == {"best.weights.h5", "last.weights.h5", "state.json"}
    # worker 1 wrote its checkpoints in a temporary directory: left behind when it was killed, removed when it finished
    killed = list((tmp_path / "tmp-first").glob("edgecxr-worker1-*"))
    assert len(killed) == 1 and (killed[0] / "checkpoints" / "last.weights.h5").is_file()
    assert not list((tmp_path / "tmp-resumed").glob("edgecxr-worker*"))

    # The chief's last checkpoint holds the weights both workers reported.
    from multiworker_worker import tiny_backbone  # tests/ is on sys.path (conftest.py)

    from edgecxr import model as model_mod

    original = model_mod.build_backbone
    model_mod.build_backbone = tiny_backbone
    try:
        model, _ = model_mod.load_run_model(run, "last")
    finally:
        model_mod.build_backbone = original
    assert distributed.weights_fingerprint(model.get_weights()) == fingerprints[0]
