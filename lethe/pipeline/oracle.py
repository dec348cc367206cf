"""oracle: retrain from scratch on the retain shard only, same recipe; cached by the retain digest
(cache.oracle = reuse), retrained every run (retrain), or trained only on a keyed random share of
runs (sample: the others are judged without an oracle, the gates that need one not evaluated)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from lethe import storage
from lethe.pipeline.context import Context
from lethe.pipeline.families import for_config
from lethe.pipeline.keys import oracle_key
from lethe.pipeline.model_cache import train_or_reuse
from lethe.pipeline.oracle_audit import oracle_audit
from lethe.pipeline.params import numeric, prefixed

# What stands in the work dir for the oracle of a run that was not drawn for an audit: KFP's oracle
# task must hand an artifact on, and a file that is not a checkpoint can never be loaded as a model.
NOT_AUDITED_MAGIC = b"lethe: no oracle in this run\n"
log = logging.getLogger("lethe")


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
