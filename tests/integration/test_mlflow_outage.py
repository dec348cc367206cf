"""MLflow server outages against the real thing: a dedicated `mlflow server` killed (SIGKILL) and
restarted on the same store, the Tracker's bounded retries, and `lethe run` dying with its server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from lethe.tracking import Tracker, TrackingError

FASHION = Path(os.environ.get("LETHE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


pytestmark = pytest.mark.usefixtures("restore_mlflow_globals")


def test_tracker_survives_a_server_restart_and_gives_up_after_its_bound(own_mlflow_server) -> None:
    server = own_mlflow_server
    tracker = Tracker(server.uri, "outage", retry_s=40)
    with tracker.pipeline_run("p", {}, {}) as run_id:
        server.kill()
        # Back after a few seconds while the call below is retrying: it must land, once.
        threading.Timer(2.0, server.start).start()
        tracker.log_metrics({"loss": 0.5})
        assert tracker.client.get_run(run_id).data.metrics == {"loss": 0.5}
        short = Tracker(server.uri, "outage", retry_s=2)  # records into the same active run
        server.kill()
        t0 = time.monotonic()
        with pytest.raises(TrackingError) as exc:
            short.log_metrics({"loss": 0.4})
        took = time.monotonic() - t0
        line = exc.value.line()
        assert line.startswith(f"MLflow server at {server.uri} unreachable for ")
        assert "nothing was registered; run the same command again once it is back" in line
        assert "\n" not in line and took < 15
        # Once given up, later calls (the failure path) make one attempt instead of waiting again.
        t1 = time.monotonic()
        with pytest.raises(TrackingError):
            short.set_tags({"a": "b"})
        assert time.monotonic() - t1 < took
        server.start()


def test_a_4xx_answer_is_not_retried(mlflow_server: str) -> None:
    tracker = Tracker(mlflow_server, "outage-4xx", retry_s=30)
    t0 = time.monotonic()
    assert tracker.run_status("0" * 32) is None  # RESOURCE_DOES_NOT_EXIST at once, not after 30 s
    assert time.monotonic() - t0 < 5


def _lethe(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(k, None)
    return subprocess.Popen(
        [sys.executable, "-m", "lethe.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _versions(uri: str, name: str) -> list:
    return list(MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions(f"name='{name}'"))


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_lethe_run_whose_server_dies_fails_in_one_line_and_the_rerun_completes(
    own_mlflow_server, tmp_path: Path
) -> None:
    server = own_mlflow_server
    conf = tmp_path / "retry.yaml"
    conf.write_text("tracking:\n  retry_s: 4\n")
    work = tmp_path / "work"
    args = ["run", "--preset", "smoke", "--config", str(conf), "--workdir", str(work)]
    args += ["--cache-dir", str(tmp_path / "cache"), "--tracking-uri", server.uri]
    proc = _lethe(args, tmp_path)
    state = work / "state.json"
    deadline = time.monotonic() + 400
    # Kill the server once the oracle is trained: the unlearn step is starting.
    while proc.poll() is None and time.monotonic() < deadline:
        if state.is_file() and "oracle" in json.loads(state.read_text() or "{}").get("timing_s", {}):
            break
        time.sleep(0.2)
    server.kill()
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("lethe: error: MLflow server at ") and "unreachable for" in last, err[-3000:]
    # The failure path still ran without the server: forget data deleted, certificate incomplete.
    assert not (work / "shards" / "forget").exists()
    cert = json.loads((work / "certificate" / "certificate.json").read_text())
    assert cert["status"] == "incomplete"

    server.start()
    assert _versions(server.uri, "lethe-mae") == []  # nothing registered, nothing half-registered
    again = _lethe(args, tmp_path)
    out2, err2 = again.communicate(timeout=600)
    assert again.returncode == 0, err2[-3000:]
    assert "reusing cached model" in err2  # the original and the oracle of the failed run
    assert Path(out2.strip().splitlines()[-1]).is_file()
    assert [v.version for v in _versions(server.uri, "lethe-mae")] == ["1"]
