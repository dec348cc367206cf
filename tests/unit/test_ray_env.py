"""lethe.execution.ray_env: a local Ray on loopback only, and Ray's notices off the terminal."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from lethe.execution.ray_env import _route_raylet_notices

_PROBE = (
    "import os, sys\n"
    "from lethe.config import build_config\n"
    "from lethe.execution.ray_env import prefer_loopback\n"
    "prefer_loopback(build_config('smoke', overrides=eval(sys.argv[1])).resources)\n"
    "print(os.environ.get('RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER'))\n"
)


@pytest.mark.parametrize(
    ("overrides", "env", "expected"),
    [
        ({}, {}, "0"),  # a local Ray of this run: loopback only
        ({"resources": {"ray_address": "10.0.0.5:6379"}}, {}, "None"),  # a cluster: its nodes' addresses
        ({}, {"RAY_ADDRESS": "10.0.0.5:6379"}, "None"),
    ],
)
def test_a_local_ray_is_kept_on_loopback_and_a_cluster_is_not(overrides, env, expected) -> None:
    base = {
        k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    }
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, repr(overrides)], env={**base, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_raylet_worker_count_notices_go_to_the_log_file_and_other_raylet_messages_stay() -> None:
    printed: list[dict] = []
    worker = SimpleNamespace(print_to_stdstream=lambda data, ignore_prefix: printed.append(data))
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    file_logger = logging.getLogger("test.ray.workers")
    file_logger.propagate, file_logger.handlers = False, [Keep()]
    file_logger.setLevel(logging.INFO)
    _route_raylet_notices(worker, file_logger)
    noise = "WARNING: 8 PYTHON worker processes have been started on node: abc with address: 127.0.0.1"
    oom = "Task was killed due to the node running low on memory."
    worker.print_to_stdstream({"lines": [noise], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    assert printed == [] and records == [f"(raylet) {noise}"]
    worker.print_to_stdstream({"lines": [noise, oom], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    assert [d["lines"] for d in printed] == [[oom]]  # what a person must see still reaches them
    worker.print_to_stdstream({"lines": ["lethe: step 1/2"], "pid": 7, "is_err": True}, ignore_prefix=False)
    assert printed[-1]["lines"] == ["lethe: step 1/2"]
    _route_raylet_notices(worker, file_logger)  # routed twice (a new Ray): the original is wrapped once
    worker.print_to_stdstream({"lines": [oom], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    assert printed[-1]["lines"] == [oom] and len(printed) == 3
