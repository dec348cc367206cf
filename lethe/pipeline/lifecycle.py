"""The run lifecycle: the whole pipeline in one process (`lethe run`), one step alone (`lethe <step>`,
a KFP component, a Ray job), and a pipeline run spread over processes (open, record a failure,
finish: the KFP exit handler). However a pipeline run ends, it ends the same way (`_close_pipeline`):
forget data deleted, a certificate (complete, or incomplete with the failing step and its reason),
the MLflow run closed."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lethe import storage
from lethe.config import RunConfig
from lethe.errors import LetheError, StorageError, find_lethe_error
from lethe.pipeline.auto import AFTER_UNLEARN, resolve_method
from lethe.pipeline.certify import finalize
from lethe.pipeline.cleanup import delete_forget_data, step_cleanup
from lethe.pipeline.context import Context, make_context, preflight
from lethe.pipeline.layout import Layout, layout
from lethe.pipeline.provenance import code_version
from lethe.pipeline.report import add_tune_to_report
from lethe.pipeline.state import RunState, load_state, now_iso, save_state
from lethe.pipeline.workdir_lock import WorkdirBusy, end_pipeline_lease, hold, start_pipeline_lease

log = logging.getLogger("lethe")

STEPS = ("split", "pretrain", "oracle", "tune", "unlearn", "evaluate", "promote", "cleanup")


def _step(name: str) -> Callable[[Context], Any]:
    """`step_<name>` of `lethe.pipeline.<name>`, imported when the step runs: a KFP task is a process
    of its own, and one that only splits, registers or cleans up need not import the training code
    (torch, the models, the evaluation) of the steps it does not run."""

    def run(ctx: Context) -> Any:
        return getattr(importlib.import_module(f"lethe.pipeline.{name}"), f"step_{name}")(ctx)

    run.__name__ = f"step_{name}"
    return run


RUNNERS: dict[str, Callable[[Context], Any]] = {name: _step(name) for name in STEPS}
# A callable that closes a pipeline's MLflow run: (run id, FINISHED | FAILED, tags).
CloseRun = Callable[[str, str, dict[str, str]], None]


class Terminated(SystemExit):
    """SIGTERM turned into an exception (`sigterm_raises`) so that the run can clean up; exit status
    143 (128 + SIGTERM) as if the signal had ended the process."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


class SigtermGuard:
    """What `sigterm_raises` yields. `reinstall()` after code that replaced the handlers: `ray.init`
    installs its own SIGTERM handler, and each Ray Train fit a SIGINT one that it leaves behind (a
    later Ctrl-C would then `sys.exit(0)`); `shield()` while cleaning up (a second SIGTERM is then
    logged and ignored)."""

    def __init__(self) -> None:
        self.shielded = False
        self.sigint: Any = None  # the SIGINT handler to keep between steps (set by sigterm_raises)

    def handler(self, signum: int, frame: Any) -> None:
        if self.shielded:
            log.warning("SIGTERM again: still cleaning up the forget data; it ends the run when done")
            return
        self.shielded = True  # once: the clean-up that follows must not be cut short by a second one
        raise Terminated()

    def unraisable(self, hook: Callable[[Any], None]) -> Callable[[Any], None]:
        """A `sys.unraisablehook` over `hook`. Python runs a signal handler wherever the main thread
        is, a weakref callback or a `__del__` included, and drops what those raise (a `lethe run` went
        on to the end after its SIGTERM landed in a WeakSet's callback while pretrain started Ray
        Train): a `Terminated` dropped there is sent again, to land in the step's own code."""

        def unraisable(arg: Any) -> None:
            if not isinstance(arg.exc_value, Terminated):
                hook(arg)
                return
            log.debug("SIGTERM landed in %r, which cannot raise: sending it again", arg.object)
            self.shielded = False
            # From another thread, a moment later: sent from this one (or while this one waits for
            # the sender to start), the handler would run here again, inside the hook.
            resend = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM))
            resend.daemon = True
            resend.start()

        return unraisable

    def reinstall(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) != self.handler:
            signal.signal(signal.SIGTERM, self.handler)
        if self.sigint is not None and signal.getsignal(signal.SIGINT) != self.sigint:
            signal.signal(signal.SIGINT, self.sigint)

    def shield(self) -> None:
        self.shielded = True
        self.reinstall()


def _restorable(handler: Any) -> Any:
    # None: a handler installed outside Python, which cannot be put back; the default is closest.
    return handler if handler is not None else signal.SIG_DFL


@contextmanager
def sigterm_raises() -> Iterator[SigtermGuard]:
    """While the block runs, SIGTERM raises `Terminated` in the main thread; the previous handler
    (and the SIGINT one) are restored after. Python delivers signals to the main thread only:
    elsewhere nothing is installed."""
    guard = SigtermGuard()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = signal.getsignal(signal.SIGTERM)
    guard.sigint = _restorable(signal.getsignal(signal.SIGINT))
    hook = sys.unraisablehook
    sys.unraisablehook = guard.unraisable(hook)
    guard.reinstall()
    try:
        yield guard
    finally:
        signal.signal(signal.SIGTERM, _restorable(previous))
        signal.signal(signal.SIGINT, guard.sigint)
        sys.unraisablehook = hook


def failure_line(exc: BaseException) -> str:
    """One line saying why a step stopped: the LetheError's line, an interruption, or a bug's type."""
    if isinstance(exc, Terminated):
        return "terminated by SIGTERM"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    ours = find_lethe_error(exc)
    if ours is not None:
        return ours.line()
    if isinstance(exc, SystemExit):
        return f"stopped (exit status {exc.code})"
    return f"internal error {type(exc).__name__} (see the step's log)"


def failure_record(step: str, exc: BaseException) -> dict[str, str]:
    """What state.failed holds: which step failed and why (one line; no data)."""
    return {"step": step, "error": failure_line(exc), "at": now_iso()}


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
    """`lethe run`: every step in this process, one MLflow parent run with a child run per step.

    A step that fails, Ctrl-C or SIGTERM ends the run the way the KFP exit handler ends a pipeline
    run: forget data deleted, certificate `incomplete` with the step and its one-line error, the MLflow
    run FAILED (KILLED when interrupted); then the error goes on to the caller.
    """
    with sigterm_raises() as guard, hold(cfg):  # the lock first: the MLflow store is set up under it
        ctx = make_context(cfg)
        ctx.state = RunState.fresh(cfg.source_model)
        preflight(ctx)  # an unknown source model fails here, before anything is written
        tags = {"lethe.code_version": code_version(), "lethe.pipeline": "lethe run"}
        t0 = time.perf_counter()
        with ctx.tracker.pipeline_run(
            f"lethe-{cfg.family}-{cfg.method}", pipeline_params(cfg), tags
        ) as run_id:
            ctx.state.run_id = run_id
            ctx.save()  # from here on state.json is this run's: a failure is never recorded on the last one
            report_path = _run_steps(ctx, guard)
            ctx.state.timing_s["total"] = round(time.perf_counter() - t0, 3)
            finalize(ctx, orchestrator="lethe run")
        ctx.save()
    return report_path


def _run_steps(ctx: Context, guard: SigtermGuard) -> Path:
    """The steps of `lethe run` in order; on any failure or interruption, `_fail_run`, then re-raise."""
    report_path: Path | None = None
    step = STEPS[0]
    try:
        for step in STEPS:
            if step == "tune" and not ctx.cfg.tune.enabled:
                continue
            out = RUNNERS[step](ctx)  # method auto: unlearn sets ctx.cfg.method to the chosen one
            if step == "evaluate":
                report_path = out
            guard.reinstall()  # the split's ray.init replaced the SIGTERM handler with Ray's
    except BaseException as exc:
        guard.shield()
        _fail_run(ctx, step, exc)
        if isinstance(exc, SystemExit) and not exc.code:
            # sys.exit(0) inside a step (Ray Train's SIGINT handler does that): the run did not succeed.
            raise SystemExit(1) from exc
        raise
    assert report_path is not None
    return report_path


def _fail_run(ctx: Context, step: str, exc: BaseException) -> None:
    """`lethe run` failed at `step`: record it, then end the run as the exit handler would. The
    MLflow run gets the failure tags here; `pipeline_run` ends it FAILED / KILLED as the error leaves
    it. Never raises an error of its own over the step's: the forget data goes in any case."""
    ctx.state.failed = failure_record(step, exc)
    log.warning("lethe run failed at step %s (%s): deleting the forget data", step, ctx.state.failed["error"])
    try:
        ctx.save()
        # certify logs the certificate's path and status itself
        _close_pipeline(
            ctx,
            "lethe run",
            False,
            None,
            lambda run_id, _status, tags: ctx.tracker.set_run_tags(run_id, tags),
        )
    except Exception as e:  # noqa: BLE001 - the step's error is the one the user must see
        log.warning("could not end the failed run cleanly: %s", failure_line(e))
        if not ctx.state.cleanup:
            try:
                _cleanup_without_tracking(ctx.cfg)
            except Exception as e2:  # noqa: BLE001 - as above
                log.warning("could not delete the forget data: %s", failure_line(e2))


def _tune_prerequisites(ctx: Context) -> None:
    """`lethe tune` alone: run split / pretrain / oracle first when their outputs are missing."""
    lay = ctx.lay
    if not lay.exists(lay.manifest):
        RUNNERS["split"](ctx)
    if not (lay.exists(lay.model("original")) and lay.exists(lay.model("featnet"))):
        RUNNERS["pretrain"](ctx)
    if not lay.exists(lay.model("oracle")):
        RUNNERS["oracle"](ctx)


def run_step(
    cfg: RunConfig, name: str, parent_run_id: str | None = None, standalone: bool = True
) -> tuple[Any, RunState]:
    """Run one step against the work dir; returns the step's output and the run state after it.

    standalone (`lethe <step>`): the step belongs to no pipeline run; `lethe tune` first runs the
    steps it needs, and `lethe cleanup` certifies the run. Otherwise (a KFP component, a Ray job)
    the step is a child of the pipeline's MLflow run: `parent_run_id`, or the one in state.json.
    Under the work dir's lock: the pipeline's launcher's when it holds it, else this step's own.
    """
    with hold(cfg):
        return _run_step(cfg, name, parent_run_id, standalone)


def _run_step(cfg: RunConfig, name: str, parent_run_id: str | None, standalone: bool) -> tuple[Any, RunState]:
    ctx = make_context(cfg, parent_run_id=parent_run_id or None)
    if standalone:
        ctx.state.run_id = None
    else:
        ctx.parent_run_id = ctx.parent_run_id or ctx.state.run_id
    if standalone and name == "tune":
        from lethe.pipeline.families import for_config

        for_config(cfg).check_tunable(cfg)  # before the prerequisites: fail before training anything
        _tune_prerequisites(ctx)
    if name in AFTER_UNLEARN:
        resolve_method(ctx)  # method auto: the method the unlearn step ran (it resolves its own)
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
    with hold(cfg):
        ctx = make_context(cfg)
        ctx.state = RunState.fresh(cfg.source_model)
        ctx.save()
        pinned = preflight(ctx) or ""
        all_tags = {"lethe.code_version": code_version(), "lethe.pipeline": orchestrator, **(tags or {})}
        run_id = ctx.tracker.open_run(f"lethe-{cfg.family}-{cfg.method}", pipeline_params(cfg), all_tags)
        ctx.state.run_id, ctx.state.orchestrator, ctx.state.source_pinned = run_id, orchestrator, pinned
        ctx.save()
        start_pipeline_lease(cfg, run_id)  # on a cluster: the work dir is this run's until cleanup
    log.warning("pipeline run %s opened (%s)", run_id, orchestrator)
    return run_id, pinned


def record_failure(cfg: RunConfig, step: str, exc: BaseException) -> None:
    """Note in state.json which step failed and why (one line; no data), for the exit handler.
    Not when another run holds the work dir: its state is not ours to write (the step was refused)."""
    lay = layout(cfg)
    if not lay.root.is_dir():
        return
    try:
        with hold(cfg):
            state = load_state(lay)
            state.failed = failure_record(step, exc)
            save_state(lay, state)
    except WorkdirBusy as busy:
        log.warning("failure of step %s not recorded: %s", step, busy.line())


def _has_shards(lay: Layout) -> bool:
    """Whether the split wrote shards (the manifest is written last), locally or on storage.uri."""
    try:
        return lay.manifest.is_file() or bool(lay.remote and storage.is_file(lay.manifest_uri))
    except StorageError:
        return True  # unreachable storage: let the cleanup try, and fail with its own line


def _cleanup_without_tracking(cfg: RunConfig) -> None:
    """No tracking store (or no work dir access through it): still delete the forget data."""
    lay = layout(cfg)
    if _has_shards(lay):
        state = load_state(lay)
        state.cleanup = {"deleted": delete_forget_data(cfg, lay, state)}
        save_state(lay, state)


def _cleanup(ctx: Context) -> LetheError | None:
    """The cleanup step; when it fails before deleting anything (no tracking store, say), the
    deletion without it. Returns the step's error, None when it succeeded."""
    if not _has_shards(ctx.lay):
        return None
    ctx.state.cleanup = {}
    try:
        step_cleanup(ctx)
        return None
    except Exception as e:  # noqa: BLE001 - whatever stopped the step, the forget data must still go
        error = find_lethe_error(e) or LetheError("cleanup failed", seen=failure_line(e))
    log.warning("cleanup step failed: %s", error.line())
    if not ctx.state.cleanup:
        try:
            ctx.state.cleanup = {"deleted": delete_forget_data(ctx.cfg, ctx.lay, ctx.state)}
            ctx.save()
        except LetheError as e:
            log.warning("deleting the forget data failed too: %s", e.line())
    return error


def _close_pipeline(
    ctx: Context, orchestrator: str, succeeded: bool, error: str | None, close: CloseRun
) -> dict[str, Any]:
    """End a pipeline run whatever happened before: delete the forget data, write the final report
    and the certificate (complete, or incomplete with the reason: the failed step's own line beats
    the orchestrator's `error`), and close the MLflow run with `close`. The returned dict holds
    `cleanup_error` (None, or the cleanup step's LetheError) besides the outcome."""
    st = ctx.state
    cleanup_error = _cleanup(ctx)
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
        # A run that failed in its split has nothing of its own to certify: the manifest in the work
        # dir, if any, is an earlier run's (its forget shards were deleted above all the same).
        if ok or st.split:
            cert = finalize(
                ctx, orchestrator, status="complete" if ok else "incomplete", error=None if ok else reason
            )
    finally:
        if st.run_id:
            tags = {"lethe.status": "succeeded" if ok else "failed"}
            if not ok:
                tags["lethe.error"] = reason or "a step failed (see the pipeline's logs)"
                tags["mlflow.note.content"] = f"lethe pipeline failed: {tags['lethe.error']}"
            close(st.run_id, "FINISHED" if ok else "FAILED", tags)
    return {
        "succeeded": ok,
        "reason": reason,
        "certificate": str(cert) if cert else None,
        "run_id": st.run_id,
        "cleanup_error": cleanup_error,
    }


def finish_pipeline(cfg: RunConfig, succeeded: bool, error: str | None = None) -> dict[str, Any]:
    """Last step of a pipeline run spread over processes, run whatever happened before (KFP exit
    handler): delete the forget data, write the final report and certificate, and close the
    pipeline's MLflow run as FINISHED or FAILED with the reason. Raises if cleanup failed."""
    with hold(cfg):
        try:
            return _finish_pipeline(cfg, succeeded, error)
        finally:
            end_pipeline_lease(cfg)


def _finish_pipeline(cfg: RunConfig, succeeded: bool, error: str | None) -> dict[str, Any]:
    try:
        ctx = make_context(cfg)
    except LetheError:
        _cleanup_without_tracking(cfg)
        raise
    ctx.parent_run_id = ctx.state.run_id
    resolve_method(ctx)  # method auto: certify the method the search chose
    out = _close_pipeline(ctx, ctx.state.orchestrator or "kfp", succeeded, error, ctx.tracker.close_run)
    cleanup_error = out.pop("cleanup_error")
    if cleanup_error is not None:
        raise cleanup_error
    return out
