"""Replaying the search's chosen trial in the unlearn step (method auto, `--tune`).

A search trial trains its method, alpha and lr on the unlearn step's own batches and scores the same
validation images (lethe.execution.tune), so its score at a step is the unlearn step's there. When
the chosen trial ran its whole length and scored every step the unlearn step scores, the checkpoint
that step keeps is known before it runs. The unlearn step then trains only to that step and scores
it once (on the demo: about 10 fewer scorings, and no steps after the kept one), and hands it on
when its score is the trial's. When it is not, the whole run trains and scores as without a search.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lethe.execution.job import scored_steps
from lethe.execution.tune import METRIC as OBJECTIVE

# A trial and the unlearn step run with different torch thread counts, which sum floats in another
# order: the same step scored 0.1891 and 0.1891 (make bench, 2026-12-07). Larger gaps mean another
# model, not rounding.
MATCH_TOL = 1e-3


def plan_replay(cfg, tuned: dict[str, Any] | None, job) -> tuple[dict[str, Any] | None, str]:
    """What the unlearn step replays of the chosen trial (`tuned`: tune/best.json; `job`: the unlearn
    step's TrainJob, scoring its checkpoints), or None and why it runs in full."""
    if not tuned:
        return None, "no search chose the settings"
    history = [h for h in tuned.get("history") or [] if isinstance(h, dict)]
    if not history:  # a search recorded before lethe kept the trials' scores
        return None, "the search did not record the chosen trial's scores"
    if tuned.get("status") != "finished" or history[-1].get("ended") != 1.0:
        return None, "the chosen trial was stopped before its last step"
    r = cfg.resources
    if r.num_workers != 1 or r.use_gpu or tuned.get("trial_workers") != 1:
        # world size decides each worker's rows and batches: other batches, other scores
        return None, "the trial and the unlearn step run on different worker groups"
    last = int(history[-1]["step"])
    steps = scored_steps(last, job.checkpoint_every, job.eval_every)
    by_step = {int(h["step"]): h for h in history}
    if any(s not in by_step for s in steps):
        return None, "the trial did not score every step the unlearn step scores"
    kept = min((by_step[s] for s in steps), key=lambda h: float(h[OBJECTIVE]))
    return {
        "trial_id": tuned.get("trial_id"),
        "stop_at": int(kept["step"]),
        "objective": float(kept[OBJECTIVE]),
        "last_step": last,
        "last_objective": float(by_step[last][OBJECTIVE]),
        "history": [{**by_step[s], "step": s} for s in steps],
    }, ""


def replay_plan(plan, replay: dict[str, Any]):
    """The unlearn plan that trains to the replayed step: its own Ray Train run (another name), so
    neither run's finished marker answers for the other."""
    settings = {"settings": plan.settings, "stop_at": replay["stop_at"]}
    return replace(plan, job=replace(plan.job, stop_at=replay["stop_at"]), settings=settings)


def mismatch(replay: dict[str, Any], selection: dict[str, Any] | None) -> str | None:
    """Why the replayed run's model is not the trial's (None: it is)."""
    if selection is None or int(selection["step"]) != replay["stop_at"]:
        return f"it kept step {None if selection is None else selection['step']}, not {replay['stop_at']}"
    got = float(selection[OBJECTIVE])
    if abs(got - replay["objective"]) > MATCH_TOL:
        return f"it scored {got:.4f} at step {replay['stop_at']}, the trial {replay['objective']:.4f}"
    return None


def replayed_selection(replay: dict[str, Any], selection: dict[str, Any]) -> dict[str, Any]:
    """The run's checkpoint record: the trial's scored steps (what a whole run would have scored),
    the kept step as this run scored it, and what was replayed."""
    history = [
        {**h, OBJECTIVE: selection[OBJECTIVE]} if h["step"] == replay["stop_at"] else h
        for h in replay["history"]
    ]
    return {
        **selection,
        "last_step": replay["last_step"],
        f"last_{OBJECTIVE}": replay["last_objective"],
        "history": [{k: v for k, v in h.items() if k != "ended"} for h in history],
        "replay": {
            "trial_id": replay["trial_id"],
            "trained_steps": replay["stop_at"],
            "trial_objective": replay["objective"],
            "rule": (
                "the search's chosen trial ran its whole length on these batches and scored every step "
                "this run scores: the run trained to the trial's best of them and scored it once"
            ),
        },
    }
