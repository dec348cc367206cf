"""Tracking URIs are checked at the edge (tracking.tracking_uri), and the MLflow retry helper's rules."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lethe.config import build_config
from lethe.errors import ConfigError
from lethe.tracking.retry import ServerRetry, TrackingError, is_transient


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:5000",
        "https://mlflow.example.com/",
        "sqlite:////abs/mlflow.db",
        "sqlite:///rel/mlflow.db",
        "postgresql://db.example.com:5432/mlflow",
        "postgresql+psycopg2://db/mlflow",
        "mysql+pymysql://db/mlflow",
        "mssql://db/mlflow",
        "databricks",
        "databricks://profile",
    ],
)
def test_tracking_stores_lethe_can_use_are_accepted(uri: str) -> None:
    assert build_config("smoke", overrides={"tracking": {"tracking_uri": uri}}).tracking_uri == uri


@pytest.mark.parametrize(
    "uri",
    [
        "bogus://x",
        "s3://bucket/mlflow",
        "http://",
        "sqlite://",
        "sqlite://host/x.db",
        "postgresql:///db",
        "databricks-uc",
        "uc:http://localhost:8080",
        "ftp://host/x",
        "/tmp/mlruns",
        "file:///tmp/mlruns",
    ],
)
def test_other_tracking_uris_fail_in_one_line_naming_field_schemes_and_value(
    uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ConfigError) as exc:
        build_config("smoke", overrides={"tracking": {"tracking_uri": uri}})
    line = exc.value.line()
    assert "tracking.tracking_uri" in line and "sqlite:///PATH" in line and repr(uri) in line
    assert "\n" not in line


def test_the_file_store_is_accepted_where_mlflow_allows_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    cfg = build_config("smoke", overrides={"tracking": {"tracking_uri": "file:///tmp/mlruns"}})
    assert cfg.tracking_uri == "file:///tmp/mlruns"


def test_credentials_are_refused_before_the_scheme_check_and_never_echoed() -> None:
    with pytest.raises(ConfigError) as exc:
        build_config("smoke", overrides={"tracking": {"tracking_uri": "bogus://u:s3cret@x"}})
    assert "s3cret" not in exc.value.line() and "credentials" in exc.value.line()


def test_lethe_run_with_a_bogus_tracking_uri_exits_2_in_one_line_without_ray(tmp_path: Path) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.monotonic()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lethe.cli",
            "run",
            "--preset",
            "smoke",
            "--workdir",
            str(tmp_path / "w"),
            "--tracking-uri",
            "bogus://x",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - t0 < 10
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "lethe: error: invalid configuration field tracking.tracking_uri"
    )
    assert "'bogus://x'" in lines[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "w").exists()  # nothing written, no Ray session dir


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_server_that_is_not_there_is_retried_for_the_bound_then_one_line() -> None:
    # A real refused connection through MLflow's REST client (no server listens on the port).
    from mlflow import MlflowClient

    uri = f"http://127.0.0.1:{_closed_port()}"
    retry = ServerRetry(uri, 1.5, remote=True)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    calls = {"n": 0}

    def call():
        calls["n"] += 1
        return client.get_experiment("0")

    t0 = time.monotonic()
    with pytest.raises(TrackingError) as exc:
        retry.call("get experiment", call)
    took = time.monotonic() - t0
    assert calls["n"] >= 2 and took < 10
    assert exc.value.line().startswith(f"MLflow server at {uri} unreachable for ")
    # down: the next call makes one attempt only
    calls["n"] = 0
    with pytest.raises(TrackingError):
        retry.call("get experiment", call)
    assert calls["n"] == 1


def test_what_is_transient() -> None:
    from mlflow.exceptions import MlflowException, RestException

    assert is_transient(ConnectionRefusedError())
    assert not is_transient(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "x"}))
    assert not is_transient(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "x"}))
    assert is_transient(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "x"}))
    # MLflow's default error code is INTERNAL_ERROR: a local error is not a server's 5xx
    assert not is_transient(MlflowException("The filesystem tracking backend is in maintenance mode"))
    assert not is_transient(ValueError("bug"))


def test_a_call_that_creates_something_reuses_what_a_lost_answer_created() -> None:
    retry = ServerRetry("http://h", 10, remote=True)
    made: list[str] = []

    def create() -> str:
        made.append("v1")
        raise ConnectionResetError("answer lost")  # created on the server, reply lost

    assert retry.call("create", create, before_retry=lambda: made[0] if made else None) == "v1"
    assert made == ["v1"]
