"""A Ray Train worker dies in the middle of unlearning; the run finishes from its last checkpoint.

Two smoke pipelines on digits share one model cache (same original, feature net and oracle): run A
is uninterrupted (its steps one by one, without cleanup, which would delete the feature net from the
cache: B must measure with the same one); in run B rank 0 of the unlearning run exits hard
(os._exit(1), as a lost node would look) at step 4 of 5 on its first attempt. Ray Train replaces
the worker group and the loop resumes from the checkpoint of step 3. Batches, noise and masks are
functions of the step alone, so B must match A: final training loss within 1e-4 relative,
evaluation metrics of the unlearned model within 1e-3 relative (stated tolerance; float reductions
may differ in the last bits).
Then re-running the step returns the finished run, and promoting it again adds no model version.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

# `extended`: test_multinode kills a whole node mid-unlearning and checks the run resumes from its
# checkpoint; this one's extra (a resumed run equals an uninterrupted one) runs with --extended.
pytestmark = [pytest.mark.slow, pytest.mark.extended]
LETHE = [sys.executable, "-m", "lethe.cli"]
LOSS_RTOL = 1e-4
METRIC_RTOL = 1e-3


def _lethe(
    *args: str, cwd: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONUNBUFFERED": "1",
        "RAY_DEDUP_LOGS": "0",  # every worker line reaches the driver, repeats included
        **(extra_env or {}),
    }
    return subprocess.run([*LETHE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _lines(stderr: str, text: str) -> int:
    """Distinct log lines holding text: Ray may forward one worker line to the driver twice, but
    each line carries its worker's pid, so a re-run step would show up as a second distinct line."""
    return len({ln.strip() for ln in stderr.splitlines() if text in ln})


def _count(db: Path, sql: str) -> int:
    with sqlite3.connect(db) as con:
        return int(con.execute(sql).fetchone()[0])


def test_worker_killed_mid_unlearning_resumes_from_checkpoint(tmp_path: Path) -> None:
    from lethe.execution.job import FAULT_ENV

    common = [
        "--preset",
        "smoke",
        "--dataset",
        "digits",
        "--forget-classes",
        "3",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    for step in ("split", "pretrain", "oracle", "unlearn", "evaluate"):
        a = _lethe(step, *common, "--workdir", str(tmp_path / "a"), cwd=tmp_path)
        assert a.returncode == 0, a.stderr[-3000:]
        if step == "unlearn":
            a_unlearn = a
    b = _lethe("run", *common, "--workdir", str(tmp_path / "b"), cwd=tmp_path, extra_env={FAULT_ENV: "4"})
    assert b.returncode == 0, b.stderr[-3000:]

    # The worker really died (rank 0 exited hard once the step-3 checkpoint was recorded) ...
    assert "reusing cached model" in b.stderr
    assert _lines(b.stderr, "fault drill: rank 0 exits at step 4") == 1, b.stderr[-4000:]
    # ... and resumed from the step-3 checkpoint instead of starting over: step 3 was reported once.
    assert _lines(b.stderr, "unlearn step 3/5") == 1, b.stderr[-4000:]
    assert _lines(b.stderr, "unlearn step 5/5") == 1, b.stderr[-4000:]
    assert _lines(a_unlearn.stderr, "unlearn step 3/5") == 1

    state_a = json.loads((tmp_path / "a" / "state.json").read_text())
    state_b = json.loads((tmp_path / "b" / "state.json").read_text())
    assert state_a["unlearn"]["step"] == state_b["unlearn"]["step"] == 5
    assert math.isclose(state_a["unlearn"]["loss"], state_b["unlearn"]["loss"], rel_tol=LOSS_RTOL)
    rep_a = json.loads((tmp_path / "a" / "report" / "report.json").read_text())
    rep_b = json.loads((tmp_path / "b" / "report" / "report.json").read_text())
    for split, names in rep_a["metrics"]["unlearned"].items():
        for name, value in names.items():
            other = rep_b["metrics"]["unlearned"][split][name]
            if value is None or other is None:  # fd below the sample floor: null in both
                assert value is other, (split, name, value, other)
                continue
            pairs = zip(value, other, strict=True) if isinstance(value, list) else [(value, other)]
            for v, o in pairs:  # a figure, or both ends of its 95% interval
                assert math.isclose(v, o, rel_tol=METRIC_RTOL, abs_tol=1e-6), (split, name, value, other)

    db = tmp_path / "b" / "mlflow.db"
    assert _count(db, "select count(*) from model_versions") == 1
    assert (
        _count(
            db,
            "select count(*) from runs r join tags t on t.run_uuid = r.run_uuid "
            "where t.key = 'lethe.step' and t.value = 'unlearn'",
        )
        == 1
    )

    # Re-running the step with the same run name and storage path returns the finished result ...
    again = _lethe("unlearn", *common, "--workdir", str(tmp_path / "b"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished before: returning its result" in again.stderr
    assert "unlearn step" not in again.stderr  # no worker group trained anything
    # ... and promoting the same weights again adds no model version.
    promote = _lethe("promote", *common, "--workdir", str(tmp_path / "b"), cwd=tmp_path)
    assert promote.returncode == 0, promote.stderr[-3000:]
    assert "already holds this model" in promote.stderr
    assert _count(db, "select count(*) from model_versions") == 1
