"""Scoring a model on validation images, to choose among models (tuning trials, the checkpoints of
one unlearning run): the tune objective under each mask the gates judge, averaged.

Plain PyTorch / NumPy: it runs inside Ray Train workers. The payload (lethe.pipeline.validation)
holds the validation images, their features, the feature net's output and the baselines per mask.
"""

from __future__ import annotations

from typing import Any

from lethe.metrics import unlearning_objective

# Per mask: the payload key of its share of each side, and the prefix of its baselines
# ("" for the centre box, the headline mask; "border_" for outpainting).
MASKS = {"box": ("box_frac", ""), "border": ("border_frac", "border_")}


def masks_of(p: dict[str, Any]) -> list[str]:
    """The masks a payload scores: the box always, the border when it carries one."""
    return [m for m, (frac, _) in MASKS.items() if p.get(frac) is not None]


def _objective(p: dict[str, Any], prefix: str, fd_f: float, fd_r: float) -> float:
    return unlearning_objective(
        fd_f, p[f"{prefix}fd_forget_oracle"], fd_r, p[f"{prefix}fd_retain_original"], p["retain_weight"]
    )


def source_objective(p: dict[str, Any]) -> float:
    """What the untouched source scores (doing nothing), from the payload's baselines."""
    parts = [
        _objective(
            p, MASKS[m][1], p[f"{MASKS[m][1]}fd_forget_original"], p[f"{MASKS[m][1]}fd_retain_original"]
        )
        for m in masks_of(p)
    ]
    return sum(parts) / len(parts)


def validation_scores(model, featnet, p: dict[str, Any]) -> dict[str, float]:
    """The objective of `model` (mean over the masks), the box's FD figures, and each mask's objective."""
    from lethe.evaluation.reconstruction import model_fd

    bs, out, parts = p["batch_size"], {}, []
    for m in masks_of(p):
        frac_key, prefix = MASKS[m]
        fd_f = model_fd(model, featnet, p["x_forget"], p[frac_key], p["forget_feats"], bs, kind=m)
        fd_r = model_fd(model, featnet, p["x_retain"], p[frac_key], p["retain_feats"], bs, kind=m)
        parts.append(_objective(p, prefix, fd_f, fd_r))
        out[f"objective_{m}"] = parts[-1]
        if m == "box":
            out.update(
                fd_forget=fd_f,
                fd_retain=fd_r,
                fd_forget_vs_oracle=fd_f / max(p["fd_forget_oracle"], 1e-12),
                fd_retain_vs_original=fd_r / max(p["fd_retain_original"], 1e-12),
            )
    return {"objective": sum(parts) / len(parts), **out}
