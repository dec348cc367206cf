"""method auto: the tune step searches the image-to-image methods per request (each with its own
alphas and learning rates, ASHA, within a share of the oracle's training time) and the later steps
run, report and certify the method it chose.

Why per request: a recipe tuned on one data set over-forgets or changes nothing on another (issue 14);
the tune objective (distance to the oracle on validation images, plus a retain penalty) is what the
gates judge, so the method that scores best on it is the one to run.
"""

from __future__ import annotations

import logging
from typing import Any

from lethe.catalogue import AUTO

log = logging.getLogger("lethe")
# The steps that act on the unlearned model: they take the method the unlearn step ran.
AFTER_UNLEARN = ("evaluate", "promote", "cleanup")


def searched_methods(cfg) -> tuple[str, ...]:
    """The methods the tune step tries: tune.methods for method auto, else the configured one."""
    return tuple(cfg.tune.methods) if cfg.method == AUTO else (cfg.method,)


def no_search(cfg, man) -> dict[str, Any] | None:
    """Method auto on a run it cannot search for: what runs instead (the first of tune.methods, at
    the configured alpha and lr) and why; None when the search can run (or the method is fixed).

    The search scores trials against the oracle on held-out images of what is forgotten: an id
    request has none apart from the requested images themselves, which the gates grade, and a run
    without an oracle (cache.oracle = sample, not drawn) has nothing to compare with."""
    from lethe.pipeline.oracle_audit import oracle_audit
    from lethe.pipeline.validation import MIN_VALIDATION, held_back_sizes

    if cfg.method != AUTO:
        return None
    why = None
    audit = oracle_audit(cfg, man)
    if cfg.request.kind == "ids":
        why = "an id request has no held-out images to choose on apart from the graded ones"
    elif not audit["audited"]:
        why = f"no oracle to compare with ({audit['reason']})"
    else:
        # as few as the unlearn step needs to choose its checkpoint: fewer, and a score is noise
        sizes = held_back_sizes(cfg, man)
        if min(sizes.values()) < MIN_VALIDATION:
            why = (
                f"{sizes['forget']} / {sizes['retain']} held-out forget / retain images to validate on "
                f"beside the evaluated ones ({MIN_VALIDATION} needed)"
            )
    if why is None:
        return None
    method = cfg.tune.methods[0]
    return {
        "searched": False,
        "methods": [method],
        "chosen": method,
        "why": f"no search: {why}; ran {method} with the configured settings",
    }


def samples_per_method(cfg) -> int:
    """Trials of each searched method: tune.samples_per_method for method auto, else tune.num_samples."""
    return cfg.tune.samples_per_method if cfg.method == AUTO else cfg.tune.num_samples


def search_budget(cfg, oracle: dict[str, Any]) -> dict[str, Any]:
    """How long method auto's search may run: tune.budget_frac of the oracle's training wall time
    (this run's, or the cached oracle's recorded one), and at least tune.min_budget_s. No limit for a
    fixed method's tuning, with budget_frac None, or when the oracle's training time is not known."""
    frac = cfg.tune.budget_frac if cfg.method == AUTO else None
    oracle_s = oracle.get("train_wall_s")
    budget = {"frac": frac, "oracle_train_s": oracle_s, "time_budget_s": None}
    if frac is None:
        return budget
    if not isinstance(oracle_s, int | float) or oracle_s <= 0:
        log.warning("tune: the oracle's training time is not known; the search runs every trial")
        return budget
    budget["time_budget_s"] = round(max(frac * float(oracle_s), cfg.tune.min_budget_s), 3)
    log.warning(
        "tune: method auto searches %d methods for at most %.0f s (%.0f%% of the oracle's %.0f s, at least %.0f s)",
        len(cfg.tune.methods),
        budget["time_budget_s"],
        100 * frac,
        oracle_s,
        cfg.tune.min_budget_s,
    )
    return budget


def method_choice(cfg, outcome, source: float | None) -> dict[str, Any]:
    """What the search says of each method (its trials, its best objective, its best among trials
    that ran their whole length) and why the chosen one was chosen; `source`: what doing nothing
    scores on the same validation images."""
    by_method: dict[str, dict[str, Any]] = {}
    for m in searched_methods(cfg):
        trials = [t for t in outcome.trials if t.method == m]
        scored = [t for t in trials if t.objective is not None]
        best = min(scored, key=lambda t: t.objective) if scored else None
        whole = [t.objective for t in scored if t.status == "finished"]
        by_method[m] = {
            "trials": len(trials),
            "scored": len(scored),
            "best_objective": None if best is None else best.objective,
            "best_trial": None if best is None else best.trial_id,
            "best_finished_objective": min(whole) if whole else None,
        }
    chosen = outcome.best
    others = {m: v for m, v in by_method.items() if m != chosen.method}
    if getattr(outcome, "score_best", False):
        # every scored trial competes: its score is a checkpoint the unlearn step reaches too
        at = "" if chosen.best_step is None else f" at step {chosen.best_step}"
        why = (
            f"lowest validation objective of any trial's best checkpoint, {chosen.objective:.4g} "
            f"(trial {chosen.trial_id}{at}, {chosen.status})"
        )
        ranked = sorted(
            (v["best_objective"], m) for m, v in others.items() if v["best_objective"] is not None
        )
        if ranked:
            why += f"; next best: {ranked[0][1]} at {ranked[0][0]:.4g}"
    else:
        why = (
            f"lowest validation objective, {chosen.objective:.4g} (trial {chosen.trial_id}, {chosen.status})"
        )
        finished = sorted(
            (v["best_finished_objective"], m)
            for m, v in others.items()
            if v["best_finished_objective"] is not None
        )
        if finished:
            why += f"; next best that ran its whole length: {finished[0][1]} at {finished[0][0]:.4g}"
        # scored by the last report, a trial stopped early ran a shorter unlearning than the
        # unlearn step will: its lower score does not count
        cut = [
            f"{m} at {v['best_objective']:.4g}"
            for m, v in others.items()
            if v["best_finished_objective"] is None
            and v["best_objective"] is not None
            and v["best_objective"] < chosen.objective  # type: ignore[operator]
        ]
        if cut:
            why += f"; lower but stopped before its end (ASHA or the budget): {', '.join(cut)}"
    unscored = [m for m, v in by_method.items() if not v["scored"]]
    if unscored:
        why += f"; not scored within the budget: {', '.join(unscored)}"
    if source is not None:
        why += f"; doing nothing scores {source:.4g}"
        if source < chosen.objective:  # type: ignore[operator]
            why += " (better than every trial: the source is already close to the oracle on these images)"
    return {"auto": cfg.method == AUTO, "chosen": chosen.method, "why": why, "by_method": by_method}


def resolve_method(ctx, method: str | None = None) -> None:
    """After the search, the run is a run of the method it chose: `ctx.cfg.method` becomes it: the
    one given (the unlearn step: tune/best.json's), else the one the last unlearn step ran, else the
    one the search chose. A no-op for a fixed method, and before the search has chosen (a run that
    failed earlier is certified as method auto)."""
    if ctx.cfg.method != AUTO:
        return
    method = method or ctx.state.unlearn.get("method") or (ctx.state.tune.get("best") or {}).get("method")
    if not method:
        return
    update: dict[str, Any] = {"method": method}
    if ctx.state.tune.get("no_search"):
        # Nothing was searched: the run is an untuned run of that method in every later step (so
        # cache.oracle = sample and the held-back validation images answer as they did before).
        update["tune"] = ctx.cfg.tune.model_copy(update={"enabled": False})
    ctx.cfg = ctx.cfg.model_copy(update=update)
