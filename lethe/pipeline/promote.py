"""promote: register the unlearned model with its lineage; move the alias only if the gates pass.

All or nothing: when moving the alias or recording the decision fails, the alias goes back and the
new version is deleted. A re-run that produced the same weights registers no second version; what a
failed attempt could not roll back (the tracking server died, the process was killed) is a version
whose promote run never finished: the re-run deletes it (alias restored) and registers anew.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from lethe.errors import LetheError
from lethe.pipeline.context import Context
from lethe.pipeline.families import for_config
from lethe.pipeline.keys import state_digest
from lethe.pipeline.params import section_params
from lethe.pipeline.provenance import code_version
from lethe.pipeline.report import read_report, record_promotion
from lethe.pipeline.source import ARCH_TAG, arch_tag

log = logging.getLogger("lethe")

# Where the alias pointed before a version was registered: what a re-run puts back if it was left
# on a version of a failed attempt.
PREVIOUS_ALIAS_TAG = "lethe.previous_alias_version"


def register_and_promote(
    tracker: Any,
    model: torch.nn.Module,
    name: str,
    example: tuple,
    tags: dict[str, str],
    description: str,
    alias: str,
    promote: bool,
    after: Any = None,
) -> tuple[str, bool, str | None]:
    """Register `model` as a new version of `name`; move `alias` to it only if `promote`.

    All or nothing: if moving the alias or `after(version, moved, previous)` (the caller's
    bookkeeping) fails, the alias goes back to where it was and the new version is deleted.
    Returns (version, moved, previous alias target).
    """
    previous = tracker.alias_version(name, alias)
    tags = {**tags, PREVIOUS_ALIAS_TAG: previous or ""}
    version = tracker.register_model(model, name, example, tags, description=description)
    moved = False
    try:
        if promote:
            tracker.set_alias(name, alias, version)
            moved = True
        if after is not None:
            after(version, moved, previous)
    except BaseException as exc:
        try:
            if moved:
                tracker.restore_alias(name, alias, previous)
            tracker.delete_version(name, version)
        except Exception:  # noqa: BLE001 - report the original failure, not the rollback's
            log.error("promote: rollback of %s version %s failed; the next run removes it", name, version)
            if isinstance(exc, LetheError) and "nothing was registered" in exc.what:
                left = f"{name} version {version} stays registered until the next run removes it"
                raise type(exc)(exc.what.replace("nothing was registered", left)) from None
        raise
    return version, moved, previous


def drop_unfinished(tracker: Any, same: list, alias: str) -> list:
    """Versions of this model left by a failed attempt (their promote run is not FINISHED) are
    deleted, the alias put back where that attempt found it; returns the complete ones."""
    kept = []
    for v in same:
        if not v.run_id or tracker.run_status(v.run_id) == "FINISHED":
            kept.append(v)
            continue
        log.warning("promote: %s version %s is left from a failed run; replacing it", v.name, v.version)
        if tracker.alias_version(v.name, alias) == str(v.version):
            tracker.restore_alias(v.name, alias, v.tags.get(PREVIOUS_ALIAS_TAG) or None)
        tracker.delete_version(v.name, str(v.version))
    return kept


def gap_tags(report: dict[str, Any]) -> dict[str, str]:
    """Oracle gaps of the unlearned model as registry tags (FD ratio, PSNR and MIA differences)."""
    gaps = (report.get("oracle_gaps") or {}).get("unlearned", {})
    out: dict[str, str] = {}
    for split, names in gaps.items():
        for name, g in names.items():
            if name in ("fd", "psnr", "mia_auc"):
                out[f"lethe.oracle_gap.{split}.{name}"] = f"{g['diff']:.6g}"
                if g.get("ratio") is not None:
                    out[f"lethe.oracle_gap.{split}.{name}_ratio"] = f"{g['ratio']:.6g}"
    return out


def version_tags(
    ctx: Context, man, digest: str, decision, report: dict[str, Any], cert_uri: str
) -> dict[str, str]:
    """The registered version's lineage: what was forgotten (counts and digests), from what, how."""
    cfg, st = ctx.cfg, ctx.state
    source = st.pretrain.get("source") or {}
    return {
        "lethe.method": cfg.method,
        "lethe.alpha": str(st.unlearn.get("alpha", cfg.unlearn.alpha)),
        "lethe.model_digest": digest,
        "lethe.family": cfg.family,
        "lethe.forget_digest": man.shards["forget"].digest,
        "lethe.forget_count": str(man.shards["forget"].count),
        "lethe.retain_count": str(man.shards["retain"].count),
        "lethe.request_digest": man.request_digest,
        "lethe.data_digest": man.data_digest,
        # The digests are keyed (HMAC-SHA256): which key made them, by its public id.
        "lethe.digest_key_id": man.digest_key_id or "unkeyed",
        "lethe.dataset": man.dataset,
        "lethe.code_version": code_version(),
        "lethe.source_model": source.get("uri") or "pretrained by lethe",
        "lethe.pipeline_run_id": st.run_id or "",
        "lethe.alias": cfg.tracking.alias,
        "lethe.gates": decision.verdict,
        # Which yardstick judged it: an oracle, or none (cache.oracle = sample, not drawn).
        "lethe.oracle": "{}, {}".format(
            (report.get("oracle") or {}).get("policy", cfg.cache.oracle),
            "audited" if (report.get("oracle") or {}).get("audited", True) else "not audited",
        ),
        "lethe.gates.summary": decision.summary(),
        "lethe.certificate_uri": cert_uri,
        **({"lethe.source_model_requested": source["requested"]} if source.get("requested") else {}),
        **decision.tags(),
        **gap_tags(report),
    }


def _description(cfg, decision) -> str:
    alias = cfg.tracking.alias
    if decision.passed:
        return (
            f"lethe {cfg.method} unlearning of {cfg.family}; gates {decision.verdict}, promoted to @{alias}"
        )
    return f"lethe {cfg.method} unlearning of {cfg.family}; NOT promoted to @{alias}: {decision.summary()}"


def _reuse_version(
    ctx: Context, report, decision, same: list, digest: str, run_id: str, anchor: str, cert_uri: str
) -> str:
    """A re-run that returned the finished unlearning run has the same weights: no duplicate version."""
    name, alias = ctx.cfg.model_name, ctx.cfg.tracking.alias
    first = min(same, key=lambda v: int(v.version))
    version = str(first.version)
    on_alias = ctx.tracker.alias_version(name, alias)
    ctx.tracker.set_tags({"lethe.promote": "already registered", "lethe.model_version": version})
    # The version keeps the certificate and gate verdict of the run that registered it.
    ctx.state.promote = {
        "model_name": name,
        "model_version": version,
        "alias": alias,
        "reused": True,
        "promoted": on_alias == version,
        "previous_alias_version": on_alias,
        "gates": decision.to_dict(),
        "run_id": run_id,
        "certificate_run_id": anchor,
        "certificate_uri": first.tags.get("lethe.certificate_uri", cert_uri),
    }
    record_promotion(ctx, report, ctx.state.promote)
    log.warning("%s version %s already holds this model (digest %s)", name, version, digest[:12])
    return version


def _bookkeeping(ctx: Context, report, decision, description: str, run_id: str, anchor: str, cert_uri: str):
    """What promote records once the version exists (run tags, gates, state, report); a failure
    here rolls the registration back (register_and_promote)."""
    name, alias = ctx.cfg.model_name, ctx.cfg.tracking.alias
    verdict = decision.verdict

    def record(version: str, moved: bool, previous: str | None) -> None:
        if moved:
            log.warning("promote: %s version %s is now @%s (was %s)", name, version, alias, previous)
        else:
            log.warning(
                "promote: %s version %s registered but NOT promoted; @%s stays on %s: %s",
                name,
                version,
                alias,
                f"version {previous}" if previous else "no version",
                decision.summary(),
            )
        run_tags = {
            "lethe.promoted": str(moved).lower(),
            "lethe.gates": verdict,
            "lethe.gates.summary": decision.summary(),
            "lethe.model_version": version,
        }
        ctx.tracker.set_tags({**run_tags, "mlflow.note.content": description})
        if anchor != run_id:
            ctx.tracker.set_run_tags(anchor, run_tags)
        ctx.tracker.log_dict(decision.to_dict(), "gates.json")
        ctx.tracker.log_metrics(
            {f"gate.{r.name}.value": r.value for r in decision.results if r.value is not None}
        )
        ctx.state.promote = {
            "model_name": name,
            "model_version": version,
            "alias": alias,
            "promoted": moved,
            "previous_alias_version": previous,
            "gates": decision.to_dict(),
            "run_id": run_id,
            "certificate_run_id": anchor,
            "certificate_uri": cert_uri,
        }
        record_promotion(ctx, report, ctx.state.promote)

    return record


def step_promote(ctx: Context) -> str | None:
    from lethe.certificate import CERT_DIR, JSON_NAME
    from lethe.models.checkpoint import load_checkpoint

    cfg, lay = ctx.cfg, ctx.lay
    fam = for_config(cfg)
    alias = cfg.tracking.alias
    params = {"model_name": cfg.model_name, "alias": alias, **section_params("gates", cfg)}
    with ctx.step("promote", params) as run_id:
        man = ctx.manifest()
        arch = fam.arch(cfg, man)
        unlearned = lay.fetch(lay.model("unlearned"))
        model, _meta = load_checkpoint(unlearned, expected_kind=cfg.family, expected_arch=arch)
        if not cfg.tracking.register_model:
            log.warning("promote: registration disabled (tracking.register_model=false)")
            return None
        report = read_report(ctx)
        example, decision = fam.promotion(cfg, man, model, report)
        digest = state_digest(model)
        # The certificate is written after cleanup, into the pipeline run (or this run when the
        # step runs alone); its address is fixed now so the version is complete when created.
        anchor = ctx.state.run_id or run_id
        cert_uri = f"runs:/{anchor}/{CERT_DIR}/{JSON_NAME}"
        name = cfg.model_name
        same = [v for v in ctx.tracker.find_versions(name) if v.tags.get("lethe.model_digest") == digest]
        same = drop_unfinished(ctx.tracker, same, alias)
        if same:
            return _reuse_version(ctx, report, decision, same, digest, run_id, anchor, cert_uri)
        description = _description(cfg, decision)
        tags = {**version_tags(ctx, man, digest, decision, report, cert_uri), ARCH_TAG: arch_tag(arch)}
        record = _bookkeeping(ctx, report, decision, description, run_id, anchor, cert_uri)
        version, _moved, _previous = register_and_promote(
            ctx.tracker, model, name, example, tags, description, alias, decision.passed, record
        )
    return version
