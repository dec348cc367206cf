"""`lethe tune --preset smoke` finds an alpha with Ray Tune (ASHA, each trial a Ray Train run), and
`lethe run --tune` unlearns with it and shows every trial's objective in report.json and report.html.
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

from lethe.report import validate_report

pytestmark = pytest.mark.slow
LETHE = [sys.executable, "-m", "lethe.cli"]


def _lethe(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([*LETHE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)


def test_tune_then_run_with_the_tuned_alpha(tmp_path: Path) -> None:
    work = tmp_path / "work"
    common = ["--preset", "smoke", "--dataset", "digits", "--forget-classes", "3", "--workdir", str(work)]
    # Alone, `lethe tune` runs the steps it needs first (split, pretrain, oracle).
    r = _lethe("tune", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    best_path = Path(r.stdout.strip().splitlines()[-1])
    assert best_path == work / "tune" / "best.json"
    best = json.loads(best_path.read_text())
    assert 0.02 <= best["alpha"] <= 2.0 and 1e-4 <= best["lr"] <= 2e-3 and math.isfinite(best["objective"])
    result = json.loads((work / "tune" / "result.json").read_text())
    trials = result["trials"]
    assert len(trials) == 3  # smoke: tune.num_samples
    assert len({t["trial_id"] for t in trials}) == 3
    assert all(t["status"] in ("finished", "stopped_early") for t in trials), trials
    assert all(t["objective"] is not None and t["objective"] >= 0 for t in trials)
    assert min(t["objective"] for t in trials if t["status"] == "finished") == best["objective"]
    assert result["scheduler"]["kind"] == "ASHA"

    db = work / "mlflow.db"
    with sqlite3.connect(db) as con:
        names = [n for (n,) in con.execute("select name from runs where name like 'tune-trial-%'")]
        objectives = con.execute(
            "select count(*) from metrics m join runs r on r.run_uuid = m.run_uuid "
            "where r.name like 'tune-trial-%' and m.key = 'objective'"
        ).fetchone()[0]
    assert len(names) == 3 and objectives >= 3

    # The whole pipeline with tuning on: the finished search is reused, the model uses its alpha.
    r = _lethe("run", *common, "--tune", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "tune: reusing the finished search" in r.stderr
    report = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    validate_report(report)
    assert report["unlearn"]["tuned"] is True
    assert math.isclose(report["alpha"], best["alpha"]) and math.isclose(report["unlearn"]["lr"], best["lr"])
    assert [t["trial_id"] for t in report["tune"]["trials"]] == [t["trial_id"] for t in trials]
    assert report["tune"]["best"]["trial_id"] == best["trial_id"] and "tune" in report["timing_s"]
    html = (work / "report" / "report.html").read_text()
    assert "Tuning (Ray Tune)" in html and all(t["trial_id"] in html for t in trials)
