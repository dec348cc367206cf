"""A `lethe run` that fails, or is stopped by SIGTERM, after the split still deletes the forget data
and certifies the run as incomplete, like the Kubeflow pipeline's exit handler does.

Both run the real CLI in a subprocess (local Ray for the split, MLflow on SQLite in the work dir):
one fails in pretrain on a registered source model of another architecture (no Ray Train run), the
other gets SIGTERM while pretrain trains, after a second `lethe run` on its work dir was refused.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from lethe.testing.processes import wait_for_output

pytestmark = pytest.mark.slow
LETHE = [sys.executable, "-m", "lethe.cli"]
COMMON = ("--preset", "smoke", "--dataset", "digits", "--forget-classes", "3")


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
    }


def _register_mae(work: Path, name: str, dim: int) -> str:
    """A lethe MAE for 8x8 digits with model.mae.dim = dim, registered as version 1 of `name` in the
    store `lethe run` uses by default (SQLite in the work dir, experiment "lethe")."""
    import torch

    from lethe import masks
    from lethe.config import build_config
    from lethe.models.checkpoint import build_model
    from lethe.models.families import get_family
    from lethe.tracking import Tracker

    cfg = build_config("smoke", overrides={"model": {"mae": {"dim": dim, "dec_dim": 16}}})
    model = build_model("mae", get_family("mae").build_arch(cfg.model.section("mae"), 8, 8, 1))
    mask = masks.expand(masks.box_mask(8, 8, 0.4, model.mask_cell), 4).contiguous()
    import mlflow

    work.mkdir(parents=True, exist_ok=True)
    # The Tracker points MLflow's process-wide URIs at its store: put them back for the tests after.
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        tracker = Tracker(f"sqlite:///{work / 'mlflow.db'}", "lethe")
        with tracker.step("register"):
            version = tracker.register_model(model, name, (torch.rand(4, 1, 8, 8), mask), {"method": "none"})
    finally:
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    return f"models:/{name}/{version}"


def _run_status(db: Path, run_id: str) -> tuple[str, dict[str, str]]:
    with sqlite3.connect(db) as con:
        (status,) = con.execute("select status from runs where run_uuid = ?", (run_id,)).fetchone()
        tags = dict(con.execute("select key, value from tags where run_uuid = ?", (run_id,)).fetchall())
    return status, tags


def _assert_cleaned_up_and_certified(work: Path, step: str, reason: str) -> dict:
    assert not (work / "shards" / "forget").exists() and not (work / "shards" / "heldout_forget").exists()
    assert (work / "shards" / "retain").exists()  # only the forget data goes
    assert not (work / "models" / "featnet.pt").exists()
    state = json.loads((work / "state.json").read_text())
    assert state["failed"]["step"] == step, state.get("failed")
    cert = json.loads((work / "certificate" / "certificate.json").read_text())
    assert cert["status"] == "incomplete" and cert["pipeline"]["orchestrator"] == "lethe run"
    assert cert["error"].startswith(f"{step}: ") and reason in cert["error"], cert["error"]
    assert cert["cleanup"]["all_absent"] is True
    shards = {d["shard"] for d in cert["cleanup"]["deleted"] if "shard" in d}
    assert shards == {"forget", "heldout_forget"}
    assert any(d.get("model") == "featnet" for d in cert["cleanup"]["deleted"])
    assert cert["request"]["forget_count"] > 0  # the request, from the manifest
    return state


def test_failed_run_after_the_split_deletes_the_forget_data_and_certifies(tmp_path: Path) -> None:
    work = tmp_path / "work"
    source = _register_mae(work, "lethe-other-arch", dim=16)  # the smoke preset's MAE has dim 32
    r = subprocess.run(
        [*LETHE, "run", *COMMON, "--workdir", str(work), "--source-model", source],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 2, r.stderr[-3000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("lethe: error:")]
    assert len(lines) == 1 and "architecture differs" in lines[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert str(work / "report" / "report.json") not in r.stdout  # no report path: the run did not finish

    state = _assert_cleaned_up_and_certified(work, "pretrain", "architecture differs")
    status, tags = _run_status(work / "mlflow.db", state["run_id"])
    assert status == "FAILED" and tags["lethe.status"] == "failed"
    assert tags["lethe.error"].startswith("pretrain: ") and "architecture differs" in tags["lethe.error"]
    with sqlite3.connect(work / "mlflow.db") as con:
        steps = dict(
            con.execute(
                "select t.value, r.status from runs r join tags t on t.run_uuid = r.run_uuid "
                "where t.key = 'lethe.step'"
            ).fetchall()
        )
        artifacts = con.execute("select artifact_uri from runs where run_uuid = ?", (state["run_id"],))
        artifact_root = artifacts.fetchone()[0]
    assert steps["split"] == "FINISHED" and steps["pretrain"] == "FAILED" and steps["cleanup"] == "FINISHED"
    # the incomplete certificate is in the pipeline run too
    root = Path(artifact_root.removeprefix("file://"))
    assert (root / "certificate" / "certificate.json").is_file()


def test_sigterm_during_a_run_deletes_the_forget_data_and_certifies(tmp_path: Path) -> None:
    work = tmp_path / "work"
    log_path = tmp_path / "stderr.log"
    with open(log_path, "wb") as err:
        proc = subprocess.Popen(
            [*LETHE, "run", *COMMON, "--workdir", str(work)],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,  # its local Ray is in the group, for the clean-up below
        )
    try:
        wait_for_output(proc, log_path, "== pretrain")
        # A second run on the same work dir (a schedule overlapping a manual run) is refused in one
        # line naming the holder, and touches nothing of the first (it also keeps us inside the step).
        second = subprocess.run(
            [*LETHE, "run", *COMMON, "--workdir", str(work)],
            cwd=tmp_path,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    assert second.returncode == 2, second.stderr[-3000:]
    lines = [ln for ln in second.stderr.splitlines() if ln.startswith("lethe: error:")]
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert lines[0].startswith(
        f"lethe: error: work dir {work} is in use by another lethe run (pid {proc.pid} on host "
    ), lines[0]
    assert "`lethe run --preset smoke" in lines[0] and "since 20" in lines[0]
    assert "wait for it or use another --workdir" in lines[0] and not second.stdout
    stderr = log_path.read_text(errors="replace")
    # lethe's handler raises Terminated (exit 143); while Ray Train's fit runs, Ray's own SIGTERM
    # handler may take the signal first and stop the driver with SystemExit instead. Either way the
    # run must not succeed, and the forget data must go.
    assert proc.returncode in (128 + signal.SIGTERM, 1), (proc.returncode, stderr[-3000:])
    # No traceback of the driver's own (Ray prefixes what it forwards from its workers with "(...)").
    assert not [ln for ln in stderr.splitlines() if ln.startswith("Traceback")], stderr[-3000:]
    assert b"report.json" not in out
    reason = "terminated by SIGTERM" if proc.returncode == 128 + signal.SIGTERM else "stopped"
    state = _assert_cleaned_up_and_certified(work, "pretrain", reason)
    status, tags = _run_status(work / "mlflow.db", state["run_id"])
    assert status in ("KILLED", "FAILED") and tags["lethe.error"].startswith("pretrain: ")
    with sqlite3.connect(work / "mlflow.db") as con:
        pipeline_runs = con.execute("select count(*) from tags where key = 'lethe.pipeline'").fetchone()[0]
    assert pipeline_runs == 1  # the first run's only: the refused one opened none
    assert (work / ".lethe.lock").read_bytes() == b""  # released on SIGTERM too
