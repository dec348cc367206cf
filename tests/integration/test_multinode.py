"""lethe on a real two-node Ray cluster on this machine, storage on the S3 server; a node dies mid-run.

A head (`ray start --head`, 5 logical CPUs) and a worker node (`ray start --address`, 4 logical CPUs),
each with its own temp dir, both on 127.0.0.1 with the S3 server's AWS_* variables, as docs/multi-node.md
asks of every node. A smoke `lethe run` on digits drives them from a subprocess with `--storage s3://...`
and `cpus_per_worker: 3`: a 3-CPU Train worker fits once on each node and never twice on one, so every
Ray Train run (pretrain, oracle, feature net, unlearn) places one worker on each node (Ray's default PACK
strategy spreads when no single node fits the placement group), and 3 CPUs stay free for Ray Data (with
only 1 free, its read tasks starved and pretraining took 3 minutes).
Once the unlearning run's first checkpoint is recorded in S3, every process of the worker node is frozen
(so the run cannot finish first) and then SIGKILLed: the node is gone, as a lost machine would be. A
replacement node joins with an empty temp dir; the run resumes there from the S3 checkpoint (step 3 is
reported once) and finishes with one registered model version.

Budget (issue 18, point 6): this one test, ~150 s of the suite's headroom.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lethe.testing.ray_head import head_env, head_start_cmd, own_pids, stop_node, worker_start_cmd

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
LETHE = [sys.executable, "-m", "lethe.cli"]
PREFIX = "multinode"
TRAIN_WORKER = "RayTrainWorker"  # Ray Train v2's worker actor class
SNAPSHOT = "checkpoint_manager_snapshot.json"  # written by the controller once it records a checkpoint
CONFIG = """\
resources: {cpus_per_worker: 3}
unlearn: {forget_passes: 20, max_steps: 24, checkpoint_every: 3}
"""


def _node_env(s3_env: dict[str, str]) -> dict[str, str]:
    return {**head_env(str(REPO)), **s3_env, "LETHE_S3_BACKOFF_S": "0.3"}


class _Cluster:
    """The head and worker nodes this test started; each is stopped by its own processes' pids."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env, self.temps, self.gcs_port, self.dashboard = env, [], 0, ""

    def _start(self, cmd: list[str], temp: str) -> None:
        self.temps.append(temp)
        r = subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=120, start_new_session=True
        )
        assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]

    def start_head(self, num_cpus: int) -> None:
        temp = tempfile.mkdtemp(prefix="lmh-", dir="/tmp")  # short: Ray's socket paths are length-limited
        cmd, ports = head_start_cmd(temp, num_cpus)
        self._start(cmd, temp)
        self.gcs_port, self.dashboard = ports["gcs"], f"http://127.0.0.1:{ports['dash']}"

    def start_worker(self, num_cpus: int) -> str:
        """Start a worker node in a temp dir of its own; return that temp dir (its processes' marker)."""
        temp = tempfile.mkdtemp(prefix="lmw-", dir="/tmp")
        self._start(worker_start_cmd(self.gcs_port, temp, num_cpus), temp)
        return temp

    def alive_nodes(self) -> list[dict]:
        from ray.util.state import list_nodes

        return [n.__dict__ for n in list_nodes(address=self.dashboard) if n.state == "ALIVE"]

    def wait_nodes(self, count: int, timeout: float = 60) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(nodes := self.alive_nodes()) != count:
            assert time.monotonic() < deadline, f"{len(nodes)} alive nodes, expected {count}"
            time.sleep(0.5)
        return nodes

    def train_workers(self) -> list[dict]:
        from ray.util.state import list_actors

        actors = list_actors(address=self.dashboard, filters=[("class_name", "=", TRAIN_WORKER)], limit=1000)
        return [a.__dict__ for a in actors]

    def stop(self) -> None:
        for temp in reversed(self.temps):
            stop_node(temp)
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture()
def cluster(s3_server) -> Iterator[_Cluster]:
    c = _Cluster(_node_env(s3_server.env()))
    try:
        c.start_head(num_cpus=5)
        yield c
    finally:
        c.stop()


def _signal_node(temp: str, sig: signal.Signals) -> None:
    """Send sig to every process of the node whose temp dir is `temp` (raylet, agents, workers)."""
    pids = own_pids(temp)
    assert pids, f"no processes of the node in {temp}"
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_first_checkpoint(server, proc: subprocess.Popen, timeout: float = 400) -> str:
    """The key of the unlearning run's checkpoint snapshot in S3, once the controller has written it."""
    client, deadline = server.client(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "lethe run ended before the unlearning run reported a checkpoint"
        page = client.list_objects_v2(Bucket="lethe", Prefix=f"{PREFIX}/ray/unlearn-")
        for obj in page.get("Contents", []):
            if obj["Key"].endswith(SNAPSHOT) and obj["Size"] > 0:
                return obj["Key"]
        time.sleep(0.1)
    raise AssertionError("no unlearning checkpoint in S3")


def _count(db: Path, sql: str) -> int:
    with sqlite3.connect(db) as con:
        return int(con.execute(sql).fetchone()[0])


def _lines(log: str, text: str) -> int:
    # Each line carries its worker's pid: a step reported by two worker groups is two distinct lines.
    return len({ln.strip() for ln in log.splitlines() if text in ln})


def test_two_node_run_survives_losing_a_node(cluster: _Cluster, s3_server, tmp_path: Path) -> None:
    first = cluster.start_worker(num_cpus=4)
    head_id = next(n["node_id"] for n in cluster.wait_nodes(2) if n["is_head_node"])
    (tmp_path / "cfg.yaml").write_text(CONFIG)
    work, log_path = tmp_path / "work", tmp_path / "run.log"
    args = ["run", "--preset", "smoke", "--dataset", "digits", "--forget-classes", "3"]
    args += ["--config", str(tmp_path / "cfg.yaml"), "--num-workers", "2", "--workdir", str(work)]
    args += ["--ray-address", f"127.0.0.1:{cluster.gcs_port}", "--storage", f"s3://lethe/{PREFIX}"]
    env = {**cluster.env, "RAY_DEDUP_LOGS": "0"}  # every worker line reaches the driver
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*LETHE, *args], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_first_checkpoint(s3_server, proc)
        # Frozen first, so the run cannot finish while the state API is asked where its workers are.
        _signal_node(first, signal.SIGSTOP)
        before = [a for a in cluster.train_workers() if a["state"] == "ALIVE"]
        _signal_node(first, signal.SIGKILL)
        cluster.start_worker(num_cpus=4)
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log_path.read_text(errors="replace")
    assert rc == 0, out[-4000:]

    # The unlearning run had one worker on each node when the worker node died ...
    nodes = {n["node_id"]: n for n in cluster.wait_nodes(2)}
    assert len(nodes) == 2 and head_id in nodes
    spare = next(i for i in nodes if i != head_id)
    assert len(before) == 2 and {a["node_id"] for a in before} - {head_id}, before
    lost = ({a["node_id"] for a in before} - {head_id}).pop()
    assert lost not in nodes
    # ... and its second worker group ran on the head and on the replacement node.
    workers = cluster.train_workers()
    assert any(a["node_id"] == spare for a in workers), workers
    assert all(a["state"] == "DEAD" for a in workers if a["node_id"] == lost)
    # Resumed from the checkpoint in S3, not started over: step 3 was reported by one group only.
    assert _lines(out, "unlearn step 3/24") == 1, out[-4000:]
    assert _lines(out, "unlearn step 24/24") == 1, out[-4000:]

    # One registered version; shards, checkpoints and models live in S3, not on the driver's disk.
    assert _count(work / "mlflow.db", "select count(*) from model_versions") == 1
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket="lethe", Prefix=PREFIX)["Contents"]]
    assert any("/ray/unlearn-" in k and "/checkpoint_" in k and k.endswith("model.pt") for k in keys)
    assert f"{PREFIX}/models/unlearned.pt" in keys and f"{PREFIX}/report/report.json" in keys
    assert not (work / "ray").exists() and not (work / "shards").exists()
