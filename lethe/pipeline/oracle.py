"""oracle: retrain from scratch on the retain shard only, same recipe; cached by the retain digest
(cache.oracle = reuse) or retrained every run (retrain)."""

from __future__ import annotations

from pathlib import Path

from lethe.pipeline.context import Context
from lethe.pipeline.families import for_config
from lethe.pipeline.keys import oracle_key
from lethe.pipeline.model_cache import train_or_reuse
from lethe.pipeline.params import numeric, prefixed


def step_oracle(ctx: Context) -> Path:
    cfg = ctx.cfg
    fam = for_config(cfg)
    with ctx.step("oracle", {"family": cfg.family}):
        man = ctx.manifest()
        key = oracle_key(cfg, man)
        path, info = train_or_reuse(
            ctx,
            cfg.family,
            ("retain",),
            key,
            "oracle",
            lambda n_rows, meta: fam.pretrain_job(cfg, man, n_rows, meta),
            fam.model_info(cfg),
            reuse=cfg.cache.oracle == "reuse",
        )
        info["policy"] = cfg.cache.oracle
        ctx.tracker.log_params({"oracle.cache_key": key})
        ctx.tracker.log_metrics(numeric(prefixed("oracle", info)))
        ctx.state.oracle = info
    return path
