"""What a KFP component does, once: run one lethe step and exchange typed artifacts.

Each function here backs one component in `components/` (which only declares the KFP interface
and calls it). The contract every component shares:

* the run configuration travels as JSON (`RunConfig.model_dump_json()`), plus the work dir, which
  overrides `workdir` (the same config runs against a volume mounted anywhere);
* the steps talk through the work dir exactly as `lethe <step>` does (lethe/pipeline/); on a cluster
  it must be a volume shared by the pipeline's pods (and the Ray cluster, if any);
* models also travel as KFP artifacts: a step's checkpoints are exported to its `Output[Model]`s and
  a consumer copies its `Input[Model]`s back into the work dir first, so a cached (skipped) step's
  model is used, not whatever the work dir last held;
* every step is an MLflow child run of the pipeline run opened by `begin`. Most components get its
  id as an input; the cached ones (source model, oracle) and the exit handler read it from the work
  dir's state.json instead, because a per-run input would defeat caching and KFP forbids an exit
  task to consume other tasks' outputs;
* a failing step records `{step, error}` (one line, no data) in state.json so the exit handler can
  close the MLflow run as FAILED with the reason, then re-raises so KFP marks the task failed.

Artifacts are duck-typed (`.path`, `.metadata`, `.log_metric`) so this module needs no kfp import.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lethe.config import RunConfig, config_from_json
from lethe.errors import CheckpointError, DataError, find_lethe_error
from lethe.orchestration import ray_submit
from lethe.pipeline import nightly
from lethe.pipeline.layout import layout
from lethe.pipeline.lifecycle import (
    failure_line,
    finish_pipeline,
    open_pipeline,
    record_failure,
    run_step,
)
from lethe.pipeline.params import numeric
from lethe.pipeline.state import RunState, load_state, save_state
from lethe.pipeline.workdir_lock import join_pipeline_run

log = logging.getLogger("lethe.kfp")


def component_config(config_json: str, workdir: str = "") -> RunConfig:
    cfg = config_from_json(config_json)
    if workdir:
        cfg.workdir = workdir
    return cfg


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    logging.getLogger("lethe").setLevel(logging.INFO)


@contextmanager
def _component(step: str, cfg: RunConfig, run_id: str | None = None) -> Iterator[None]:
    """A task of the pipeline run `run_id` (default: the one begin recorded in state.json)."""
    _setup_logging()
    ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    try:
        if step not in ("claim", "begin"):
            join_pipeline_run(run_id or _recorded_run_id(cfg))
        if step not in ("claim", "cleanup"):
            _renew_claim(cfg)
        yield
    except BaseException as e:
        record_failure(cfg, step, e)
        ours = find_lethe_error(e)
        if ours is not None:
            # The task's log shows the same one line a CLI user would see.
            print(f"lethe: error: {ours.line()}", file=sys.stderr, flush=True)
        raise
    finally:
        # Disconnect from the Ray this step started or joined (not one the caller already had).
        if not ray_before and "ray" in sys.modules and sys.modules["ray"].is_initialized():
            sys.modules["ray"].shutdown()
        if _task_process():
            # The process ends once kfp has written the outputs, and collecting the heap that torch,
            # Ray and MLflow leave took about 1 s of that exit (0.1 s frozen), in each of the tasks.
            gc.freeze()


def _task_process() -> bool:
    """Is this process a KFP task's own (kfp's executor is its main module), ending after the step?"""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return getattr(spec, "name", None) == "kfp.dsl.executor_main"


def _recorded_run_id(cfg: RunConfig) -> str | None:
    """The pipeline run begin recorded in the work dir (read only: nothing is written before the
    task holds the work dir)."""
    try:
        run_id = json.loads(layout(cfg).state.read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None  # no run begun in this work dir: the step says so itself
    return run_id if isinstance(run_id, str) else None


def _renew_claim(cfg: RunConfig) -> None:
    """Keep a nightly pipeline's claim alive; a store that is down for a moment fails no step (the
    exit handler's verdict reports a claim that was lost meanwhile)."""
    try:
        nightly.renew_pipeline_claim(cfg)
    except Exception as e:  # noqa: BLE001
        log.warning("could not renew the claim on this night's requests: %s", find_lethe_error(e) or e)


def _run_step(cfg: RunConfig, step: str, parent_run_id: str | None) -> RunState:
    """Run `step` as a Ray job when the config names a Ray dashboard, else in this process."""
    if step in ray_submit.RAY_STEPS and ray_submit.is_jobs_address(cfg.resources.ray_address):
        ray_submit.submit_step(cfg, step, parent_run_id)
        return load_state(layout(cfg))
    _out, state = run_step(cfg, step, parent_run_id, standalone=False)
    return state


# -- artifacts ------------------------------------------------------------------------------------


def export_file(src: Path, artifact: Any, metadata: dict[str, Any] | None = None) -> None:
    """Copy a work-dir file into an output artifact and describe it (no ids, no pixels)."""
    dest = Path(artifact.path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    if metadata:
        artifact.metadata.update({k: v for k, v in metadata.items() if v is not None})


def stage_file(artifact: Any, dest: Path) -> Path:
    """Copy an input artifact into the work dir (atomically; skipped when it is already there)."""
    src = Path(artifact.path)
    if not src.is_file():
        raise CheckpointError(
            "input artifact is missing", where=str(src), expected="a file from an upstream task"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and dest.stat().st_size == src.stat().st_size and dest.read_bytes() == src.read_bytes():
        return dest
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _log_metrics(artifact: Any, values: dict[str, float]) -> None:
    for k, v in values.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if hasattr(artifact, "log_metric"):
                artifact.log_metric(k, float(v))
            else:
                artifact.metadata[k] = float(v)


def _adopt_lineage(cfg: RunConfig, original: Any) -> None:
    """When KFP served the source model from its cache, the pretrain step did not run in this
    pipeline run: take its lineage (which registered version, which cache key) from the artifact."""
    lay = layout(cfg)
    state = load_state(lay)
    if state.pretrain:
        return
    md = dict(original.metadata or {})
    state.pretrain = {
        "original": {"cache_key": md.get("cache_key"), "kfp_cache_hit": True},
        "source": dict(md.get("source") or {}),
    }
    save_state(lay, state)


# -- the components' bodies -----------------------------------------------------------------------


def claim(config_json: str, workdir: str, model: str, kfp_run_id: str = "") -> tuple[int, str]:
    """The nightly pipeline's first task: claim the model's queued requests. Returns (how many, the
    night's run configuration as JSON: the cumulative forget set as an ids file, from the champion)."""
    cfg = component_config(config_json, workdir)
    with _component("claim", cfg):
        got = nightly.pipeline_claim(cfg, model, f"kfp-run {kfp_run_id}" if kfp_run_id else "")
        if got.config is None:
            log.warning("nightly %s: no queued requests; nothing to do, no new version", model)
            return 0, config_json
        return len(got.claimed), got.config.model_dump_json()


def begin(config_json: str, workdir: str, kfp_run_id: str = "") -> tuple[str, str]:
    """Open the pipeline's MLflow run; returns (its id, the source model pinned to a version or "")."""
    cfg = component_config(config_json, workdir)
    with _component("begin", cfg):
        tags = {"lethe.kfp_run_id": kfp_run_id} if kfp_run_id else {}
        return open_pipeline(cfg, orchestrator="kfp", tags=tags)


def split(config_json: str, workdir: str, parent_run_id: str, shards: Any) -> dict[str, Any]:
    """Split the data set; `shards` gets the manifest (counts, digests, source URI)."""
    cfg = component_config(config_json, workdir)
    with _component("split", cfg, parent_run_id):
        _run_step(cfg, "split", parent_run_id)
        lay = layout(cfg)
        man = json.loads(lay.manifest.read_text())
        meta = {
            "dataset": man["dataset"],
            "source_uri": man["source_uri"],
            "data_digest": man["data_digest"],
            "request_digest": man["request_digest"],
            "shards_dir": str(lay.shards),
            **{f"{n}_count": s["count"] for n, s in man["shards"].items()},
            **{f"{n}_digest": s["digest"] for n, s in man["shards"].items()},
        }
        export_file(lay.manifest, shards, meta)
        return {
            "data_digest": man["data_digest"],
            "retain_digest": man["shards"]["retain"]["digest"],
            "request_digest": man["request_digest"],
        }


def _check_shards(cfg: RunConfig, key: str, expected: str) -> None:
    """A cached task is keyed on a digest: make sure the work dir holds the data it promises."""
    man = json.loads(layout(cfg).manifest.read_text()) if layout(cfg).manifest.is_file() else None
    if man is None:
        raise DataError(
            "no shards in the work dir",
            where=str(layout(cfg).shards),
            expected="the split task's output",
        )
    seen = man["data_digest"] if key == "data" else man["shards"]["retain"]["digest"]
    if seen != expected:
        raise DataError(
            f"the work dir's shards changed since the split ({key} digest)", expected=expected, seen=seen
        )


def resolve_or_pretrain(
    config_json: str, workdir: str, data_digest: str, source_model: str, original: Any, featnet: Any
) -> None:
    """The source model (registered version, pinned by `begin`) or one pretrained here, plus the
    feature net; both exported as Model artifacts."""
    cfg = component_config(config_json, workdir)
    with _component("pretrain", cfg):
        _check_shards(cfg, "data", data_digest)
        if source_model:
            cfg.source_model = source_model
        state = _run_step(cfg, "pretrain", None)
        lay = layout(cfg)
        info = state.pretrain
        src = info.get("source") or {}
        export_file(
            lay.model("original"),
            original,
            {
                "family": cfg.family,
                "source_model": src.get("uri") or "pretrained",
                "source": src,
                "cache_key": (info.get("original") or {}).get("cache_key"),
                "data_digest": data_digest,
            },
        )
        export_file(
            lay.model("featnet"),
            featnet,
            {"role": "FD feature net", "cache_key": (info.get("featnet") or {}).get("cache_key")},
        )


def oracle(config_json: str, workdir: str, retain_digest: str, oracle: Any) -> None:
    """Retrain from scratch on retain only; exported as a Model artifact."""
    cfg = component_config(config_json, workdir)
    with _component("oracle", cfg):
        _check_shards(cfg, "retain", retain_digest)
        state = _run_step(cfg, "oracle", None)
        export_file(
            layout(cfg).model("oracle"),
            oracle,
            {
                "family": cfg.family,
                "retain_digest": retain_digest,
                "cache_key": state.oracle.get("cache_key"),
            },
        )


def tune(
    config_json: str,
    workdir: str,
    parent_run_id: str,
    enabled: bool,
    original: Any,
    featnet: Any,
    oracle: Any,
    trials: Any,
) -> float:
    """Choose alpha for the unlearn step.

    Enabled: the Ray Tune search of `lethe tune` (lethe/pipeline/tune.py) over alpha and lr; returns
    the best trial's alpha (the unlearn step reads the best lr from tune/best.json itself).
    Disabled (the default): returns the configured alpha.
    """
    cfg = component_config(config_json, workdir)
    with _component("tune", cfg, parent_run_id):
        alpha = float(cfg.unlearn.alpha)
        if not enabled:
            _log_metrics(trials, {"alpha": alpha, "trials": 0.0})
            return alpha
        lay = layout(cfg)
        stage_file(original, lay.model("original"))
        stage_file(featnet, lay.model("featnet"))
        stage_file(oracle, lay.model("oracle"))
        state = _run_step(cfg, "tune", parent_run_id)
        best = state.tune.get("best") or {}
        alpha = float(best.get("alpha", alpha))
        _log_metrics(trials, {"alpha": alpha, **numeric(best)})
        return alpha


def unlearn(
    config_json: str,
    workdir: str,
    parent_run_id: str,
    alpha: float,
    original: Any,
    featnet: Any,
    oracle: Any,
    unlearned: Any,
    metrics: Any,
) -> None:
    """Unlearn the forget set from the source model with `alpha` (from the tune task); the feature
    net and the oracle score its checkpoints when it keeps the best one."""
    cfg = component_config(config_json, workdir)
    with _component("unlearn", cfg, parent_run_id):
        cfg.unlearn.alpha = float(alpha)
        lay = layout(cfg)
        stage_file(original, lay.model("original"))
        stage_file(featnet, lay.model("featnet"))
        stage_file(oracle, lay.model("oracle"))
        _adopt_lineage(cfg, original)
        state = _run_step(cfg, "unlearn", parent_run_id)
        u = state.unlearn
        export_file(
            lay.model("unlearned"),
            unlearned,
            {"family": cfg.family, "method": u.get("method", cfg.method), "alpha": float(alpha)},
        )
        _log_metrics(metrics, numeric(u))


def evaluate(
    config_json: str,
    workdir: str,
    parent_run_id: str,
    original: Any,
    featnet: Any,
    oracle: Any,
    unlearned: Any,
    metrics: Any,
    report: Any,
    report_json: Any,
) -> None:
    """Original vs unlearned vs oracle on held-out data; report.json, report.html and Metrics."""
    cfg = component_config(config_json, workdir)
    with _component("evaluate", cfg, parent_run_id):
        lay = layout(cfg)
        for name, art in (
            ("original", original),
            ("featnet", featnet),
            ("oracle", oracle),
            ("unlearned", unlearned),
        ):
            stage_file(art, lay.model(name))
        _run_step(cfg, "evaluate", parent_run_id)
        rep = json.loads((lay.report_dir / "report.json").read_text())
        flat = {
            f"{model}.{split}.{name}": v
            for model, splits in rep["metrics"].items()
            for split, vals in splits.items()
            for name, v in vals.items()
        }
        _log_metrics(metrics, flat)
        export_file(lay.report_dir / "report.html", report, {"run_id": rep.get("run_id")})
        export_file(lay.report_dir / "report.json", report_json, {"run_id": rep.get("run_id")})


def promote(
    config_json: str, workdir: str, parent_run_id: str, unlearned: Any, report_json: Any, gates: Any
) -> dict[str, Any]:
    """Register the unlearned model; move the alias only if the gates pass. Returns version/promoted."""
    cfg = component_config(config_json, workdir)
    with _component("promote", cfg, parent_run_id):
        lay = layout(cfg)
        stage_file(unlearned, lay.model("unlearned"))
        stage_file(report_json, lay.report_dir / "report.json")
        state = _run_step(cfg, "promote", parent_run_id)
        p = state.promote
        decision = p.get("gates") or {}
        _log_metrics(
            gates,
            {f"{r['name']}.value": r["value"] for r in decision.get("results", []) if r["value"] is not None},
        )
        _log_metrics(gates, {f"{r['name']}.passed": float(r["passed"]) for r in decision.get("results", [])})
        gates.metadata.update({"summary": decision.get("summary", "not registered"), "alias": p.get("alias")})
        # passed = 1 means "did not block": the verdict tells passed from inconclusive / not evaluated.
        gates.metadata.update({f"{r['name']}.verdict": r["verdict"] for r in decision.get("results", [])})
        return {"model_version": str(p.get("model_version") or ""), "promoted": bool(p.get("promoted"))}


def cleanup(
    config_json: str,
    workdir: str,
    state: str,
    error_message: str,
    certificate: Any,
    certificate_json: Any,
    model: str = "",
) -> None:
    """Exit handler: delete the forget shards, certify, close the pipeline's MLflow run.

    KFP runs it whether the body succeeded or failed (`state` is the body's final state). In the
    nightly pipeline (`model` set) it also gives the verdict on the claimed requests.
    """
    cfg = component_config(config_json, workdir)
    with _component("cleanup", cfg):
        succeeded = str(state).upper() == "SUCCEEDED"
        pending = nightly.pending_claim(cfg) if model else None
        if pending is not None and pending.config is None:
            nightly.pipeline_settle(cfg, succeeded, None)  # nothing was claimed: no run to close
            return
        if pending is not None:
            cfg = component_config(pending.config.model_dump_json(), workdir)  # the night's refs
        try:
            out = finish_pipeline(
                cfg, succeeded=succeeded, error=None if succeeded else (error_message or None)
            )
        except BaseException as e:
            if pending is not None:
                nightly.pipeline_settle(cfg, False, failure_line(e))
            raise
        if pending is not None:
            failed = load_state(layout(cfg)).failed
            nightly.pipeline_settle(cfg, out["succeeded"], None if out["succeeded"] else failed.get("error"))
        cert = out.get("certificate")
        if cert:
            export_file(
                Path(cert), certificate_json, {"status": "complete" if out["succeeded"] else "incomplete"}
            )
            export_file(Path(cert).with_suffix(".html"), certificate)
        if not out["succeeded"]:
            log.warning("pipeline failed: %s", out["reason"])
