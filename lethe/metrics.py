"""Image-quality, feature-space and membership-inference metrics for the evaluate step.

Conventions: image tensors are float in [0, 1] with shape (N, C, H, W), C in {1, 3}. Callers clamp
model outputs to [0, 1] before calling; these functions do not, so that an out-of-range model is
visible in the numbers rather than hidden by a silent clip.

Feature-space distances use the project's own classifier features, so the Frechet distance here
is called FD, never FID (which implies Inception-v3 features and is not comparable).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import scipy.linalg
import scipy.stats
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "psnr",
    "psnr_per_image",
    "ssim",
    "ssim_per_image",
    "embed_cos_per_image",
    "fd_min_samples",
    "frechet_distance",
    "embed_cos",
    "mia_auc",
    "mia_scores_from_errors",
    "masked_mse_per_image",
    "retain_gate_excess",
    "unlearning_objective",
]

PSNR_CAP_DB = 100.0
"""PSNR of identical images is infinite; cap it so means and JSON stay finite."""

_SSIM_WIN = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
# Images per SSIM chunk: five float64 filtered maps per chunk stay around 100 MB even at 64x64x3.
_SSIM_CHUNK = 256


def _check_pair(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.dim() != 4 or target.dim() != 4:
        raise ValueError(
            f"{name}: expected (N,C,H,W) tensors, got shapes {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.shape != target.shape:
        raise ValueError(f"{name}: shape mismatch {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.shape[0] == 0:
        raise ValueError(f"{name}: empty batch")


def psnr(pred: Tensor, target: Tensor) -> float:
    """Mean over images of per-image PSNR in dB (data range 1.0), each capped at 100 dB."""
    return float(psnr_per_image(pred, target).mean())


def psnr_per_image(pred: Tensor, target: Tensor) -> np.ndarray:
    """Per-image PSNR in dB (data range 1.0), each capped at 100 dB: shape (N,)."""
    _check_pair(pred, target, "psnr")
    # float64 so that near-identical images do not round MSE to 0 differently on CPU and GPU.
    diff = pred.detach().double() - target.detach().double()
    mse = diff.pow(2).flatten(1).mean(dim=1)
    per_image = torch.where(
        mse > 0,
        10.0 * torch.log10(1.0 / mse.clamp_min(1e-300)),
        torch.full_like(mse, PSNR_CAP_DB),
    ).clamp_max(PSNR_CAP_DB)
    return per_image.cpu().numpy()


def _gaussian_kernel_1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    radius = (size - 1) // 2
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _ssim_window(h: int, w: int) -> tuple[int, float]:
    """Window 11 / sigma 1.5 normally; for tiny images the largest odd size that fits, sigma scaled.

    Scaling sigma with the window keeps the truncation at ~3.5 sigma, which is what skimage's
    gaussian filter uses, so the result still matches skimage called with the same win_size/sigma.
    """
    side = min(h, w)
    if side >= _SSIM_WIN:
        return _SSIM_WIN, _SSIM_SIGMA
    size = side if side % 2 == 1 else side - 1
    return size, _SSIM_SIGMA * size / _SSIM_WIN


def ssim(pred: Tensor, target: Tensor) -> float:
    """Mean over images of `ssim_per_image`."""
    return float(ssim_per_image(pred, target).mean())


def ssim_per_image(pred: Tensor, target: Tensor) -> np.ndarray:
    """Per-image SSIM (Wang et al. 2004): Gaussian window 11, sigma 1.5, K1=0.01, K2=0.03, data range 1.

    Matches skimage's structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1): skimage filters with reflect padding and then crops
    (win-1)/2 pixels from each border, which is exactly a 'valid' convolution, so no padding is
    needed here. Per image the SSIM map is averaged over pixels and channels, then over images.
    """
    _check_pair(pred, target, "ssim")
    n, c, h, w = pred.shape
    size, sigma = _ssim_window(h, w)
    device = pred.device
    k1d = _gaussian_kernel_1d(size, sigma, torch.float64, device)
    # Depthwise separable filter: one (size x 1) and one (1 x size) pass per channel.
    kv = k1d.view(1, 1, size, 1).repeat(c, 1, 1, 1)
    kh = k1d.view(1, 1, 1, size).repeat(c, 1, 1, 1)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(x, kv, groups=c), kh, groups=c)

    c1 = (_SSIM_K1 * 1.0) ** 2
    c2 = (_SSIM_K2 * 1.0) ** 2
    per_image: list[Tensor] = []
    for start in range(0, n, _SSIM_CHUNK):
        x = pred[start : start + _SSIM_CHUNK].detach().double()
        y = target[start : start + _SSIM_CHUNK].detach().double()
        ux, uy = blur(x), blur(y)
        vx = blur(x * x) - ux * ux
        vy = blur(y * y) - uy * uy
        vxy = blur(x * y) - ux * uy
        num = (2 * ux * uy + c1) * (2 * vxy + c2)
        den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
        per_image.append((num / den).flatten(1).mean(dim=1))
    return torch.cat(per_image).cpu().numpy()


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected features of shape (N, D), got {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 feature rows to fit a Gaussian, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: features contain NaN or inf")
    return arr


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray, eps: float = 1e-6) -> float:
    """Frechet distance (FD) between Gaussians fitted to two (N, D) feature sets.

    FD = ||mu_a - mu_b||^2 + Tr(Sa + Sb - 2 sqrtm(Sa Sb)). As in the reference FID code, when the
    matrix square root is not finite (singular product, e.g. N < D) it is retried with eps*I added
    to both covariances, and numerically tiny imaginary parts are dropped.
    """
    a = _as_features(feats_a, "frechet_distance(feats_a)")
    b = _as_features(feats_b, "frechet_distance(feats_b)")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: feature dims differ ({a.shape[1]} vs {b.shape[1]})")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    # rowvar=False: rows are samples. atleast_2d keeps D == 1 as a 1x1 matrix.
    sa = np.atleast_2d(np.cov(a, rowvar=False))
    sb = np.atleast_2d(np.cov(b, rowvar=False))

    with warnings.catch_warnings():
        # A singular product is expected (few samples, or a feature that never varies) and handled
        # just below; scipy's warning about it would only alarm the person reading the terminal.
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        covmean = scipy.linalg.sqrtm(sa @ sb)
    if not np.isfinite(covmean).all() or (
        np.iscomplexobj(covmean) and np.abs(covmean.imag).max() > 1e-3 * max(1.0, np.abs(covmean).max())
    ):
        offset = np.eye(sa.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sa + offset) @ (sb + offset))
    if not np.isfinite(covmean).all():
        raise ValueError("frechet_distance: matrix square root is not finite even after regularisation")
    if np.iscomplexobj(covmean):
        # Imaginary parts here come from round-off on an (almost) singular product; drop them.
        covmean = covmean.real

    diff = mu_a - mu_b
    fd = float(diff @ diff + np.trace(sa) + np.trace(sb) - 2.0 * np.trace(covmean))
    # A distance is >= 0; identical sets land at about -1e-12 from round-off, report that as 0.
    return max(fd, 0.0)


def fd_min_samples(feature_dim: int) -> int:
    """The fewest images a Frechet distance is reported for: twice the feature dimension.

    FD fits a D-dimensional Gaussian (D means, D(D+1)/2 covariances) to each image set. Below D rows
    the sample covariance is singular and FD measures the regulariser, not the data; at 2D its
    estimate is still biased upwards by about D^2/N but stable enough to compare models on the same
    images. Smaller sets are measured per image instead (PSNR, SSIM, embedding cosine, distance to the
    oracle's output)."""
    return 2 * int(feature_dim)


def embed_cos(feats_pred: np.ndarray, feats_true: np.ndarray) -> float:
    """Mean cosine similarity of paired rows (row i of pred against row i of true)."""
    return float(embed_cos_per_image(feats_pred, feats_true).mean())


def embed_cos_per_image(feats_pred: np.ndarray, feats_true: np.ndarray) -> np.ndarray:
    """Cosine similarity of paired rows (row i of pred against row i of true): shape (N,)."""
    p = np.asarray(feats_pred, dtype=np.float64)
    t = np.asarray(feats_true, dtype=np.float64)
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(f"embed_cos: expected two (N, D) arrays of equal shape, got {p.shape} and {t.shape}")
    if p.shape[0] == 0:
        raise ValueError("embed_cos: empty feature arrays")
    # eps keeps an all-zero feature row at cosine 0 instead of NaN.
    denom = np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1)
    return (p * t).sum(axis=1) / np.maximum(denom, 1e-12)


def mia_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """ROC AUC of "higher score means member", via the Mann-Whitney U statistic.

    Ties get average ranks, i.e. count as half a win, so identical distributions give exactly 0.5.
    0.5 = the attacker cannot tell members from non-members; 1.0 = perfectly separable.
    """
    m = np.asarray(member_scores, dtype=np.float64).ravel()
    nm = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if m.size == 0 or nm.size == 0:
        raise ValueError(f"mia_auc: need members and non-members, got {m.size} and {nm.size}")
    if not (np.isfinite(m).all() and np.isfinite(nm).all()):
        raise ValueError("mia_auc: scores contain NaN or inf")
    ranks = scipy.stats.rankdata(np.concatenate([m, nm]))  # average ranks for ties
    u = ranks[: m.size].sum() - m.size * (m.size + 1) / 2.0
    return float(u / (m.size * nm.size))


def mia_scores_from_errors(errors: np.ndarray) -> np.ndarray:
    """Membership scores from reconstruction errors: lower error => more likely a training member."""
    return -np.asarray(errors, dtype=np.float64)


def masked_mse_per_image(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Per-image MSE over the hidden region only; mask is (N, 1, H, W) float with 1 = hidden.

    The mask is broadcast over channels and may be soft (weights in [0, 1]). Returns shape (N,).
    """
    _check_pair(pred, target, "masked_mse_per_image")
    n, c, h, w = pred.shape
    if mask.dim() != 4 or mask.shape[0] != n or mask.shape[1] != 1 or tuple(mask.shape[2:]) != (h, w):
        raise ValueError(f"masked_mse_per_image: mask must be ({n},1,{h},{w}), got {tuple(mask.shape)}")
    m = mask.detach().to(dtype=torch.float64, device=pred.device)
    weight = m.flatten(1).sum(dim=1) * c
    if bool((weight <= 0).any()):
        # An empty mask would give error 0 and look like a perfect member; refuse instead.
        raise ValueError("masked_mse_per_image: at least one image has an empty mask")
    sq = (pred.detach().double() - target.detach().double()).pow(2) * m
    out_dtype = pred.dtype if pred.is_floating_point() else torch.float32
    return (sq.flatten(1).sum(dim=1) / weight).to(out_dtype)


def unlearning_objective(
    fd_forget: float,
    fd_forget_oracle: float,
    fd_retain: float,
    fd_retain_original: float,
    retain_weight: float = 1.0,
    psnr_drop_db: float | None = None,
    psnr_weight: float = 1.0,
    forget_psnr_gap_db: float | None = None,
    forget_psnr_scale: float = math.log(2.0),
) -> float:
    """Tuning objective, lower is better (0: forgets like the oracle, retain as good as the original).

    |log(FD_forget / FD_forget_oracle)| + retain_weight * max(0, FD_retain / FD_retain_original - 1)
    + psnr_weight * max(0, 10^(psnr_drop_db / 10) - 1)

    The first term is symmetric in log space: forgetting less than the oracle (the model still
    reconstructs the forget class) and more than the oracle (over-forgetting, Varshney & Torra 2025)
    are both penalised. The retain terms only penalise damage, never improvement. The PSNR drop
    (the original's retain PSNR minus the model's) enters as the pixel-error ratio it stands for,
    10^(drop / 10), so both retain terms read "how much worse than the original, as a ratio - 1": the
    feature distance alone misses a blurrier reconstruction that the retain PSNR gate refuses.

    Too few forget images for a Frechet distance (no more than its feature dimension: the covariance
    is singular, FD measures noise) and the gate judges per image: |PSNR - PSNR_oracle| within a
    tolerance. Given `forget_psnr_gap_db` (the model's forget PSNR minus the oracle's), the forget
    term is `forget_psnr_scale` * |gap| instead, the scale putting the PSNR band's edge where the FD
    band's is (ln(1 + x) / tolerance), and the FD arguments are not read.
    """
    eps = 1e-12
    values = (fd_retain, fd_retain_original)
    if forget_psnr_gap_db is None:
        values += (fd_forget, fd_forget_oracle)
    elif not np.isfinite(forget_psnr_gap_db):
        return float("inf")
    if not all(np.isfinite(v) for v in values) or (
        psnr_drop_db is not None and not np.isfinite(psnr_drop_db)
    ):
        return float("inf")
    if forget_psnr_gap_db is None:
        forget_term = abs(float(np.log(max(fd_forget, eps) / max(fd_forget_oracle, eps))))
    else:
        forget_term = forget_psnr_scale * abs(float(forget_psnr_gap_db))
    retain_term = max(0.0, max(fd_retain, 0.0) / max(fd_retain_original, eps) - 1.0)
    psnr_term = 0.0 if psnr_drop_db is None else max(0.0, 10.0 ** (psnr_drop_db / 10.0) - 1.0)
    return forget_term + retain_weight * retain_term + psnr_weight * psnr_term


def retain_gate_excess(
    fd_retain: float,
    fd_retain_original: float,
    psnr_drop_db: float,
    fd_ratio_ceiling: float,
    psnr_drop_ceiling_db: float,
) -> float:
    """How far a model's retain figures pass ceilings set below the retain gates' limits, in the
    objective's units ("a ratio to the original, minus one"): max(0, FD ratio - fd_ratio_ceiling)
    + max(0, 10^(drop / 10) - 10^(ceiling / 10)). 0 inside both ceilings.

    unlearning_objective's retain terms are soft: a step that forgets a little more may pay for a retain
    PSNR drop past the gate's limit, and the gate then refuses the model whatever it forgot. The search
    adds this excess, weighted steeply, so it ranks a model that a retain gate would refuse below one
    that forgets less. The ceilings sit below the limits because validation images are not the
    evaluated ones (lethe.evaluation.selection)."""
    if not all(np.isfinite(v) for v in (fd_retain, fd_retain_original, psnr_drop_db)):
        return float("inf")
    ratio = max(fd_retain, 0.0) / max(fd_retain_original, 1e-12)
    fd_excess = max(0.0, ratio - fd_ratio_ceiling)
    psnr_excess = max(0.0, 10.0 ** (psnr_drop_db / 10.0) - 10.0 ** (psnr_drop_ceiling_db / 10.0))
    return fd_excess + psnr_excess
