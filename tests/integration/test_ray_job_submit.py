"""A KFP component's Ray step submitted to a Ray cluster through the Ray Jobs API.

A real local Ray head with its dashboard (the Jobs API) runs in a subprocess of its own, stopped by
pid at the end; the split component body runs here and must submit the step as a Ray job instead
of starting Ray itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lethe.config import build_config
from lethe.orchestration import kfp_steps
from lethe.orchestration.ray_submit import RemoteStepError, is_jobs_address, job_entrypoint

_HEAD = """
import os, signal, sys, time
import ray
ctx = ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=int(sys.argv[1]),
               object_store_memory=256 * 1024**2)
def stop(*_):
    ray.shutdown()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("READY", flush=True)
while True:
    time.sleep(1)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_jobs_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from ray.job_submission import JobSubmissionClient

    port = _free_port()
    log = tmp_path_factory.mktemp("ray_head") / "head.log"
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Jobs run `python -m lethe...`: the interpreter of this test session, with lethe importable.
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(
            p for p in [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")] if p
        ),
    }
    env.pop("RAY_ADDRESS", None)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HEAD, str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ray head exited:\n{log.read_text()[-3000:]}")
            try:
                JobSubmissionClient(url).list_jobs()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    pytest.fail(f"Ray Jobs API not up after 120 s:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


class _Artifact:
    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.metadata: dict = {}


def test_job_entrypoint_round_trips_the_config(tmp_path: Path) -> None:
    import shlex

    from lethe.config import config_from_json

    cfg = build_config(
        "smoke", overrides={"workdir": str(tmp_path / "w"), "resources": {"ray_address": "http://h:8265"}}
    )
    assert is_jobs_address(cfg.resources.ray_address) and not is_jobs_address("ray://h:10001")
    argv = shlex.split(job_entrypoint(cfg, "unlearn", "run123"))
    assert argv[:4] == ["python", "-m", "lethe.orchestration.ray_submit", "unlearn"]
    job_cfg = config_from_json(argv[argv.index("--config-json") + 1])
    assert job_cfg.resources.ray_address is None  # inside the job, Ray comes from the job runtime
    assert job_cfg.model_copy(update={"resources": cfg.resources}) == cfg
    assert argv[argv.index("--parent-run-id") + 1] == "run123"


@pytest.mark.slow
def test_split_component_submits_a_ray_job(ray_jobs_api: str, tmp_path: Path) -> None:
    from ray.job_submission import JobSubmissionClient

    work = tmp_path / "work"
    cfg = build_config(
        "smoke",
        overrides={
            "workdir": str(work),
            "data": {"dataset": "digits"},
            "request": {"classes": ["3"]},
            "resources": {"ray_address": ray_jobs_api},
        },
    )
    shards = _Artifact(tmp_path / "out" / "shards")
    out = kfp_steps.split(cfg.model_dump_json(), str(work), "", shards)
    assert (work / "shards" / "manifest.json").is_file() and (work / "shards" / "forget").is_dir()
    assert shards.metadata["data_digest"] == out["data_digest"] and shards.metadata["forget_count"] > 0
    jobs = [
        j
        for j in JobSubmissionClient(ray_jobs_api).list_jobs()
        if (j.submission_id or "").startswith("lethe-split-")
    ]
    assert [str(j.status).split(".")[-1] for j in jobs] == ["SUCCEEDED"]

    # a failing step: the job's one-line error comes back as the component's error
    bad = cfg.model_copy(update={"request": cfg.request.model_copy(update={"classes": ["Unicorn"]})})
    with pytest.raises(RemoteStepError, match="unknown class name"):
        kfp_steps.split(bad.model_dump_json(), str(tmp_path / "work2"), "", _Artifact(tmp_path / "o2"))
