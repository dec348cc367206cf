"""pretrain (resolve-or-pretrain): the registered source model when `source_model` is set, else the
original trained here on the full data (cached by data digest + recipe); plus the FD feature net and
whatever models the family needs besides (a generator's feature classifier)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lethe.errors import CheckpointError
from lethe.pipeline.context import Context
from lethe.pipeline.families import for_config
from lethe.pipeline.jobs import featnet_job
from lethe.pipeline.keys import featnet_key, original_key
from lethe.pipeline.model_cache import train_or_reuse
from lethe.pipeline.params import numeric, prefixed, section_params
from lethe.pipeline.source import is_folder_source, load_folder

log = logging.getLogger("lethe")


def resolve_source(ctx: Context, man) -> tuple[Path, dict[str, Any]]:
    """Load the source model (a registered version through MLflow, or a save_pretrained folder) and
    save it as the lethe checkpoint."""
    from lethe.models.checkpoint import save_checkpoint

    cfg, lay = ctx.cfg, ctx.lay
    if is_folder_source(cfg):
        model, info = load_folder(cfg, man)
        meta = {"role": "original", "source_model": info["uri"]}
        return save_checkpoint(lay.model("original"), model, meta), info
    mv = ctx.tracker.resolve_model_version(cfg.source_model)
    name, version = mv.name, str(mv.version)
    uri = f"models:/{name}/{version}"
    model = ctx.tracker.load_registered_model(name, version)
    if model.family != cfg.family:  # a lethe model: the registry loader builds nothing else
        raise CheckpointError(
            "source model is not a lethe model of the configured family",
            where=uri,
            expected=f"a {cfg.family} model registered by lethe",
            seen=type(model).__name__,
        )
    want, got = for_config(cfg).arch(cfg, man), model.arch.to_dict()
    diff = [k for k in want if got.get(k) != want[k]]
    if diff:
        k = diff[0]
        raise CheckpointError(
            f"source model architecture differs from the configuration in {k} (set model.{k} to match)",
            where=uri,
            expected=repr(want[k]),
            seen=repr(got.get(k)),
        )
    dest = save_checkpoint(lay.model("original"), model, {"role": "original", "source_model": uri})
    requested = ctx.state.source_requested or cfg.source_model
    info = {"uri": uri, "requested": requested, "name": name, "version": version, "run_id": mv.run_id}
    log.warning("pretrain: source model %s (requested as %s)", uri, requested)
    return dest, info


def _featnet(ctx: Context, man) -> tuple[str, dict[str, Any]]:
    cfg = ctx.cfg
    f = cfg.featnet
    key = featnet_key(cfg, man)

    def build(n_rows: int, _meta: dict[str, Any]):
        meta = {"role": "featnet", "cache_key": key}
        return featnet_job(
            cfg, man, n_rows, meta, classes=len(man.class_names), width=f.width, epochs=f.epochs
        )

    _, info = train_or_reuse(ctx, "featnet", ("forget", "retain"), key, "featnet", build)
    return key, info


def step_pretrain(ctx: Context) -> Path:
    cfg = ctx.cfg
    fam = for_config(cfg)
    params = {"family": cfg.family, "source_model": cfg.source_model or "pretrain"}
    if not cfg.source_model:
        params.update(section_params("pretrain", cfg))
    with ctx.step("pretrain", params):
        man = ctx.manifest()
        source: dict[str, Any] = {}
        if cfg.source_model:
            path, source = resolve_source(ctx, man)
            info: dict[str, Any] = {"cache_key": None, "cached": False}
            ctx.tracker.set_tags(
                {"lethe.source_model": source["uri"], "lethe.source_model_requested": source["requested"]}
            )
            key_orig = None
        else:
            key_orig = original_key(cfg, man)
            path, info = train_or_reuse(
                ctx,
                cfg.family,
                ("forget", "retain"),
                key_orig,
                "original",
                lambda n_rows, meta: fam.pretrain_job(cfg, man, n_rows, meta),
                fam.model_info(cfg),
            )
        key_feat, finfo = _featnet(ctx, man)
        finfo = {**finfo, **fam.auxiliary_models(ctx, man)}
        ctx.tracker.log_params(
            {
                "original.cache_key": key_orig or "",
                "featnet.cache_key": key_feat,
                "original.phases": info.get("phases", ""),
            }
        )
        ctx.tracker.log_metrics(numeric({**prefixed("original", info), **prefixed("featnet", finfo)}))
        ctx.state.pretrain = {"original": info, "featnet": finfo, "source": source}
    return path
