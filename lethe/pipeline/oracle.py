"""oracle: retrain from scratch on the retain shard only, same recipe; cached by the retain digest
(cache.oracle = reuse), retrained every run (retrain), or trained only on a keyed random share of
runs (sample: the others are judged without an oracle, the gates that need one not evaluated)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from lethe import storage
from lethe.config import RunConfig
from lethe.errors import ConfigError
from lethe.pipeline.context import Context
from lethe.pipeline.families import for_config
from lethe.pipeline.keys import oracle_key
from lethe.pipeline.model_cache import train_or_reuse
from lethe.pipeline.params import numeric, prefixed

# What stands in the work dir for the oracle of a run that was not drawn for an audit: KFP's oracle
# task must hand an artifact on, and a file that is not a checkpoint can never be loaded as a model.
NOT_AUDITED_MAGIC = b"lethe: no oracle in this run\n"
log = logging.getLogger("lethe")


def oracle_audit(cfg: RunConfig, man) -> dict[str, Any]:
    """Does this run get an oracle? The same answer in every step and process of the run: a pure
    function of the config and the retain shard's keyed digest (so of the cumulative forget set).

    Under `sample` the draw is uniform in [0, 1) and audited when below the share; it is keyed (the
    digest is an HMAC under the deployment's digest key), so whoever submits a request cannot tell
    in advance whether that night will be audited, and re-running the same night draws the same.
    """
    c = cfg.cache
    out: dict[str, Any] = {"policy": c.oracle, "audited": True}
    if c.oracle != "sample":
        return out
    h = hashlib.sha256(b"lethe-oracle-audit|" + man.shards["retain"].digest.encode()).hexdigest()
    draw = int(h[:13], 16) / 16**13
    out.update(share=c.oracle_audit_share, draw=round(draw, 6))
    if cfg.tune.enabled:
        out["reason"] = "audited: tuning needs the oracle (its objective is the distance to it)"
    elif draw < c.oracle_audit_share:
        out["reason"] = f"audited: drawn ({draw:.3f} < share {c.oracle_audit_share:g})"
    else:
        out["audited"] = False
        out["reason"] = (
            f"not audited: not drawn ({draw:.3f} >= share {c.oracle_audit_share:g}); no oracle was "
            "trained, so the gates that compare with it were not evaluated"
        )
    return out


def require_oracle(cfg: RunConfig, man, what: str) -> None:
    """One clear line when a step that cannot work without the oracle meets a run that has none."""
    audit = oracle_audit(cfg, man)
    if not audit["audited"]:
        raise ConfigError(
            f"{what} needs the oracle, and this run has none",
            where="cache.oracle",
            expected="reuse or retrain (or tune.enabled, which makes cache.oracle = sample audit the run)",
            seen=f"sample, {audit['reason']}",
        )


def step_oracle(ctx: Context) -> Path:
    cfg = ctx.cfg
    fam = for_config(cfg)
    with ctx.step("oracle", {"family": cfg.family}):
        man = ctx.manifest()
        key = oracle_key(cfg, man)
        audit = oracle_audit(cfg, man)
        ctx.tracker.log_params({"oracle.cache_key": key, "oracle.policy": cfg.cache.oracle})
        if not audit["audited"]:
            ctx.state.oracle = {**audit, "cache_key": key}
            return _placeholder(ctx, audit)
        path, info = train_or_reuse(
            ctx,
            cfg.family,
            ("retain",),
            key,
            "oracle",
            lambda n_rows, meta: fam.pretrain_job(cfg, man, n_rows, meta),
            fam.model_info(cfg),
            reuse=cfg.cache.oracle != "retrain",
        )
        info.update(audit)
        ctx.tracker.log_metrics(numeric(prefixed("oracle", info)))
        ctx.state.oracle = info
    return path


def _placeholder(ctx: Context, audit: dict[str, Any]) -> Path:
    log.warning("oracle: %s", audit["reason"])
    dest = ctx.lay.model("oracle")
    storage.write_bytes(str(dest), NOT_AUDITED_MAGIC + json.dumps(audit, sort_keys=True).encode() + b"\n")
    ctx.lay.publish(dest)
    return dest
