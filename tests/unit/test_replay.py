"""Replaying the search's chosen trial (lethe.pipeline.replay): when the unlearn step may train only to
the trial's kept step, which step that is, and when the replayed model is the trial's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lethe.config import build_config
from lethe.execution.job import TrainJob, scored_steps
from lethe.pipeline.replay import MATCH_TOL, mismatch, plan_replay, replayed_selection

# A finished trial of 12 steps that reported every 3 steps and every 5 (the unlearn step's
# checkpoint_every and eval_every), its last report ending the run.
OBJECTIVES = {3: 0.9, 5: 0.4, 6: 0.5, 9: 0.3, 10: 0.35, 12: 0.6}


def _tuned(**over) -> dict:
    history = [
        {"step": s, "objective": o, "fd_forget_vs_oracle": 1.0 + o, "ended": float(s == 12)}
        for s, o in OBJECTIVES.items()
    ]
    return {"trial_id": "t1", "status": "finished", "history": history, "trial_workers": 1, **over}


def _job(checkpoint_every: int = 3, eval_every: int | None = 5) -> SimpleNamespace:
    return SimpleNamespace(checkpoint_every=checkpoint_every, eval_every=eval_every)


CFG = build_config(preset="smoke")


def test_the_steps_a_run_scores_are_its_reports() -> None:
    assert scored_steps(12, 3, 5) == [3, 5, 6, 9, 10, 12]
    assert scored_steps(7, 3, None) == [3, 6, 7]


def test_a_finished_trial_is_replayed_to_its_best_step_among_those_the_run_scores() -> None:
    replay, why = plan_replay(CFG, _tuned(), _job())
    assert why == "" and replay is not None
    assert replay["stop_at"] == 9 and replay["objective"] == 0.3
    assert (replay["last_step"], replay["last_objective"]) == (12, 0.6)
    assert [h["step"] for h in replay["history"]] == [3, 5, 6, 9, 10, 12]
    # a run that scores fewer steps keeps the best of those: step 9 is not among them
    replay, _ = plan_replay(CFG, _tuned(), _job(checkpoint_every=5, eval_every=None))
    assert replay is not None and replay["stop_at"] == 10
    assert [h["step"] for h in replay["history"]] == [5, 10, 12]


@pytest.mark.parametrize(
    ("tuned", "job", "cfg", "reason"),
    [
        (None, _job(), CFG, "no search"),
        (_tuned(status="stopped_early"), _job(), CFG, "stopped before its last step"),
        # the last report did not end the run: later steps were never scored
        (_tuned(history=_tuned()["history"][:-1]), _job(), CFG, "stopped before its last step"),
        (_tuned(history=[]), _job(), CFG, "did not record the chosen trial's scores"),
        (_tuned(trial_workers=2), _job(), CFG, "different worker groups"),
        (
            _tuned(),
            _job(),
            build_config(preset="smoke", overrides={"resources": {"num_workers": 2}}),
            "different worker",
        ),
        # the run would score step 4, which the trial never did
        (_tuned(), _job(checkpoint_every=2), CFG, "did not score every step"),
    ],
    ids=["no-search", "stopped", "not-ended", "no-history", "trial-ddp", "run-ddp", "unscored-step"],
)
def test_what_is_not_replayed_runs_in_full(tuned, job, cfg, reason) -> None:
    replay, why = plan_replay(cfg, tuned, job)
    assert replay is None and reason in why


def test_the_replayed_model_must_score_what_the_trial_scored() -> None:
    replay, _ = plan_replay(CFG, _tuned(), _job())
    assert replay is not None
    selection = {"step": 9, "last_step": 9, "objective": 0.3 + MATCH_TOL / 2, "last_objective": 0.3}
    assert mismatch(replay, selection) is None
    assert "scored 0.3020 at step 9, the trial 0.3000" in mismatch(replay, {**selection, "objective": 0.302})
    assert "kept step 6, not 9" in mismatch(replay, {**selection, "step": 6})
    assert mismatch(replay, None) is not None

    record = replayed_selection(replay, selection)
    assert (record["step"], record["last_step"], record["last_objective"]) == (9, 12, 0.6)
    assert [h["step"] for h in record["history"]] == [3, 5, 6, 9, 10, 12]
    assert record["history"][3]["objective"] == selection["objective"]  # the run's own score of its model
    assert all("ended" not in h for h in record["history"])
    assert record["replay"]["trial_id"] == "t1" and record["replay"]["trained_steps"] == 9


def test_a_replay_is_its_own_ray_train_run() -> None:
    from lethe.pipeline.family_api import UnlearnPlan
    from lethe.pipeline.replay import replay_plan

    job = TrainJob(kind="unlearn", model_kind="mae", arch={}, batch_size=8, lr=1e-3, weight_decay=0.0,
                   warmup_frac=0.0, n_rows=10)  # fmt: skip
    plan = UnlearnPlan(job=job, datasets={}, settings={"alpha": 1.0})
    replayed = replay_plan(plan, {"stop_at": 9})
    assert replayed.job.stop_at == 9 and plan.job.stop_at is None
    assert (
        replayed.settings != plan.settings
    )  # another run name: neither finished marker answers for the other
