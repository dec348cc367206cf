"""Feature unlearning for pretrained GANs and VAEs (Moon, Cho, Kim, AAAI 2024; DESIGN.md 2.3).

Plain PyTorch: no Ray, MLflow or storage imports. The execution layer samples latents per step from
a seeded generator and calls `latent_feature_loss`; nothing here needs training data.

Sign of the target direction: z_e = mean(latents whose sample HAS the feature) - mean(latents whose
sample has not). The seed summary writes the opposite difference, but then "z contains the feature
when proj(z) >= t" would select the latents *without* it; the paper's own notes (and DESIGN.md 2.3)
use positives minus negatives, so a larger projection means "more of the feature" and moving z back
to the threshold along -z_e removes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pytorch_msssim import ms_ssim
from torch import Tensor

# The standard 5-scale MS-SSIM weights (Wang et al. 2003), coarsest last.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# Gaussian window of the per-scale SSIM. 11 px (the default) is wider than a 32x32 image's coarse
# scales; 3 px keeps every scale meaningful down to 8x8.
MS_SSIM_WIN = 3
# pytorch_msssim asserts min(H, W) > (win - 1) * 2**4 whatever the number of scales; images are
# upsampled (nearest, an integer factor) to pass it. Nearest upsampling keeps every pixel value, so
# the scales compared are the native image's, each seen through a slightly wider window.
_MS_SSIM_MIN_SIDE = (MS_SSIM_WIN - 1) * 2**4 + 1
# Coarsest scale kept: the smallest scale must still be at least this many native pixels a side.
_MS_SSIM_COARSEST = 8


@dataclass(frozen=True)
class FeatureDirection:
    """The target feature's direction in latent space and the projection threshold."""

    z_e: Tensor  # (latent_dim,) = mean(positives) - mean(negatives)
    threshold: float  # mean projection over all labelled latents
    n_pos: int
    n_neg: int

    @property
    def unit(self) -> Tensor:
        return self.z_e / self.z_e.norm()

    def to_dict(self) -> dict[str, object]:
        return {
            "z_e": [float(v) for v in self.z_e],
            "threshold": self.threshold,
            "n_pos": self.n_pos,
            "n_neg": self.n_neg,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> FeatureDirection:
        return cls(torch.tensor(d["z_e"], dtype=torch.float32), float(d["threshold"]), d["n_pos"], d["n_neg"])


def projection(z: Tensor, z_e: Tensor) -> Tensor:
    """proj(z) = z_e . z / ||z_e||: (B,) for z of shape (B, d)."""
    return z @ z_e.to(z) / z_e.norm()


def feature_direction(z: Tensor, positive: Tensor) -> FeatureDirection:
    """z_e = mean(z[positive]) - mean(z[~positive]); t = mean of proj(z) over all labelled z.

    Raises when either side is empty: no direction can be estimated (the generator never, or
    always, produces the feature according to the labeller).
    """
    positive = positive.bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"need labelled latents on both sides to find the feature direction; got {n_pos} with the "
            f"feature and {n_neg} without (sample more latents, or check the feature classifier)"
        )
    z = z.float()
    z_e = z[positive].mean(0) - z[~positive].mean(0)
    if float(z_e.norm()) == 0.0:
        raise ValueError("positive and negative latents have the same mean: the direction is undefined")
    t = float(projection(z, z_e).mean())
    return FeatureDirection(z_e=z_e, threshold=t, n_pos=n_pos, n_neg=n_neg)


def has_feature(z: Tensor, d: FeatureDirection) -> Tensor:
    """z contains the feature when proj(z) >= t: (B,) bool."""
    return projection(z, d.z_e) >= d.threshold


def remove_feature(z: Tensor, d: FeatureDirection) -> Tensor:
    """z_hat = z - (proj(z) - t) * z_e/||z_e|| where proj(z) >= t; other latents are returned as they
    are. z_hat projects exactly onto the threshold and keeps every component orthogonal to z_e."""
    p = projection(z, d.z_e)
    shift = (p - d.threshold).clamp_min(0.0)  # zero where the feature is absent
    return z - shift[:, None] * d.unit.to(z)


def ms_ssim_levels(height: int, width: int) -> int:
    """Scales whose coarsest level is still >= 8 native pixels a side, between 1 and 5
    (28x28: 2, 32x32: 3, 64x64: 4)."""
    side = min(height, width)
    return max(1, min(len(MS_SSIM_WEIGHTS), 1 + int(math.floor(math.log2(side / _MS_SSIM_COARSEST)))))


def ms_ssim_weights(levels: int) -> list[float]:
    """The first `levels` standard weights, renormalised to sum to 1 (fine scales first)."""
    w = MS_SSIM_WEIGHTS[:levels]
    s = sum(w)
    return [v / s for v in w]


def ms_ssim_value(a: Tensor, b: Tensor, levels: int | None = None) -> Tensor:
    """Per-image MS-SSIM of images in [0, 1] (B, C, H, W) -> (B,), in [0, 1] (pytorch_msssim clips
    negative contrast terms to 0)."""
    levels = levels or ms_ssim_levels(a.shape[-2], a.shape[-1])
    side = min(a.shape[-2:])
    k = max(1, -(-_MS_SSIM_MIN_SIDE // side))
    if k > 1:
        a, b = (
            F.interpolate(a, scale_factor=k, mode="nearest"),
            F.interpolate(b, scale_factor=k, mode="nearest"),
        )
    return ms_ssim(
        a, b, data_range=1.0, size_average=False, win_size=MS_SSIM_WIN, weights=ms_ssim_weights(levels)
    )


@dataclass
class LossParts:
    total: Tensor
    recon: float  # L1 toward f(z) on latents without the feature
    unlearn: float  # L1 toward f(z_hat) on latents with it
    perceptual: float  # 1 - MS-SSIM toward f(z_hat) on latents with it
    pos_share: float  # share of the batch's latents with the feature

    def as_dict(self) -> dict[str, float]:
        return {
            "recon": self.recon,
            "unlearn": self.unlearn,
            "perceptual": self.perceptual,
            "pos_share": self.pos_share,
        }


def combine(recon: Tensor, unlearn: Tensor, perceptual: Tensor, alpha: float) -> Tensor:
    """Total = alpha * (unlearn + perceptual) + recon (DESIGN.md 2.3)."""
    return alpha * (unlearn + perceptual) + recon


def latent_feature_loss(
    g: Callable[[Tensor], Tensor],
    f: Callable[[Tensor], Tensor],
    z: Tensor,
    d: FeatureDirection,
    alpha: float,
    levels: int | None = None,
) -> LossParts:
    """One step's loss for the generator being unlearned `g` against the frozen original `f`.

    g is called once on the whole batch (one forward per backward, as DDP expects); f is called once
    on [z where the feature is absent, z_hat where present] under no_grad. Terms are means over their
    own subset, 0 when the subset is empty.
    """
    pos = has_feature(z, d)
    with torch.no_grad():
        target = f(torch.where(pos[:, None], remove_feature(z, d), z))
    out = g(z)
    zero = out.sum() * 0.0  # keeps the graph (and DDP's bookkeeping) when a subset is empty
    neg = ~pos
    recon = (out[neg] - target[neg]).abs().mean() if bool(neg.any()) else zero
    if bool(pos.any()):
        unlearn = (out[pos] - target[pos]).abs().mean()
        perceptual = (1.0 - ms_ssim_value(out[pos].clamp(0, 1), target[pos].clamp(0, 1), levels)).mean()
    else:
        unlearn = perceptual = zero
    total = combine(recon, unlearn, perceptual, alpha)
    return LossParts(
        total=total,
        recon=float(recon.detach()),
        unlearn=float(unlearn.detach()),
        perceptual=float(perceptual.detach()),
        pos_share=float(pos.float().mean()),
    )
