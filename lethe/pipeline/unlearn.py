"""unlearn: the configured method (method auto: the one the tune step chose) from the original model
(Ray Train), with the tuned alpha and lr when tuning is on. Same request, recipe, settings and
original => same Ray run: a re-run resumes the crashed run or returns the finished one."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lethe.errors import ConfigError
from lethe.execution.tune import METRIC as OBJECTIVE
from lethe.pipeline.auto import no_search, resolve_method
from lethe.pipeline.context import Context
from lethe.pipeline.families import for_config
from lethe.pipeline.family_api import UnlearnPlan
from lethe.pipeline.jobs import fit_kwargs
from lethe.pipeline.keys import file_digest, unlearn_run_name
from lethe.pipeline.lr_rule import lr_rule, lr_scaled
from lethe.pipeline.params import numeric
from lethe.pipeline.replay import mismatch, plan_replay, replay_plan, replayed_selection

log = logging.getLogger("lethe")


def effective_unlearn(ctx: Context, man=None) -> tuple[Any, dict[str, Any] | None]:
    """The unlearning settings to use: the config's (its lr by unlearn.lr_rule), or with the tuned
    alpha and lr (tune.enabled: the search's range was scaled by the same rule)."""
    cfg, lay = ctx.cfg, ctx.lay
    man = man or ctx.manifest()
    if not cfg.tune.enabled or not for_config(cfg).tunable:
        return lr_scaled(cfg, man).unlearn, None
    if no_search(cfg, man) is not None:  # method auto without a search: the configured settings
        return lr_scaled(cfg, man).unlearn, None
    best_path = lay.fetch(lay.tune_dir / "best.json")
    if not best_path.is_file():
        raise ConfigError(
            "tune.enabled but no tuning result",
            where=lay.uri(best_path),
            expected="run `lethe tune` first (or `lethe run --tune`)",
        )
    best = json.loads(best_path.read_text())
    original = lay.fetch(lay.model("original"))
    if best.get("request_digest") != man.request_digest or best.get("original_digest") != file_digest(
        original
    ):
        raise ConfigError(
            "the tuning result belongs to another forget request or original model",
            where=lay.uri(best_path),
            expected="run `lethe tune` again",
        )
    return cfg.unlearn.model_copy(update={"alpha": float(best["alpha"]), "lr": float(best["lr"])}), best


def checkpoint_record(
    selection: dict[str, Any] | None, no_selection: str | None, payload: dict[str, Any] | None
) -> dict[str, Any]:
    """The report's unlearn.checkpoint: which checkpoint of the run became the unlearned model, and
    what the untouched source scores on the same validation images (doing nothing, for scale)."""
    from lethe.evaluation.selection import source_objective

    if selection is None or payload is None:
        return {"kept": "last", "reason": no_selection or "this family's runs are not scored"}
    source = source_objective(payload)
    return {"kept": "best", **selection, "source_objective": source}


def fit_unlearned(
    ctx: Context, man, plan: UnlearnPlan, original: Path, teacher, replay: dict[str, Any] | None = None
) -> Any:
    """Run an unlearning plan on Ray Train, publish the model, record it in the run state and
    MLflow; returns fit's result. With `replay` (lethe.pipeline.replay) the plan trains to the
    search trial's kept step: None when its score there is not the trial's (nothing is recorded)."""
    from lethe.execution.fit import fit

    cfg, lay = ctx.cfg, ctx.lay
    name = unlearn_run_name(cfg, man, plan.settings, original)
    selecting = plan.eval_payload is not None
    res = fit(
        plan.job,
        plan.datasets,
        name=name,
        dest=lay.model("unlearned"),
        teacher_state=teacher.state_dict(),
        eval_payload=plan.eval_payload,
        select_metric=OBJECTIVE if selecting else None,
        **fit_kwargs(cfg, lay),
    )
    if replay is not None:
        why = mismatch(replay, res.selection)
        if why is not None:
            log.warning(
                "unlearn: the replay of search trial %s is not the trial (%s): unlearning in full",
                replay["trial_id"],
                why,
            )
            return None
        res.selection = replayed_selection(replay, res.selection)
        log.warning(
            "unlearn: replayed search trial %s: trained to its best step %d of %d and scored it %.4f (the trial: %.4f)",
            replay["trial_id"],
            replay["stop_at"],
            replay["last_step"],
            res.selection[OBJECTIVE],
            replay["objective"],
        )
    lay.publish(lay.model("unlearned"))
    ctx.tracker.log_metrics(numeric({"train_wall_s": res.wall_s, **res.metrics}))
    ctx.tracker.set_tags({"lethe.ray_run": name, "lethe.reused_finished_run": str(res.reused).lower()})
    ctx.state.unlearn = {
        "train_wall_s": res.wall_s,
        "reused": res.reused,
        **numeric(res.metrics),
        "alpha": plan.job.alpha,
        "method": cfg.method,
        **plan.extra_state,
        "checkpoint": checkpoint_record(res.selection, plan.no_selection, plan.eval_payload),
    }
    log.warning("unlearned in %.1f s (%s)", res.wall_s, res.metrics)
    if res.selection is not None:
        s = res.selection
        log.warning(
            "unlearn: kept step %d of %d (validation objective %.4f; last step %s)",
            s["step"],
            s["last_step"],
            s[OBJECTIVE],
            "-" if s[f"last_{OBJECTIVE}"] is None else f"{s[f'last_{OBJECTIVE}']:.4f}",
        )
    if plan.on_done is not None:
        plan.on_done(res)
    return res


def step_unlearn(ctx: Context) -> Path:
    from lethe.models.checkpoint import load_checkpoint

    man = ctx.manifest()
    u, tuned = effective_unlearn(ctx, man)
    fallback = no_search(ctx.cfg, man)
    if fallback is not None:  # `lethe unlearn` alone has not run the tune step that records it
        ctx.state.tune = {**ctx.state.tune, "best": {"method": fallback["chosen"]}, "no_search": fallback}
    # method auto: the method the search chose, or what runs when it cannot search
    resolve_method(ctx, (tuned or {}).get("method") or (fallback or {}).get("chosen"))
    cfg, lay = ctx.cfg, ctx.lay
    fam = for_config(cfg)
    with ctx.step("unlearn", {**fam.unlearn_params(cfg, u), "tuned": tuned is not None}):
        arch = fam.arch(cfg, man)
        original = lay.fetch(lay.model("original"))
        teacher, _ = load_checkpoint(original, expected_kind=cfg.family, expected_arch=arch)
        plan = fam.plan_unlearn(ctx, man, arch, teacher, u, tuned is not None)
        replay, why = plan_replay(cfg, tuned, plan.job) if plan.eval_payload is not None else (None, "")
        if tuned is not None and why:
            log.info("unlearn: not replaying the search's chosen trial: %s", why)
        ctx.start_ray()
        if (
            replay is None
            or fit_unlearned(ctx, man, replay_plan(plan, replay), original, teacher, replay) is None
        ):
            fit_unlearned(ctx, man, plan, original, teacher)
        if fallback is not None:
            ctx.state.unlearn["auto"] = fallback  # the report and certificate say why nothing was searched
        rule = lr_rule(cfg, man)
        if rule["scale"] != 1.0:
            log.warning("unlearn: lr rule: %s", rule["why"])
        ctx.state.unlearn["lr_rule"] = {
            **rule,
            "applied_to": "the search's lr range" if tuned else "unlearn.lr",
        }
    return lay.model("unlearned")
