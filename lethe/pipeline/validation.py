"""Validation images for choosing among unlearned models: the tuning trials (lethe.pipeline.tune)
and the checkpoints of one unlearning run (best-checkpoint keeping) are scored on them with the tune
objective. They are the last images of the held-out shards in id-hash order, while evaluation takes
the first ones, so what chooses a model is not what grades it."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch

from lethe.errors import DataError
from lethe.pipeline.context import Context

log = logging.getLogger("lethe")
# The fewest validation images per side a checkpoint is chosen on (tune.val_* accept no fewer).
MIN_VALIDATION = 8


def held_back(count: int, eval_n: int, val_n: int) -> int:
    """How many of a held-out shard's `count` images are validation images: up to val_n from its end,
    never more than a fifth of the shard while evaluation could use them (so a small shard still
    has four fifths to grade with), and none of them is ever evaluated (`evaluated`)."""
    spare = max(0, count - eval_n)  # images evaluation does not reach anyway
    return min(val_n, max(spare, count // 5))


def evaluated(count: int, eval_n: int, val_n: int | None) -> int:
    """How many images evaluation takes from the start of a held-out shard (val_n: None when the
    run uses no validation images, so evaluation may take all of them)."""
    reserve = 0 if val_n is None else held_back(count, eval_n, val_n)
    return min(eval_n, count - reserve)


def validation_images(man, name: str, n: int, eval_n: int) -> torch.Tensor:
    """The validation images of a held-out shard: its last images in id-hash order, disjoint from
    the ones evaluation takes from its start (`held_back`)."""
    from lethe.data import read_shard_numpy, to_chw_float

    imgs, _, _ = read_shard_numpy(man, name)
    take = held_back(len(imgs), eval_n, n)
    return torch.from_numpy(to_chw_float(imgs[len(imgs) - take :]).copy())


def uses_validation(cfg, man) -> bool:
    """Does this run choose among models on validation images (tuning, best-checkpoint keeping)?
    Then evaluation leaves them out."""
    return cfg.tune.enabled or selection_unavailable(cfg, man) is None


def held_back_counts(cfg, man) -> dict[str, int] | None:
    """Validation images per held-out shard, which evaluation leaves out (None: the run uses none)."""
    return held_back_sizes(cfg, man) if uses_validation(cfg, man) else None


def held_back_sizes(cfg, man) -> dict[str, int]:
    """Validation images per held-out shard, were the run to use them."""
    e, t = cfg.eval, cfg.tune
    return {
        "forget": held_back(man.shards["heldout_forget"].count, e.n_forget, t.val_forget),
        "retain": held_back(man.shards["heldout_retain"].count, e.n_retain, t.val_retain),
    }


def selection_unavailable(cfg, man) -> str | None:
    """Why the unlearning run cannot score its checkpoints (None: it can)."""
    from lethe.pipeline.oracle_audit import oracle_audit

    if not cfg.unlearn.keep_best:
        return "unlearn.keep_best is off"
    if cfg.request.kind == "ids":
        # The forget side of the objective would be scored on the requested images themselves,
        # which are also what the forget gate and the membership test grade.
        return "an id request has no held-out forget images to choose on apart from the graded ones"
    sizes = held_back_sizes(cfg, man)
    if min(sizes.values()) < MIN_VALIDATION:
        return (
            f"fewer than {MIN_VALIDATION} held-out forget or retain images to validate on beside the "
            f"evaluated ones ({sizes['forget']} / {sizes['retain']})"
        )
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


def evaluator_payload(
    models: dict[str, Any],
    x_f: torch.Tensor,
    x_r: torch.Tensor,
    box_frac: float,
    bs: int,
    retain_weight: float,
    border_frac: float | None = None,
    psnr_weight: float = 1.0,
    forget_psnr_scale: float = math.log(2.0),
    retain_ceilings: tuple[float, float] | None = None,
    gate_weight: float = 0.0,
) -> dict[str, Any]:
    """What the run's evaluator (lethe.evaluation.selection) needs: the validation images
    (N, C, H, W), their features, the feature net, and per mask (the centre box; the outpainting
    border when border_frac is given, as the gates judge both) the baselines the objective compares
    with: the oracle's and the original's forget FD and PSNR, the original's retain FD and PSNR.
    models: original, oracle, featnet.

    With no more forget images than the feature net has dimensions (FD's covariance is singular: a
    distance of noise), the objective's forget term is the PSNR gap to the oracle instead, scaled by
    `forget_psnr_scale` (the gate's own per-image measure for small sets).

    retain_ceilings (retain FD ratio to the original, retain PSNR drop in dB): past them a model pays
    `gate_weight` per unit of lethe.metrics.retain_gate_excess on top of the objective."""
    from lethe.evaluation.reconstruction import features, model_scores

    featnet = models["featnet"]
    feats_f, feats_r = features(featnet, x_f, bs), features(featnet, x_r, bs)
    payload: dict[str, Any] = {
        "featnet_arch": featnet.arch.to_dict(),
        "featnet_state": featnet.state_dict(),
        "x_forget": x_f,
        "x_retain": x_r,
        "forget_feats": feats_f,
        "retain_feats": feats_r,
        "box_frac": box_frac,
        "border_frac": border_frac,
        "batch_size": bs,
        "retain_weight": retain_weight,
        "psnr_weight": psnr_weight,
        "forget_measure": "fd" if len(x_f) > feats_f.shape[1] else "psnr",
        "forget_psnr_scale": forget_psnr_scale,
        "retain_ceilings": retain_ceilings,
        "gate_weight": gate_weight,
    }
    for kind, frac, prefix in (("box", box_frac, ""), ("border", border_frac, "border_")):
        if frac is None:
            continue
        fd_r, psnr_r = model_scores(models["original"], featnet, x_r, frac, feats_r, bs, kind=kind)
        payload[prefix + "fd_retain_original"], payload[prefix + "psnr_retain_original"] = fd_r, psnr_r
        for who in ("oracle", "original"):
            fd_f, psnr_f = model_scores(models[who], featnet, x_f, frac, feats_f, bs, kind=kind)
            payload[f"{prefix}fd_forget_{who}"], payload[f"{prefix}psnr_forget_{who}"] = fd_f, psnr_f
    return payload


def validation_payload(ctx: Context, man, models: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a run's evaluator needs (lethe.execution.loops: validation images, their features, the
    baselines), and what the report says about the validation set."""
    t, e = ctx.cfg.tune, ctx.cfg.eval
    x_f = validation_images(man, "heldout_forget", t.val_forget, e.n_forget)
    x_r = validation_images(man, "heldout_retain", t.val_retain, e.n_retain)
    if len(x_f) < 2 or len(x_r) < 2:
        raise DataError(
            "too few held-out images to validate on",
            where=ctx.lay.shards_uri,
            expected="at least 2 held-out forget and retain images beside the evaluated ones (class "
            "requests; a fifth of a small held-out shard)",
            seen=f"{len(x_f)} / {len(x_r)}",
        )
    border = e.outpaint_frac if e.outpaint else None
    g = ctx.cfg.gates
    payload = evaluator_payload(
        models,
        x_f,
        x_r,
        e.box_frac,
        e.batch_size,
        t.retain_weight,
        border,
        t.psnr_weight,
        # the PSNR band's edge costs what the FD band's does: ln(1 + x) at the tolerance
        math.log1p(g.forget_oracle_tol) / g.forget_psnr_tol_db,
        # a model one retain gate refuses is not promoted however well it forgets
        (1.0 + t.gate_margin * g.retain_fd_tol, t.gate_margin * g.retain_psnr_drop_db),
        t.gate_weight,
    )
    # Disjoint from the evaluated images by construction (held_back / evaluated).
    validation = {
        "forget_count": len(x_f),
        "retain_count": len(x_r),
        "disjoint_from_evaluation": True,
        "forget_measure": payload["forget_measure"],
    }
    return payload, validation
