"""tune: Ray Tune searches alpha and lr (ASHA), each trial a Ray Train unlearning run; objective =
FD ratio to the oracle on held-out forget images plus a retain penalty, averaged over the centre box
and the outpainting border (lethe.evaluation.selection)."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch

from lethe import storage
from lethe.catalogue import AUTO
from lethe.evaluation.selection import source_objective
from lethe.pipeline.auto import (
    method_choice,
    no_search,
    samples_per_method,
    search_budget,
    searched_methods,
)
from lethe.pipeline.context import Context
from lethe.pipeline.decouple import calibrate_decouple
from lethe.pipeline.families import for_config
from lethe.pipeline.i2i import i2i_unlearn_job
from lethe.pipeline.jobs import proxy_retain
from lethe.pipeline.keys import file_digest, tune_key
from lethe.pipeline.lr_rule import lr_rule, lr_scaled
from lethe.pipeline.oracle_audit import require_oracle
from lethe.pipeline.params import numeric
from lethe.pipeline.validation import load_models, selection_unavailable, validation_payload

log = logging.getLogger("lethe")
REPORTS = 4  # a trial that is not scored like a kept checkpoint reports at least this many times


def _search(ctx: Context, cfg, man, arch, teacher, payload: dict[str, Any], key: str, budget_s: float | None):
    """Run the Ray Tune search (cfg: the run's, its lr scaled by the lr rule); returns
    lethe.execution.tune.TuneOutcome."""
    from lethe.execution.fit import retain_rows, unlearn_inputs
    from lethe.execution.job import stage_budgets
    from lethe.execution.tune import run_tune

    t = cfg.tune
    u = cfg.unlearn
    # Trials share the machine: split the cores between the workers that run at once.
    running = t.max_concurrent_trials * t.workers_per_trial
    threads = cfg.resources.torch_threads or max(1, (os.cpu_count() or 2) // running)
    score_best = selection_unavailable(cfg, man) is None
    jobs, totals = {}, {}
    for method in searched_methods(cfg):
        mcfg = cfg.model_copy(update={"method": method})
        calibration = calibrate_decouple(mcfg, man, arch, teacher, u) if method == "decouple_retain" else None
        job = i2i_unlearn_job(mcfg, man, arch, u, {"role": "tune-trial", "method": method}, calibration)
        job.fail_at_step = None  # fault drills target the unlearn step, not every trial
        job.threads = threads
        # A multi-stage method (decouple_retain) runs up to the sum of its stage budgets: ASHA's
        # max_t must not stop a trial before its last stage. The tuned lr does not change them.
        totals[method] = sum(stage_budgets(job.to_config(), t.workers_per_trial).values())
        # Where a trial reports: ASHA's rungs, and the points its best is taken from. When the unlearn
        # step keeps its best checkpoint, at every step it scores (every checkpoint_every, every
        # eval_every, the last), so that a trial's best is the checkpoint that run keeps (and the
        # unlearn step can replay it: lethe.pipeline.replay); else at least REPORTS times.
        if score_best:
            job.eval_every = u.eval_every
        else:
            job.checkpoint_every = max(1, min(job.checkpoint_every, math.ceil(totals[method] / REPORTS)))
        jobs[method] = job
    # One read of the data for every trial: as many retain rows as the longest method draws.
    widest = max(jobs.values(), key=lambda j: retain_rows(j, t.workers_per_trial))
    retain = proxy_retain(cfg, man, widest, t.workers_per_trial)[0]
    return run_tune(
        jobs=jobs,
        inputs=unlearn_inputs(man, widest, t.workers_per_trial, retain=retain),
        teacher_state=teacher.state_dict(),
        eval_payload=payload,
        tune_cfg=t,
        total_steps=totals,
        samples=samples_per_method(cfg),
        time_budget_s=budget_s,
        score_best=score_best,
        start={"alpha": u.alpha, "lr": u.lr},
        storage_path=ctx.lay.ray_storage_uri,
        name=f"tune-{key}",
        seed=cfg.seed,
        use_gpu=cfg.resources.use_gpu,
    )


def _log_trials(ctx: Context, outcome) -> None:
    """One child run per trial, logged from the driver: params, objective, FD ratios, how it ended."""
    for trial in outcome.trials:
        params = {"method": trial.method, "alpha": trial.alpha, "lr": trial.lr}
        with ctx.tracker.step(f"tune-trial-{trial.trial_id}", params):
            ctx.tracker.set_tags({"lethe.trial_id": trial.trial_id, "lethe.trial_status": trial.status})
            ctx.tracker.log_metrics(
                numeric(
                    {
                        "objective": trial.objective,
                        "fd_forget_vs_oracle": trial.fd_forget_vs_oracle,
                        "fd_retain_vs_original": trial.fd_retain_vs_original,
                        "psnr_retain_drop": trial.psnr_retain_drop,
                        "iterations": trial.iterations,
                        "steps": trial.steps,
                        "trial_wall_s": trial.wall_s,
                    }
                )
            )


def _result_doc(
    cfg, outcome, key: str, validation: dict, baselines: dict, budget: dict[str, Any]
) -> dict[str, Any]:
    """tune/result.json: every trial, the best, how the search ran and, for method auto, which
    method it chose and why (cfg: the one searched with, its lr scaled by the lr rule)."""
    from lethe.execution.tune import OBJECTIVE_TEXT

    t = cfg.tune
    methods = list(searched_methods(cfg))
    return {
        **outcome.to_json(),
        "key": key,
        "objective": OBJECTIVE_TEXT,
        "retain_weight": t.retain_weight,
        "psnr_weight": t.psnr_weight,
        "gate_margin": t.gate_margin,
        "gate_weight": t.gate_weight,
        "scheduler": {
            "kind": "ASHA",
            "time_attr": "training_iteration",
            "grace_period": min(t.grace_period, outcome.max_iterations),
            "reduction_factor": t.reduction_factor,
            "max_t": outcome.max_iterations,
        },
        "search": {
            "methods": methods,
            "alpha": {"low": t.alpha_range[0], "high": t.alpha_range[1], "scale": "log"},
            "lr": {"low": t.lr_range[0], "high": t.lr_range[1], "scale": "log"},
            "num_samples": samples_per_method(cfg),
            "per": "method",
            # each method's first trial: the configured settings
            "start": {"alpha": cfg.unlearn.alpha, "lr": cfg.unlearn.lr},
            "max_concurrent_trials": t.max_concurrent_trials,
        },
        "budget": budget,
        "selection": method_choice(cfg, outcome, baselines.get("source_objective")),
        "validation": validation,
        "baselines": baselines,
    }


def _reuse(ctx: Context, key: str, best_path: Path, result_path: Path) -> bool:
    """Same request, models and search: the finished search is returned, not run again."""
    lay = ctx.lay
    lay.fetch(best_path)
    lay.fetch(result_path)
    if not (best_path.is_file() and result_path.is_file()):
        return False
    if json.loads(best_path.read_text()).get("key") != key:
        return False
    log.warning("tune: reusing the finished search in %s", lay.uri(lay.tune_dir))
    result = json.loads(result_path.read_text())
    ctx.state.tune = {"best": result["best"], "reused": True}
    return True


def _drop_earlier_search(lay) -> None:
    """A run without a search: an earlier request's tune/*.json in this work dir are not this run's."""
    for name in ("best.json", "result.json"):
        stale = lay.tune_dir / name
        for uri in {str(stale), lay.uri(stale)}:
            if storage.list_files(uri):
                storage.delete(uri)


def _baselines(payload: dict[str, Any]) -> dict[str, Any]:
    """What the untouched models score on the validation images, and doing nothing's objective."""
    keys = (
        "fd_forget_oracle",
        "fd_retain_original",
        "fd_forget_original",
        "psnr_retain_original",
        "psnr_forget_oracle",
        "psnr_forget_original",
        "forget_measure",
    )
    return {k: payload[k] for k in keys} | {"source_objective": source_objective(payload)}


def _best_doc(cfg, man, best, key: str, original_digest: str) -> dict[str, Any]:
    """tune/best.json: the chosen trial's settings, what they belong to, and what the unlearn step
    needs to replay the trial (lethe.pipeline.replay)."""
    return {
        "key": key,
        "alpha": best.alpha,
        "lr": best.lr,
        "objective": best.objective,
        "trial_id": best.trial_id,
        "request_digest": man.request_digest,
        "original_digest": original_digest,
        "method": best.method,
        "selection": cfg.method == AUTO,
        "status": best.status,
        "history": best.history,
        "trial_workers": 0 if cfg.resources.use_gpu else cfg.tune.workers_per_trial,
    }


def step_tune(ctx: Context) -> Path:
    cfg, lay = ctx.cfg, ctx.lay
    fam = for_config(cfg)
    fam.check_tunable(cfg)
    t = cfg.tune
    man = ctx.manifest()
    fallback = no_search(cfg, man)
    if fallback is not None:
        log.warning("tune: method auto: %s", fallback["why"])
        ctx.state.tune = {"best": {"method": fallback["chosen"]}, "no_search": fallback}
        _drop_earlier_search(lay)
        ctx.save()
        return lay.tune_dir
    with ctx.step("tune", {f"tune.{k}": v for k, v in t.model_dump().items() if k != "enabled"}):
        require_oracle(cfg, man, "tuning")
        arch = fam.arch(cfg, man)
        paths = {n: lay.fetch(lay.model(n)) for n in ("original", "oracle", "featnet")}
        digests = {n: file_digest(p) for n, p in paths.items()}
        key = tune_key(cfg, man, list(digests.values()))
        best_path, result_path = lay.tune_dir / "best.json", lay.tune_dir / "result.json"
        if _reuse(ctx, key, best_path, result_path):
            return best_path
        models = load_models(ctx, arch)
        torch.set_num_threads(max(1, os.cpu_count() or 1))
        payload, validation = validation_payload(ctx, man, models)
        ctx.start_ray()
        budget = search_budget(cfg, ctx.state.oracle)
        searched = lr_scaled(cfg, man)
        outcome = _search(ctx, searched, man, arch, models["original"], payload, key, budget["time_budget_s"])
        budget["spent_s"] = round(outcome.wall_s, 3)
        _log_trials(ctx, outcome)
        best = outcome.best
        baselines = _baselines(payload)
        result = _result_doc(searched, outcome, key, validation, baselines, budget)
        result["lr_rule"] = lr_rule(cfg, man)
        storage.write_json(str(result_path), result)
        storage.write_json(str(best_path), _best_doc(cfg, man, best, key, digests["original"]))
        lay.publish(lay.tune_dir)
        ctx.tracker.log_params(
            {
                "best.method": best.method,
                "best.alpha": best.alpha,
                "best.lr": best.lr,
                "best.trial_id": best.trial_id,
            }
        )
        ctx.tracker.log_metrics(numeric({"best.objective": best.objective, "tune_wall_s": outcome.wall_s}))
        ctx.tracker.log_dict(result, "tune/result.json")
        ctx.state.tune = {"best": result["best"], "reused": False, "wall_s": outcome.wall_s}
        for trial in outcome.trials:
            log.warning(
                "tune trial %s: %s alpha %.4g lr %.3g objective %s (%s)",
                trial.trial_id,
                trial.method,
                trial.alpha,
                trial.lr,
                "-" if trial.objective is None else f"{trial.objective:.4f}",
                trial.status,
            )
        log.warning(
            "tune: best %s, alpha %.4g, lr %.3g, objective %.4f",
            best.method,
            best.alpha,
            best.lr,
            best.objective,
        )
        if cfg.method == AUTO:
            log.warning("tune: method auto chose %s: %s", best.method, result["selection"]["why"])
    return best_path
