"""lethe.metrics against closed-form values and reference implementations (skimage)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lethe.metrics import (
    embed_cos,
    frechet_distance,
    masked_mse_per_image,
    mia_auc,
    mia_scores_from_errors,
    psnr,
    ssim,
)


def _smooth_images(n: int, c: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Random-ish images with structure (blurred noise + gradient), so SSIM is not trivially ~0."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, c, h // 4 + 1, w // 4 + 1, generator=g)
    up = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    ramp = torch.linspace(0, 0.3, w).view(1, 1, 1, w)
    return (0.7 * up + ramp).clamp(0, 1)


# --- PSNR ---------------------------------------------------------------------------------------


def test_psnr_identical_is_capped_at_100() -> None:
    x = torch.rand(3, 1, 28, 28)
    assert psnr(x, x.clone()) == 100.0


def test_psnr_known_noise_matches_formula() -> None:
    target = torch.full((1, 1, 8, 8), 0.5)
    sign = torch.ones(1, 1, 8, 8)
    sign[..., ::2, :] = -1
    pred = target + 0.1 * sign  # every pixel off by exactly 0.1 -> MSE 0.01 -> 20 dB
    assert psnr(pred, target) == pytest.approx(20.0, abs=1e-4)


def test_psnr_is_mean_of_per_image_values() -> None:
    target = torch.full((2, 3, 4, 4), 0.5)
    pred = target.clone()
    pred[0] += 0.1  # MSE 1e-2 -> 20 dB
    pred[1] += 0.01  # MSE 1e-4 -> 40 dB
    # Mean of per-image PSNR (30), not PSNR of the mean MSE (~23).
    assert psnr(pred, target) == pytest.approx(30.0, abs=1e-3)
    expected = np.mean([10 * math.log10(1 / 1e-2), 10 * math.log10(1 / 1e-4)])
    assert psnr(pred, target) == pytest.approx(expected, abs=1e-3)


def test_psnr_rejects_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 9))


# --- SSIM ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage(channels: int) -> None:
    from skimage.metrics import structural_similarity

    target = _smooth_images(4, channels, 28, 28, seed=0)
    noise = torch.randn(target.shape, generator=torch.Generator().manual_seed(1))
    pred = (target + 0.08 * noise).clamp(0, 1)
    ours = ssim(pred, target)
    refs = [
        structural_similarity(
            pred[i].numpy().astype(np.float64),
            target[i].numpy().astype(np.float64),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1,
            channel_axis=0,
        )
        for i in range(pred.shape[0])
    ]
    assert 0.1 < ours < 0.99  # a real, non-degenerate comparison
    assert ours == pytest.approx(float(np.mean(refs)), abs=1e-3)


def test_ssim_small_image_uses_smaller_window() -> None:
    from skimage.metrics import structural_similarity

    # 8x8 -> window 7 with sigma scaled to 1.5 * 7 / 11.
    target = _smooth_images(2, 1, 8, 8, seed=2)
    pred = (target + 0.05 * torch.randn(target.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    refs = [
        structural_similarity(
            pred[i, 0].numpy().astype(np.float64),
            target[i, 0].numpy().astype(np.float64),
            gaussian_weights=True,
            sigma=1.5 * 7 / 11,
            win_size=7,
            use_sample_covariance=False,
            data_range=1,
        )
        for i in range(2)
    ]
    assert ssim(pred, target) == pytest.approx(float(np.mean(refs)), abs=1e-3)


def test_ssim_identical_is_one() -> None:
    x = _smooth_images(2, 3, 16, 16, seed=4)
    assert ssim(x, x.clone()) == pytest.approx(1.0, abs=1e-9)


# --- Frechet distance ---------------------------------------------------------------------------


def test_fd_same_sample_is_zero() -> None:
    a = np.random.default_rng(0).normal(size=(400, 8))
    assert frechet_distance(a, a.copy()) == pytest.approx(0.0, abs=1e-6)


def test_fd_mean_shift_adds_squared_norm() -> None:
    a = np.random.default_rng(1).normal(size=(400, 8))
    shift = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0, 0.0, 0.25])
    # b = a + shift has exactly the same covariance, so FD is just ||shift||^2.
    assert frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6, abs=1e-6)


def test_fd_grows_with_shift_and_is_symmetric() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(300, 6)), rng.normal(size=(300, 6))
    small, big = frechet_distance(a, b + 0.5), frechet_distance(a, b + 2.0)
    assert 0 < small < big
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)


def test_fd_singular_covariance_is_finite() -> None:
    # Fewer samples than dimensions: singular covariances, the eps*I fallback path.
    rng = np.random.default_rng(3)
    fd = frechet_distance(rng.normal(size=(5, 16)), rng.normal(size=(5, 16)))
    assert math.isfinite(fd) and fd >= 0


def test_fd_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="dims differ"):
        frechet_distance(np.zeros((3, 4)), np.zeros((3, 5)))


# --- embedding cosine ---------------------------------------------------------------------------


def test_embed_cos_paired_rows() -> None:
    t = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    p = np.array([[2.0, 0.0], [0.0, -1.0], [3.0, -3.0]])  # cos 1, -1, 0
    assert embed_cos(p, t) == pytest.approx(0.0, abs=1e-12)
    assert embed_cos(t, t) == pytest.approx(1.0)
    assert embed_cos(np.zeros((2, 3)), np.ones((2, 3))) == 0.0  # zero rows: 0, not NaN


# --- membership inference -----------------------------------------------------------------------


def test_mia_auc_separated_and_reversed() -> None:
    members, nonmembers = np.array([5.0, 6.0, 7.0]), np.array([1.0, 2.0])
    assert mia_auc(members, nonmembers) == 1.0
    assert mia_auc(nonmembers, members) == 0.0


def test_mia_auc_same_distribution_is_half() -> None:
    x = np.random.default_rng(0).normal(size=200)
    assert mia_auc(x, x.copy()) == 0.5
    rng = np.random.default_rng(1)
    assert mia_auc(rng.normal(size=2000), rng.normal(size=2000)) == pytest.approx(0.5, abs=0.03)


def test_mia_auc_ties_count_half() -> None:
    assert mia_auc(np.ones(4), np.ones(3)) == 0.5
    # Pairs: (2,1)=1, (2,0)=1, (1,1)=0.5, (1,0)=1 -> 3.5 / 4.
    assert mia_auc(np.array([2.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(0.875)


def test_mia_auc_matches_pairwise_definition() -> None:
    # AUC = P(member score > non-member score) + 0.5 P(equal), counted over all pairs.
    rng = np.random.default_rng(5)
    m = np.round(rng.normal(0.3, 1, size=150), 1)  # rounding makes plenty of ties
    nm = np.round(rng.normal(0.0, 1, size=120), 1)
    diff = m[:, None] - nm[None, :]
    ref = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert mia_auc(m, nm) == pytest.approx(ref, abs=1e-12)


def test_mia_scores_from_errors_lower_error_means_member() -> None:
    errors_members, errors_nonmembers = np.array([0.01, 0.02]), np.array([0.5, 0.4])
    np.testing.assert_array_equal(mia_scores_from_errors(errors_members), -errors_members)
    auc = mia_auc(mia_scores_from_errors(errors_members), mia_scores_from_errors(errors_nonmembers))
    assert auc == 1.0


def test_mia_auc_rejects_empty() -> None:
    with pytest.raises(ValueError):
        mia_auc(np.array([]), np.array([1.0]))


# --- masked MSE ---------------------------------------------------------------------------------


def test_masked_mse_only_counts_hidden_region() -> None:
    target = torch.zeros(2, 3, 6, 6)
    mask = torch.zeros(2, 1, 6, 6)
    mask[:, :, 2:4, 2:4] = 1.0
    pred = target.clone()
    pred[0] += 0.5 * (1 - mask[0])  # error only outside the hole -> 0
    pred[1] += 0.3 * mask[1]  # error 0.3 everywhere inside the hole -> 0.09
    out = masked_mse_per_image(pred, target, mask)
    assert out.shape == (2,)
    assert out[0].item() == pytest.approx(0.0)
    assert out[1].item() == pytest.approx(0.09, rel=1e-5)


def test_masked_mse_rejects_empty_or_misshaped_mask() -> None:
    x = torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="empty mask"):
        masked_mse_per_image(x, x, torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="mask must be"):
        masked_mse_per_image(x, x, torch.ones(2, 3, 4, 4))
