"""`lethe tune --preset smoke` finds an alpha with Ray Tune (ASHA; a trial of one worker trains in its
Tune actor, a trial of several is a Ray Train run),
`lethe run --tune` unlearns with it and shows every trial's objective in report.json and report.html,
and method auto (the default of the demo preset) chooses the method too, runs it, and says which and
why: through the Kubeflow pipeline on kfp's local runner, as `make run` runs it.
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


@pytest.fixture(scope="module")
def tuned(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, list[str], subprocess.CompletedProcess[str]]:
    """`lethe tune` alone on the smoke preset: it runs the steps it needs first (split, pretrain, oracle)."""
    tmp_path = tmp_path_factory.mktemp("tune")
    work = tmp_path / "work"
    common = ["--preset", "smoke", "--dataset", "digits", "--forget-classes", "3", "--workdir", str(work)]
    return work, common, _lethe("tune", *common, cwd=tmp_path)


def test_tune_then_run_with_the_tuned_alpha(tuned) -> None:
    work, common, r = tuned
    tmp_path = work.parent
    assert r.returncode == 0, r.stderr[-4000:]
    best_path = Path(r.stdout.strip().splitlines()[-1])
    assert best_path == work / "tune" / "best.json"
    best = json.loads(best_path.read_text())
    assert 0.02 <= best["alpha"] <= 2.0 and 1e-4 <= best["lr"] <= 2e-3 and math.isfinite(best["objective"])
    result = json.loads((work / "tune" / "result.json").read_text())
    trials = result["trials"]
    assert len(trials) == 3  # smoke: tune.num_samples
    # the search shows trials done, not the trials' own steps (several at once would share one bar)
    assert "lethe: search trial 3/3" in r.stderr and "unlearn step" not in r.stderr, r.stderr[-3000:]
    # one-worker trials train in their Tune actors: no Ray Train run of their own
    assert not list((work / "ray").glob("tune-*-*")), sorted(p.name for p in (work / "ray").iterdir())
    assert len({t["trial_id"] for t in trials}) == 3
    assert all(t["status"] in ("finished", "stopped_early") for t in trials), trials
    assert all(t["objective"] is not None and t["objective"] >= 0 for t in trials)
    # scored by their best checkpoint, every scored trial competes; by their last report, the finished
    pool = [t for t in trials if result["score_best"] or t["status"] == "finished"]
    assert min(t["objective"] for t in pool) == best["objective"]
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


def test_method_auto_chooses_the_method_runs_it_and_says_why(tuned) -> None:
    work, common, _ = tuned
    tmp_path = work.parent
    methods = ["encoder_noise", "retain_label", "max_loss"]
    conf = tmp_path / "auto.yaml"
    # digits holds ~27 held-out 3s: evaluating 16 of them leaves the 8 validation images a search needs
    # (with fewer, method auto runs its first method unsearched: tests/integration/test_cli.py)
    conf.write_text("tune:\n  methods: [" + ", ".join(methods) + "]\neval:\n  n_forget: 16\n")
    r = _lethe("pipeline", "run", "--local", *common, "--method", "auto", "--config", str(conf), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    result = json.loads((work / "tune" / "result.json").read_text())
    trials, chosen = result["trials"], result["selection"]["chosen"]
    assert sorted(t["method"] for t in trials) == sorted(methods)  # smoke: one trial per method
    assert result["search"]["methods"] == methods and result["selection"]["auto"] is True
    # 8 validation images a side and an oracle: trials are scored by their best checkpoint (the unlearn
    # step keeps its best), so every scored trial competes, stopped early or not
    assert result["score_best"] is True
    pool = [t for t in trials if t["objective"] is not None]
    assert chosen == result["best"]["method"] == min(pool, key=lambda t: t["objective"])["method"]
    assert "of any trial's best checkpoint" in result["selection"]["why"]
    # the pipeline's terminal shows a line per task and the summary; the steps' lines go to its log
    assert f"tune: method auto chose {chosen}" in (work / "logs" / "pipeline.log").read_text()

    report = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    validate_report(report)
    assert report["method"] == chosen and report["unlearn"]["tuned"] is True
    # the report says how steeply the search refused models past the retain gates' ceilings
    assert (report["tune"]["gate_margin"], report["tune"]["gate_weight"]) == (
        result["gate_margin"],
        result["gate_weight"],
    )
    assert math.isclose(report["unlearn"]["lr"], result["best"]["lr"])
    # a trial draws the unlearn step's own batches: its score at a step is the unlearn step's there
    history = {h["step"]: h["objective"] for h in report["unlearn"]["checkpoint"]["history"]}
    best = result["best"]
    assert best["best_step"] in history, (best, history)
    assert math.isclose(history[best["best_step"]], best["objective"], rel_tol=1e-2), (best, history)
    # ... so the unlearn step replayed the chosen trial, which ran its whole length: it trained only to
    # the trial's best step and scored that one, as the trial did
    ck = report["unlearn"]["checkpoint"]
    assert best["status"] == "finished" and ck["replay"]["trial_id"] == best["trial_id"], ck
    assert ck["step"] == ck["replay"]["trained_steps"] == best["best_step"] < ck["last_step"], ck
    assert abs(ck["objective"] - best["objective"]) < 1e-3 and sorted(history) == [3, 5, 6]
    assert (
        f"trained to its best step {ck['step']} of {ck['last_step']}"
        in (work / "logs" / "pipeline.log").read_text()
    )
    assert f"trained to it only: search trial {best['trial_id']} scored the rest" in r.stdout + r.stderr
    assert f"method auto: chose {chosen} among 3 methods" in r.stdout + r.stderr
    html = (work / "report" / "report.html").read_text()
    assert f"method auto chose {chosen}" in html and "per candidate" in html
    cert = json.loads((work / "certificate" / "certificate.json").read_text())
    assert cert["method"]["name"] == chosen and cert["method"]["selection"]["methods"] == methods
    with sqlite3.connect(work / "mlflow.db") as con:  # the newest version is this run's
        tags = dict(
            con.execute(
                "select key, value from model_version_tags "
                "where version = (select max(version) from model_version_tags)"
            )
        )
    assert tags["lethe.method"] == chosen


def test_trials_of_several_workers_are_ray_train_runs(tuned) -> None:
    """tune.workers_per_trial 2: each trial fits a TorchTrainer of two workers (DDP) and reports
    through it, and the search ends as a one-worker search does."""
    work, common, _ = tuned
    tmp_path = work.parent
    ddp = tmp_path / "work-ddp"  # beside `work`: the same model cache, so only the search runs
    conf = tmp_path / "ddp.yaml"
    # 16 evaluated held-out 3s leave 8 validation images: trials are scored like kept checkpoints
    conf.write_text("tune:\n  workers_per_trial: 2\n  num_samples: 2\neval:\n  n_forget: 16\n")
    args = [a if a != str(work) else str(ddp) for a in common]
    r = _lethe("tune", *args, "--config", str(conf), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    result = json.loads((ddp / "tune" / "result.json").read_text())
    scored = [t for t in result["trials"] if t["objective"] is not None]
    assert len(result["trials"]) == 2 and scored, result["trials"]
    runs = sorted(p.name for p in (ddp / "ray").glob("tune-*-*"))
    assert runs == sorted(f"tune-{result['key']}-{t['trial_id']}" for t in result["trials"]), runs
    assert result["score_best"] is True and all(
        [h["step"] for h in t["history"]] == [3, 5, 6] for t in result["trials"] if t["status"] == "finished"
    ), result["trials"]

    # The unlearn step runs on one worker: it does not replay a two-worker trial (other batches). Here
    # best.json is altered to say the chosen trial ran on one worker, its whole length, and scored -1 at
    # its last step: the unlearn step replays it to that step, scores it near 0.03, and so unlearns in
    # full (a replay that does not score what the trial scored hands on nothing of its own).
    best_path = ddp / "tune" / "best.json"
    best = json.loads(best_path.read_text())
    assert best["trial_workers"] == 2
    history = [{"step": s, "objective": 1.0, "ended": 0.0} for s in (3, 5)] + [
        {"step": 6, "objective": -1.0, "ended": 1.0}
    ]
    best_path.write_text(json.dumps({**best, "status": "finished", "trial_workers": 1, "history": history}))
    r = _lethe("unlearn", *args, "--config", str(conf), "--tune", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    refused = f"the replay of search trial {best['trial_id']} is not the trial (it scored 0.0"
    assert refused in r.stderr and "at step 6, the trial -1.0000): unlearning in full" in r.stderr, r.stderr
    ck = json.loads((ddp / "state.json").read_text())["unlearn"]["checkpoint"]
    assert "replay" not in ck and [h["step"] for h in ck["history"]] == [3, 5, 6], ck
