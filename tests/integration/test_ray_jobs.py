"""`ray job submit` against a real local head: split, pretrain, then the README's unlearn command.

The head gets its own temp dir and free ports on 127.0.0.1 and is stopped through its own process
group only (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lethe.testing.seaweedfs import free_port

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
        # `python` in an entrypoint is this interpreter.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("RAY_ADDRESS", None)
    return env


def _own_pids(marker: str) -> list[int]:
    """Processes whose command line names our head's temp dir (all of that head's daemons)."""
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
def ray_head() -> Iterator[str]:
    # Short path: Ray's socket paths must stay under ~107 characters.
    temp = tempfile.mkdtemp(prefix="lrj-", dir="/tmp")
    ports = {
        name: free_port()
        for name in ("gcs", "dash", "agent", "agent_grpc", "client", "metrics", "nm", "om", "rtenv")
    }
    lo = free_port()
    cmd = [
        RAY,
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
        f"--min-worker-port={20000 + lo % 20000}",
        f"--max-worker-port={20000 + lo % 20000 + 200}",
        f"--temp-dir={temp}",
        "--num-cpus=4",
        "--object-store-memory=300000000",
        "--disable-usage-stats",
    ]
    # Its own session: every daemon `ray start` spawns stays in this process group.
    start = subprocess.run(
        cmd, env=_env(), capture_output=True, text=True, timeout=180, start_new_session=True
    )
    pgid = None
    try:
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        pids = _own_pids(temp)
        assert pids, "no Ray process found for our temp dir"
        pgid = os.getpgid(pids[0])
        yield f"http://127.0.0.1:{ports['dash']}"
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = _own_pids(temp)
            if pgid is not None:
                try:
                    os.killpg(pgid, sig)
                except ProcessLookupError:
                    pass
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 15
            while _own_pids(temp) and time.monotonic() < deadline:
                time.sleep(0.5)
        assert not _own_pids(temp), "our Ray head did not stop"


def _submit_cli(
    address: str, script: str, *args: str, timeout: int = 900
) -> subprocess.CompletedProcess[str]:
    """Exactly the README's command: ray job submit --address ... --working-dir . -- python ray_jobs/..."""
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", ".", "--", "python", script, *args]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def test_submit_split_pretrain_unlearn_jobs(ray_head: str, tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    work = tmp_path / "work"
    common = ["--preset", "smoke", "--dataset", "digits", "--forget-classes", "3", "--workdir", str(work)]
    client = JobSubmissionClient(ray_head)
    job_id = client.submit_job(
        entrypoint="python ray_jobs/split.py " + " ".join(common), runtime_env={"working_dir": str(REPO)}
    )
    deadline = time.monotonic() + 600
    while (status := client.get_job_status(job_id)) not in {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
    }:
        assert time.monotonic() < deadline, "split job did not finish"
        time.sleep(2)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job_id)[-3000:]
    manifest = json.loads((work / "shards" / "manifest.json").read_text())
    assert manifest["shards"]["forget"]["count"] > 0 and manifest["dataset"] == "digits"
    # The job ran on our head: its driver joined the cluster instead of starting a Ray of its own.
    assert "Started a local Ray instance" not in client.get_job_logs(job_id)

    r = _submit_cli(ray_head, "ray_jobs/pretrain.py", *common)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    r = _submit_cli(ray_head, "ray_jobs/unlearn.py", *common)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "succeeded" in (r.stdout + r.stderr).lower()
    assert (work / "models" / "unlearned.pt").is_file()
    jobs = client.list_jobs()
    assert len(jobs) == 3 and all(j.status == JobStatus.SUCCEEDED for j in jobs)
