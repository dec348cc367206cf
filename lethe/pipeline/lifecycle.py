"""The run lifecycle: the whole pipeline in one process (`lethe run`), one step alone (`lethe <step>`,
a KFP component, a Ray job), and a pipeline run spread over processes (open, record a failure,
finish: the KFP exit handler)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lethe.config import RunConfig
from lethe.errors import LetheError
from lethe.pipeline.certify import finalize
from lethe.pipeline.cleanup import delete_forget_shards, step_cleanup
from lethe.pipeline.context import Context, make_context, preflight
from lethe.pipeline.evaluate import step_evaluate
from lethe.pipeline.families import for_config
from lethe.pipeline.layout import layout
from lethe.pipeline.oracle import step_oracle
from lethe.pipeline.pretrain import step_pretrain
from lethe.pipeline.promote import step_promote
from lethe.pipeline.provenance import code_version
from lethe.pipeline.report import add_tune_to_report
from lethe.pipeline.split import step_split
from lethe.pipeline.state import RunState, load_state, now_iso, save_state
from lethe.pipeline.tune import step_tune
from lethe.pipeline.unlearn import step_unlearn

log = logging.getLogger("lethe")

STEPS = ("split", "pretrain", "oracle", "tune", "unlearn", "evaluate", "promote", "cleanup")
RUNNERS: dict[str, Callable[[Context], Any]] = {
    "split": step_split,
    "pretrain": step_pretrain,
    "oracle": step_oracle,
    "tune": step_tune,
    "unlearn": step_unlearn,
    "evaluate": step_evaluate,
    "promote": step_promote,
    "cleanup": step_cleanup,
}


def pipeline_params(cfg: RunConfig) -> dict[str, Any]:
    return {
        "family": cfg.family,
        "method": cfg.method,
        "dataset": cfg.data.dataset,
        "preset": cfg.preset,
        "request.kind": cfg.request.kind,
        "alpha": cfg.unlearn.alpha,
        "tune.enabled": cfg.tune.enabled,
        "seed": cfg.seed,
        "source_model": cfg.source_model or "pretrain",
    }


def run_all(cfg: RunConfig) -> Path:
    """`lethe run`: every step in this process, one MLflow parent run with a child run per step."""
    ctx = make_context(cfg)
    ctx.state = RunState.fresh(cfg.source_model)
    preflight(ctx)  # an unknown source model fails here, before anything is written
    tags = {"lethe.code_version": code_version(), "lethe.pipeline": "lethe run"}
    t0 = time.perf_counter()
    with ctx.tracker.pipeline_run(f"lethe-{cfg.family}-{cfg.method}", pipeline_params(cfg), tags) as run_id:
        ctx.state.run_id = run_id
        step_split(ctx)
        step_pretrain(ctx)
        step_oracle(ctx)
        if cfg.tune.enabled:
            step_tune(ctx)
        step_unlearn(ctx)
        report_path = step_evaluate(ctx)
        step_promote(ctx)
        step_cleanup(ctx)
        ctx.state.timing_s["total"] = round(time.perf_counter() - t0, 3)
        finalize(ctx, orchestrator="lethe run")
    ctx.save()
    return report_path


def _tune_prerequisites(ctx: Context) -> None:
    """`lethe tune` alone: run split / pretrain / oracle first when their outputs are missing."""
    lay = ctx.lay
    if not lay.exists(lay.manifest):
        step_split(ctx)
    if not (lay.exists(lay.model("original")) and lay.exists(lay.model("featnet"))):
        step_pretrain(ctx)
    if not lay.exists(lay.model("oracle")):
        step_oracle(ctx)


def run_step(
    cfg: RunConfig, name: str, parent_run_id: str | None = None, standalone: bool = True
) -> tuple[Any, RunState]:
    """Run one step against the work dir; returns the step's output and the run state after it.

    standalone (`lethe <step>`): the step belongs to no pipeline run; `lethe tune` first runs the
    steps it needs, and `lethe cleanup` certifies the run. Otherwise (a KFP component, a Ray job)
    the step is a child of the pipeline's MLflow run: `parent_run_id`, or the one in state.json.
    """
    ctx = make_context(cfg, parent_run_id=parent_run_id or None)
    if standalone:
        ctx.state.run_id = None
    else:
        ctx.parent_run_id = ctx.parent_run_id or ctx.state.run_id
    if standalone and name == "tune":
        for_config(cfg).check_tunable(cfg)  # before the prerequisites: fail before training anything
        _tune_prerequisites(ctx)
    out = RUNNERS[name](ctx)
    if standalone and name == "tune":
        add_tune_to_report(ctx)
    if standalone and name == "cleanup":
        # Cleanup ends a run made of single steps too: certify it.
        finalize(ctx, orchestrator="lethe steps")
    return out, ctx.state


def open_pipeline(cfg: RunConfig, orchestrator: str, tags: dict[str, str] | None = None) -> tuple[str, str]:
    """First step of a pipeline run spread over processes (KFP): check, then open the MLflow run.

    Resets the work dir's state (so no later step can attach to an older run), opens the parent
    run, which stays RUNNING until `finish_pipeline`, and records its id in state.json. Returns
    (run id, source model pinned to a version or "").
    """
    ctx = make_context(cfg)
    ctx.state = RunState.fresh(cfg.source_model)
    ctx.save()
    pinned = preflight(ctx) or ""
    all_tags = {"lethe.code_version": code_version(), "lethe.pipeline": orchestrator, **(tags or {})}
    run_id = ctx.tracker.open_run(f"lethe-{cfg.family}-{cfg.method}", pipeline_params(cfg), all_tags)
    ctx.state.run_id, ctx.state.orchestrator, ctx.state.source_pinned = run_id, orchestrator, pinned
    ctx.save()
    log.warning("pipeline run %s opened (%s)", run_id, orchestrator)
    return run_id, pinned


def record_failure(cfg: RunConfig, step: str, exc: BaseException) -> None:
    """Note in state.json which step failed and why (one line; no data), for the exit handler."""
    from lethe.errors import find_lethe_error

    ours = find_lethe_error(exc)
    line = ours.line() if ours is not None else f"internal error {type(exc).__name__} (see the step's log)"
    lay = layout(cfg)
    if not lay.root.is_dir():
        return
    state = load_state(lay)
    state.failed = {"step": step, "error": line, "at": now_iso()}
    save_state(lay, state)


def _cleanup_without_tracking(cfg: RunConfig) -> None:
    """No tracking store (or no work dir access through it): still delete the forget data."""
    lay = layout(cfg)
    if lay.manifest.is_file():
        state = load_state(lay)
        state.cleanup = {"deleted": delete_forget_shards(lay)}
        save_state(lay, state)


def finish_pipeline(cfg: RunConfig, succeeded: bool, error: str | None = None) -> dict[str, Any]:
    """Last step of a pipeline run spread over processes, run whatever happened before (KFP exit
    handler): delete the forget shards, write the final report and certificate, and close the
    pipeline's MLflow run as FINISHED or FAILED with the reason. Raises if cleanup failed."""
    try:
        ctx = make_context(cfg)
    except LetheError:
        _cleanup_without_tracking(cfg)
        raise
    st = ctx.state
    run_id = st.run_id
    ctx.parent_run_id = run_id
    orchestrator = st.orchestrator or "kfp"
    cleanup_error: LetheError | None = None
    if ctx.lay.manifest.is_file():
        try:
            step_cleanup(ctx)
        except LetheError as e:
            cleanup_error = e
    failed = st.failed
    # The step's own one-line error beats the orchestrator's generic one ("Task exit-handler-1 failed.").
    reason = (f"{failed['step']}: {failed['error']}" if failed else None) or error
    if cleanup_error is not None:
        reason = f"{reason + '; ' if reason else ''}cleanup: {cleanup_error.line()}"
    ok = succeeded and not failed and cleanup_error is None
    if st.started_at:
        t0 = datetime.fromisoformat(st.started_at)
        st.timing_s["total"] = round((datetime.now(timezone.utc) - t0).total_seconds(), 3)
    cert = None
    try:
        cert = finalize(
            ctx, orchestrator, status="complete" if ok else "incomplete", error=None if ok else reason
        )
    finally:
        if run_id:
            status = "FINISHED" if ok else "FAILED"
            tags = {"lethe.status": "succeeded" if ok else "failed"}
            if not ok:
                tags["lethe.error"] = reason or "a step failed (see the pipeline's logs)"
                tags["mlflow.note.content"] = f"lethe pipeline failed: {tags['lethe.error']}"
            ctx.tracker.close_run(run_id, status, tags)
    if cleanup_error is not None:
        raise cleanup_error
    return {"succeeded": ok, "reason": reason, "certificate": str(cert) if cert else None, "run_id": run_id}
