"""report.json and report.html of a run: assembled once by evaluate, completed by later steps
(promotion, tuning, final timings and cleanup), and written by `publish_report` alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lethe.errors import DataError
from lethe.pipeline.context import Context
from lethe.pipeline.params import ratio
from lethe.pipeline.provenance import code_version, cost_ratios, redact


def publish_report(
    ctx: Context,
    report: dict[str, Any],
    grids: dict[str, Path] | None = None,
    *,
    log: bool = True,
    mlflow_run: str | None = None,
) -> Path:
    """Write report.json and report.html (with the run's grids), publish them to storage.uri, and
    log them to MLflow: to `mlflow_run`, else to the active step run. `grids` fresh from evaluation
    are logged too; otherwise the grids already in the report folder are shown."""
    from lethe.report import write_html_report, write_report_json

    folder = ctx.lay.report_dir
    report_path = write_report_json(report, folder / "report.json")
    shown = grids or {p.stem.removeprefix("grid_"): p for p in sorted(folder.glob("grid_*.png"))}
    html = write_html_report(report, shown, folder / "report.html")
    ctx.lay.publish(folder)
    if log:
        files = [report_path, html, *((grids or {}).values())]
        for f in files:
            if mlflow_run:
                ctx.tracker.log_artifact_to(mlflow_run, f, "report")
            else:
                ctx.tracker.log_artifact(f, "report")
    return report_path


def read_report(ctx: Context) -> dict[str, Any]:
    rp = ctx.lay.report_dir / "report.json"
    if not rp.is_file():
        raise DataError("no evaluation report found", where=str(rp), expected="run `lethe evaluate` first")
    return json.loads(rp.read_text())


def request_section(ctx: Context, man) -> dict[str, Any]:
    """What was asked to be forgotten: kind, counts and digests, never ids. The digests are keyed
    (HMAC-SHA256, lethe.digests): digest_key_id names the key, None for a manifest from before."""
    refs = [r.model_dump() for r in ctx.cfg.request.refs]
    return {
        **({"requests": refs} if refs else {}),
        "kind": ctx.cfg.request.kind,
        "forget_count": man.shards["forget"].count,
        "retain_count": man.shards["retain"].count,
        "forget_digest": man.shards["forget"].digest,
        "request_digest": man.request_digest,
        "digest_algorithm": man.digest_algorithm or "sha256",
        "digest_key_id": man.digest_key_id or None,
    }


def tune_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The report's `tune` key from tune/result.json: every trial, the best, how it was searched."""
    keep = (
        "trials",
        "best",
        "objective",
        "retain_weight",
        "psnr_weight",
        "gate_margin",
        "gate_weight",
        "scheduler",
        "search",
        "budget",
        "selection",
        "validation",
        "baselines",
        "score_best",
        "lr_rule",
    )
    return {k: result[k] for k in keep if k in result} | {"wall_s": result.get("wall_s")}


def _tune_section(ctx: Context) -> dict[str, Any] | None:
    """Every trial's objective for the report, when the unlearned model used the tuned settings."""
    lay = ctx.lay
    if not ctx.cfg.tune.enabled or not ctx.state.unlearned_meta.get("tuned"):
        return None
    path = lay.fetch(lay.tune_dir / "result.json")
    if not path.is_file():
        return None
    return {**tune_summary(json.loads(path.read_text())), "used_by_unlearned_model": True}


def build_report(ctx: Context, man, metrics: dict, extra: dict) -> dict[str, Any]:
    cfg, st = ctx.cfg, ctx.state
    # The pipeline run when there is one; the evaluate step's own run when it ran alone.
    run_id = st.run_id or st.evaluate["run_id"]
    request = request_section(ctx, man)
    if cfg.request.kind == "classes":
        request["classes"] = list(cfg.request.classes)
    if cfg.request.kind == "feature":
        request["feature"] = cfg.request.feature
    # Per split of the metrics (forget / retain; "samples" for a generator's feature unlearning).
    fd = {
        s: ratio(metrics["unlearned"][s].get("fd"), metrics["original"][s].get("fd"))
        for s in metrics["unlearned"]
    }
    meta = st.unlearned_meta
    alpha = float(meta.get("alpha", cfg.unlearn.alpha))
    report: dict[str, Any] = {
        "run_id": run_id,
        "dataset": man.dataset,
        "source_uri": redact(man.source_uri),
        "family": cfg.family,
        "method": cfg.method,
        # What the unlearned model was trained with (the tuned values when tuning was on).
        "alpha": alpha,
        "unlearn": {
            "alpha": alpha,
            "lr": float(meta.get("lr", cfg.unlearn.lr)),
            "tuned": bool(meta.get("tuned", False)),
            **({"checkpoint": st.unlearn["checkpoint"]} if "checkpoint" in st.unlearn else {}),
            # what the retain side of the unlearning loss was when it was not the retain shard
            **({"proxy_retain": st.unlearn["proxy_retain"]} if "proxy_retain" in st.unlearn else {}),
            # method auto that could not search: what ran instead, and why
            **({"auto": st.unlearn["auto"]} if "auto" in st.unlearn else {}),
            # how the data-relative lr rule set the lr (lethe.pipeline.lr_rule)
            **({"lr_rule": st.unlearn["lr_rule"]} if "lr_rule" in st.unlearn else {}),
        },
        "storage_uri": ctx.lay.remote or str(ctx.lay.root),
        "preset": cfg.preset,
        "request": request,
        "heldout": {
            "forget_count": man.shards["heldout_forget"].count,
            "retain_count": man.shards["heldout_retain"].count,
        },
        "metrics": metrics,
        "fd_ratio_unlearned_vs_original": fd,
        # Which sampler produced every output, and with how many steps (MaskGIT / DDIM / one pass).
        "sampler": extra.get("sampler", {}),
        "evaluation": {
            **extra,
            "fd_feature_space": "project feature net (penultimate layer); not Inception, not FID",
            "mia": "calibrated loss attack: score = oracle's masked error - the model's on the same image "
            "and masks (higher => member); AUC 0.5 = chance; see evidence.membership",
        },
        "timing_s": dict(st.timing_s),
        "unlearn_vs_oracle_time": cost_ratios(st.unlearn, st.oracle),
        "mlflow": {
            "tracking_uri": redact(cfg.tracking_uri),
            "run_id": run_id,
            "model_name": cfg.model_name,
            "model_version": st.promote.get("model_version"),
        },
        "code_version": code_version(),
        "source_model": st.pretrain.get("source", {}).get("uri"),
    }
    tune = _tune_section(ctx)
    if tune is not None:
        report["tune"] = tune
    dec = st.unlearn.get("decouple")
    if cfg.method == "decouple_retain" and isinstance(dec, dict):
        report["decouple"] = dec
    return report


def record_promotion(ctx: Context, report: dict[str, Any], promo: dict[str, Any]) -> None:
    """report.json was written before registration: record the version and decision in it."""
    report["mlflow"]["model_version"] = promo["model_version"]
    report["promotion"] = {k: promo[k] for k in ("alias", "promoted", "previous_alias_version", "gates")}
    publish_report(ctx, report)


def add_tune_to_report(ctx: Context) -> None:
    """`lethe tune` alone: show the search in an existing report (it cannot have used it yet)."""
    rp = ctx.lay.fetch(ctx.lay.report_dir / "report.json")
    result = ctx.lay.tune_dir / "result.json"
    if not rp.is_file() or not result.is_file():
        return
    report = json.loads(rp.read_text())
    report["tune"] = {
        **tune_summary(json.loads(result.read_text())),
        "used_by_unlearned_model": bool(report.get("unlearn", {}).get("tuned")),
    }
    publish_report(ctx, report, log=False)


def finalise_report(ctx: Context, report: dict[str, Any]) -> None:
    """The report is written in `evaluate`; timings of later steps and cleanup are known only now."""
    st = ctx.state
    report["timing_s"] = dict(st.timing_s)
    if st.run_id:
        report["run_id"] = st.run_id
        report["mlflow"]["run_id"] = st.run_id
    report["cleanup"] = st.cleanup
    if st.promote:
        report["certificate_uri"] = st.promote["certificate_uri"]
    publish_report(ctx, report, log=bool(st.run_id), mlflow_run=st.run_id)


def request_only_report(ctx: Context) -> dict[str, Any]:
    """What a certificate can say when the run failed before `evaluate`: the request, from the manifest."""
    if not ctx.lay.manifest.is_file():
        return {}
    man = ctx.manifest()
    return {
        "dataset": man.dataset,
        "source_uri": man.source_uri,
        "family": ctx.cfg.family,
        "method": ctx.cfg.method,
        "request": request_section(ctx, man),
        "metrics": {},
        "code_version": code_version(),
    }
