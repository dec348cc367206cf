"""evaluate: original vs unlearned vs oracle on held-out data (the family's measures), pictures, and
the report (report.json + report.html)."""

from __future__ import annotations

from pathlib import Path

from lethe.evaluation.reconstruction import MODEL_NAMES
from lethe.pipeline.cleanup import forget_trained_model
from lethe.pipeline.context import Context
from lethe.pipeline.families import for_config
from lethe.pipeline.oracle_audit import oracle_audit
from lethe.pipeline.params import numeric_or_str
from lethe.pipeline.report import build_report, publish_report


def step_evaluate(ctx: Context) -> Path:
    from lethe.models.checkpoint import load_checkpoint

    cfg, lay = ctx.cfg, ctx.lay
    fam = for_config(cfg)
    with ctx.step("evaluate", fam.eval_params(cfg)) as run_id:
        man = ctx.manifest()
        arch = fam.arch(cfg, man)
        featnet_path = forget_trained_model(lay, "featnet")  # before any work: cleanup deletes it
        audit = oracle_audit(cfg, man)
        # A run not drawn for an oracle audit (cache.oracle = sample) is judged without one.
        names = MODEL_NAMES if audit["audited"] else tuple(n for n in MODEL_NAMES if n != "oracle")
        loaded = {
            n: load_checkpoint(lay.fetch(lay.model(n)), expected_kind=cfg.family, expected_arch=arch)
            for n in names
        }
        models = {n: m for n, (m, _) in loaded.items()}
        ctx.state.unlearned_meta = numeric_or_str(loaded["unlearned"][1])
        featnet, _ = load_checkpoint(featnet_path, expected_kind="featnet")
        result = fam.evaluate(ctx, man, arch, models, featnet)
        ctx.state.evaluate = {"run_id": run_id}
        report = build_report(ctx, man, result.metrics, result.extra)
        report["oracle"] = audit
        if result.complete is not None:
            result.complete(report)
        report_path = publish_report(ctx, report, result.grids)
    return report_path
