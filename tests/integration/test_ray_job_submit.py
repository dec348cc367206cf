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
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lethe.config import build_config
from lethe.orchestration import kfp_steps
from lethe.orchestration.ray_submit import RemoteStepError, is_jobs_address, job_entrypoint


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _own_pids(marker: str) -> list[int]:
    """Processes whose command line names our head's temp dir: every daemon of that head."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            pids.append(int(d.name))
    return pids


@pytest.fixture(scope="module")
def ray_jobs_api() -> Iterator[str]:
    """`ray start --head` with every port chosen here (other Rays may share the machine), stopped by
    killing exactly its processes (never `ray stop`, which would stop every Ray on the machine)."""
    from ray.job_submission import JobSubmissionClient

    temp = tempfile.mkdtemp(prefix="lkj-", dir="/tmp")  # short: Ray's socket paths are length-limited
    names = ("gcs", "dash", "agent", "agent_grpc", "client", "metrics", "nm", "om", "rtenv")
    ports = {n: _free_port() for n in names}
    lo = 20000 + _free_port() % 20000
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Jobs run `python -m lethe...`: this interpreter, with this checkout importable.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    env.pop("RAY_ADDRESS", None)
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={ports['gcs']}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={ports['dash']}",
        f"--dashboard-agent-listen-port={ports['agent']}",
        f"--dashboard-agent-grpc-port={ports['agent_grpc']}",
        f"--ray-client-server-port={ports['client']}",
        f"--metrics-export-port={ports['metrics']}",
        f"--node-manager-port={ports['nm']}",
        f"--object-manager-port={ports['om']}",
        f"--runtime-env-agent-port={ports['rtenv']}",
        f"--min-worker-port={lo}",
        f"--max-worker-port={lo + 200}",
        f"--temp-dir={temp}",
        "--num-cpus=4",
        "--object-store-memory=300000000",
        "--disable-usage-stats",
    ]
    start = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, start_new_session=True)
    url = f"http://127.0.0.1:{ports['dash']}"
    try:
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        deadline = time.monotonic() + 120
        while True:
            try:
                JobSubmissionClient(url).list_jobs()
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    pytest.fail("Ray Jobs API not up after 120 s")
                time.sleep(1)
        yield url
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in _own_pids(temp):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 15
            while _own_pids(temp) and time.monotonic() < deadline:
                time.sleep(0.5)
        assert not _own_pids(temp), "our Ray head did not stop"


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
