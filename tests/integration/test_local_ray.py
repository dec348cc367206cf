"""The local Ray a run starts for itself (lethe.execution.ray_env): its workers run at the driver's
priority, not Ray's nice 15, so a training worker's threads are not stalled by every process that
wakes on a 2-core machine; it listens on loopback only; and its Ray Train runs start no
placement-group cleaner (it needs the State API, which that Ray does not serve)."""

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
    "from ray.train import ScalingConfig\n"
    "from ray.train.torch import TorchTrainer\n"
    "from lethe.execution.fit import PG_CLEANER, _trainer_class\n"
    "def callbacks(cls):\n"
    "    trainer = cls(lambda: None, scaling_config=ScalingConfig(num_workers=1))\n"
    "    return {type(c).__name__ for c in trainer._create_default_callbacks()}\n"
    "ray_s, ours = callbacks(TorchTrainer), callbacks(_trainer_class(TorchTrainer))\n"
    "print(PG_CLEANER in ray_s, PG_CLEANER in ours, sorted(ray_s - ours))\n"
    "ray.shutdown()\n"
)


@pytest.mark.slow
def test_a_runs_own_ray_starts_its_workers_at_nice_0_on_loopback() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_worker_niceness")}
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    nice_and_address, cleaner = out.stdout.splitlines()[-2:]
    assert nice_and_address.split() == ["0", "127.0.0.1"]
    # Ray's own trainer has the cleaner (a Ray upgrade that renames it fails here), the run's has not,
    # and nothing else is gone.
    assert cleaner == "True False ['PlacementGroupCleanerCallback']"


@pytest.mark.usefixtures("ray_session")
def test_a_ray_the_run_did_not_start_keeps_ray_trains_own_trainer() -> None:
    from ray.train.torch import TorchTrainer

    from lethe.execution.fit import _trainer_class
    from lethe.execution.ray_env import own_local_ray

    assert not own_local_ray()  # the test session's Ray: a cluster, as far as a run can tell
    assert _trainer_class(TorchTrainer) is TorchTrainer
