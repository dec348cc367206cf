"""A real local Ray head (`ray start --head`) with its Jobs API, for tests and benchmarks.

Every port is picked free and bound to 127.0.0.1 and the head gets its own temp dir, so other Ray
instances on the machine are left alone; it is stopped by killing exactly its own processes, never
with `ray stop` (which would stop every Ray on the machine).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lethe.testing.seaweedfs import free_port

RAY = str(Path(sys.executable).parent / "ray")  # this interpreter's, not whatever is on PATH
_PORTS = ("gcs", "dash", "agent", "agent_grpc", "client", "metrics", "nm", "om", "rtenv")


def head_env(extra_pythonpath: str | None = None) -> dict[str, str]:
    """The environment for `ray` commands and job drivers: this interpreter first on PATH."""
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    if extra_pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_pythonpath, os.environ.get("PYTHONPATH")) if p)
    env.pop("RAY_ADDRESS", None)
    return env


def own_pids(marker: str) -> list[int]:
    """Processes whose command line names `marker` (the head's temp dir: all of its daemons)."""
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


def _node_flags(temp: str, num_cpus: int) -> list[str]:
    """The flags every node of ours takes: its own worker-port range, temp dir, CPUs, store size."""
    # Worker ports below the kernel's ephemeral range (32768+), where free_port's picks live, so the
    # two can never overlap.
    lo = 10000 + free_port() % 20000
    return [
        f"--min-worker-port={lo}",
        f"--max-worker-port={lo + 200}",
        f"--temp-dir={temp}",
        f"--num-cpus={num_cpus}",
        "--object-store-memory=300000000",
        "--disable-usage-stats",
    ]


def head_start_cmd(temp: str, num_cpus: int) -> tuple[list[str], dict[str, int]]:
    """`ray start --head` on 127.0.0.1 with every port picked free; returns the command and ports."""
    ports = {name: free_port() for name in _PORTS}
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
        *_node_flags(temp, num_cpus),
    ]
    return cmd, ports


def worker_start_cmd(gcs_port: int, temp: str, num_cpus: int) -> list[str]:
    """`ray start` joining the head at 127.0.0.1:gcs_port as a worker node, its ports picked free."""
    return [
        RAY,
        "start",
        f"--address=127.0.0.1:{gcs_port}",
        "--node-ip-address=127.0.0.1",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        *_node_flags(temp, num_cpus),
    ]


@contextmanager
def local_ray_head(num_cpus: int = 4, pythonpath: str | None = None, timeout_s: float = 300) -> Iterator[str]:
    """Start a head; yield its Jobs API address (http://127.0.0.1:PORT) once it answers; stop it.

    A port picked free can be taken by someone else before Ray binds it: one retry with new ports.
    """
    from ray.job_submission import JobSubmissionClient

    temp = tempfile.mkdtemp(prefix="lrh-", dir="/tmp")  # short: Ray's socket paths are length-limited
    try:
        for attempt in (1, 2):
            cmd, ports = head_start_cmd(temp, num_cpus)
            # Its own session, so nothing it spawns shares our process group.
            start = subprocess.run(
                cmd,
                env=head_env(pythonpath),
                capture_output=True,
                text=True,
                timeout=timeout_s,
                start_new_session=True,
            )
            if start.returncode == 0:
                break
            stop_node(temp)
            if attempt == 2:
                raise RuntimeError("ray start failed:\n" + start.stdout[-2000:] + start.stderr[-2000:])
        url = f"http://127.0.0.1:{ports['dash']}"
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                JobSubmissionClient(url).list_jobs()
                break
            except Exception as e:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Ray Jobs API not up after {timeout_s:.0f} s") from e
                time.sleep(1)
        yield url
    finally:
        stop_node(temp)
        shutil.rmtree(temp, ignore_errors=True)  # the node's sockets, logs and session files


def stop_node(temp: str) -> None:
    """Stop the node whose temp dir is `temp` by its own processes' pids (never `ray stop`)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in own_pids(temp):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while own_pids(temp) and time.monotonic() < deadline:
            time.sleep(0.5)
    if own_pids(temp):
        raise RuntimeError(f"the Ray head in {temp} did not stop")
