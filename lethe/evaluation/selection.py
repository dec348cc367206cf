"""Scoring a model on validation images, to choose among models (tuning trials, the checkpoints of
one unlearning run): the tune objective under each mask the gates judge, the worst of them. Every
mask's gates must pass for a promotion, so a model close to the oracle under one mask and far off under
the other is worse than one moderately close under both (a mean would rank them the other way).

Plain PyTorch / NumPy: it runs inside Ray Train workers. The payload (lethe.pipeline.validation)
holds the validation images, their features, the feature net's output and the baselines per mask.
"""

from __future__ import annotations

from typing import Any

from lethe.metrics import retain_gate_excess, unlearning_objective

# Per mask: the payload key of its share of each side, and the prefix of its baselines
# ("" for the centre box, the headline mask; "border_" for outpainting).
MASKS = {"box": ("box_frac", ""), "border": ("border_frac", "border_")}


def masks_of(p: dict[str, Any]) -> list[str]:
    """The masks a payload scores: the box always, the border when it carries one."""
    return [m for m, (frac, _) in MASKS.items() if p.get(frac) is not None]


def _objective(
    p: dict[str, Any], prefix: str, fd_f: float, psnr_f: float, fd_r: float, psnr_r: float
) -> float:
    # too few forget images for FD: per image, as the gate then judges
    psnr = {
        "forget_psnr_gap_db": psnr_f - p[f"{prefix}psnr_forget_oracle"],
        "forget_psnr_scale": p["forget_psnr_scale"],
    }
    drop = p[f"{prefix}psnr_retain_original"] - psnr_r
    score = unlearning_objective(
        fd_f,
        p[f"{prefix}fd_forget_oracle"],
        fd_r,
        p[f"{prefix}fd_retain_original"],
        p["retain_weight"],
        drop,
        p["psnr_weight"],
        **(psnr if p.get("forget_measure") == "psnr" else {}),
    )
    ceilings = p.get("retain_ceilings")  # (FD ratio, PSNR drop in dB), below the retain gates' limits
    if ceilings is None or not p.get("gate_weight"):
        return score
    excess = retain_gate_excess(fd_r, p[f"{prefix}fd_retain_original"], drop, *ceilings)
    return score + p["gate_weight"] * excess


def source_objective(p: dict[str, Any]) -> float:
    """What the untouched source scores (doing nothing), from the payload's baselines."""
    parts = []
    for m in masks_of(p):
        pre = MASKS[m][1]
        parts.append(
            _objective(
                p,
                pre,
                p[f"{pre}fd_forget_original"],
                p[f"{pre}psnr_forget_original"],
                p[f"{pre}fd_retain_original"],
                p[f"{pre}psnr_retain_original"],
            )
        )
    return max(parts)


def validation_scores(model, featnet, p: dict[str, Any]) -> dict[str, float]:
    """The objective of `model` (the worst mask's), the box's FD figures and retain PSNR drop, and
    each mask's objective."""
    from lethe.evaluation.reconstruction import model_scores

    bs, out, parts = p["batch_size"], {}, []
    for m in masks_of(p):
        frac_key, prefix = MASKS[m]
        fd_f, psnr_f = model_scores(model, featnet, p["x_forget"], p[frac_key], p["forget_feats"], bs, kind=m)
        fd_r, psnr_r = model_scores(model, featnet, p["x_retain"], p[frac_key], p["retain_feats"], bs, kind=m)
        parts.append(_objective(p, prefix, fd_f, psnr_f, fd_r, psnr_r))
        out[f"objective_{m}"] = parts[-1]
        if m == "box":
            out.update(
                fd_forget=fd_f,
                fd_retain=fd_r,
                fd_forget_vs_oracle=fd_f / max(p["fd_forget_oracle"], 1e-12),
                fd_retain_vs_original=fd_r / max(p["fd_retain_original"], 1e-12),
                psnr_retain_drop=p["psnr_retain_original"] - psnr_r,
            )
    return {"objective": max(parts), **out}
