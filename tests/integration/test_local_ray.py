"""The local Ray a run starts for itself (lethe.execution.ray_env): its workers run at the driver's
priority, not Ray's nice 15, so a training worker's threads are not stalled by every process that
wakes on a 2-core machine; and it listens on loopback only."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = (
    "import os\n"
    "from lethe.config import build_config\n"
    "from lethe.execution.ray_env import ensure_ray, prefer_loopback\n"
    "res = build_config('smoke').resources\n"
    "prefer_loopback(res)  # as the CLI does, before Ray is imported\n"
    "import ray\n"
    "ensure_ray(res)\n"
    "print(ray.get(ray.remote(lambda: os.nice(0)).remote()), ray.nodes()[0]['NodeManagerAddress'])\n"
    "ray.shutdown()\n"
)


@pytest.mark.slow
def test_a_runs_own_ray_starts_its_workers_at_nice_0_on_loopback() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_worker_niceness")}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["0", "127.0.0.1"]
