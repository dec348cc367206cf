"""Validation images for choosing among unlearned models: the tuning trials (lethe.pipeline.tune)
and the checkpoints of one unlearning run (best-checkpoint keeping) are scored on them with the tune
objective. They are the last images of the held-out shards in id-hash order, while evaluation takes
the first ones, so what chooses a model is not what grades it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from lethe.errors import DataError
from lethe.pipeline.context import Context

log = logging.getLogger("lethe")


def validation_images(man, name: str, n: int, eval_n: int) -> tuple[torch.Tensor, int]:
    """The last n images of a held-out shard in id-hash order (evaluation takes the first ones);
    returns them and how many of them evaluation also uses."""
    from lethe.data import read_shard_numpy, to_chw_float

    imgs, _, _ = read_shard_numpy(man, name)
    take = min(n, len(imgs))
    overlap = max(0, min(eval_n, len(imgs)) + take - len(imgs))
    x = torch.from_numpy(to_chw_float(imgs[len(imgs) - take :]).copy())
    return x, overlap


def selection_unavailable(ctx: Context, man) -> str | None:
    """Why the unlearning run cannot score its checkpoints (None: it can)."""
    from lethe.pipeline.oracle_audit import oracle_audit

    cfg = ctx.cfg
    if not cfg.unlearn.keep_best:
        return "unlearn.keep_best is off"
    if cfg.request.kind == "ids":
        # The forget side of the objective would be scored on the requested images themselves,
        # which are also what the forget gate and the membership test grade.
        return "an id request has no held-out forget images to choose on apart from the graded ones"
    if man.shards["heldout_forget"].count < 2 or man.shards["heldout_retain"].count < 2:
        return "fewer than 2 held-out forget or retain images"
    audit = oracle_audit(cfg, man)
    if not audit["audited"]:
        return f"no oracle to compare with ({audit['reason']})"
    return None


def load_models(ctx: Context, arch: dict[str, Any]) -> dict[str, Any]:
    """The original, the oracle and the feature net of this run, loaded on the CPU."""
    from lethe.models.checkpoint import load_checkpoint
    from lethe.pipeline.cleanup import forget_trained_model

    lay, fam = ctx.lay, ctx.cfg.family
    paths: dict[str, Path] = {n: lay.fetch(lay.model(n)) for n in ("original", "oracle")}
    paths["featnet"] = forget_trained_model(lay, "featnet")  # cleanup deleted it: say how to get it back
    models = {
        n: load_checkpoint(paths[n], expected_kind=fam, expected_arch=arch)[0] for n in ("original", "oracle")
    }
    models["featnet"] = load_checkpoint(paths["featnet"], expected_kind="featnet")[0]
    return models


def validation_payload(ctx: Context, man, models: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a run's evaluator needs (lethe.execution.loops: validation images, their features, the
    baselines), and what the report says about the validation set."""
    from lethe.evaluation.reconstruction import features, model_fd

    t, e = ctx.cfg.tune, ctx.cfg.eval
    x_f, overlap_f = validation_images(man, "heldout_forget", t.val_forget, e.n_forget)
    x_r, overlap_r = validation_images(man, "heldout_retain", t.val_retain, e.n_retain)
    if len(x_f) < 2 or len(x_r) < 2:
        raise DataError(
            "too few held-out images to validate on",
            where=ctx.lay.shards_uri,
            expected="at least 2 held-out forget and retain images (class requests)",
            seen=f"{len(x_f)} / {len(x_r)}",
        )
    if overlap_f or overlap_r:
        log.warning(
            "validation images overlap the evaluation images (%d forget, %d retain): "
            "the held-out shards are smaller than eval.n_* + tune.val_*",
            overlap_f,
            overlap_r,
        )
    bs, featnet = e.batch_size, models["featnet"]
    feats_f, feats_r = features(featnet, x_f, bs), features(featnet, x_r, bs)
    baselines = {
        "fd_forget_oracle": model_fd(models["oracle"], featnet, x_f, e.box_frac, feats_f, bs),
        "fd_retain_original": model_fd(models["original"], featnet, x_r, e.box_frac, feats_r, bs),
        "fd_forget_original": model_fd(models["original"], featnet, x_f, e.box_frac, feats_f, bs),
    }
    payload = {
        "featnet_arch": featnet.arch.to_dict(),
        "featnet_state": featnet.state_dict(),
        "x_forget": x_f,
        "x_retain": x_r,
        "forget_feats": feats_f,
        "retain_feats": feats_r,
        "box_frac": e.box_frac,
        "batch_size": bs,
        "retain_weight": t.retain_weight,
        **baselines,
    }
    validation = {
        "forget_count": len(x_f),
        "retain_count": len(x_r),
        "overlaps_evaluation": {"forget": overlap_f, "retain": overlap_r},
    }
    return payload, validation
