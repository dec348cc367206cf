"""Feature unlearning math (DESIGN.md 2.3): direction, threshold, z_hat, loss terms, PGD attack."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from lethe.evaluation.samples import AttackSpec, class_score, feature_logit, pgd_attack
from lethe.methods.latent_feature import (
    FeatureDirection,
    combine,
    feature_direction,
    has_feature,
    latent_feature_loss,
    ms_ssim_levels,
    ms_ssim_value,
    projection,
    remove_feature,
)
from lethe.models import GAN, VAE, GANArch, VAEArch


def _synthetic(n: int = 4000, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents labelled by a hidden direction: positive where z . u > 0.3."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u = u / u.norm()
    z = torch.randn(n, d, generator=g)
    return z, (z @ u > 0.3), u


def test_direction_recovers_the_labelling_direction_with_the_positive_sign() -> None:
    z, pos, u = _synthetic()
    d = feature_direction(z, pos)
    cos = float(d.z_e @ u / d.z_e.norm())
    assert cos > 0.95  # positives minus negatives points toward the feature, not away from it
    assert (d.n_pos, d.n_neg) == (int(pos.sum()), int((~pos).sum()))


def test_threshold_is_the_mean_projection_over_all_labelled_latents() -> None:
    z, pos, _ = _synthetic()
    d = feature_direction(z, pos)
    expected = float((z @ d.z_e / d.z_e.norm()).mean())
    assert d.threshold == pytest.approx(expected, abs=1e-5)
    assert torch.allclose(projection(z, d.z_e), z @ d.z_e / d.z_e.norm(), atol=1e-5)


def test_direction_on_exact_means() -> None:
    z = torch.tensor([[2.0, 0.0], [4.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    d = feature_direction(z, torch.tensor([True, True, False, False]))
    assert torch.allclose(d.z_e, torch.tensor([3.0, 0.0]))
    assert d.threshold == pytest.approx(1.5)  # projections 2, 4, 0, 0


def test_z_hat_lands_on_the_threshold_and_keeps_the_orthogonal_part() -> None:
    z, pos, _ = _synthetic()
    d = feature_direction(z, pos)
    zh = remove_feature(z, d)
    flagged = has_feature(z, d)
    assert flagged.any() and (~flagged).any()
    assert torch.allclose(
        projection(zh[flagged], d.z_e), torch.full((int(flagged.sum()),), d.threshold), atol=1e-4
    )
    assert torch.equal(zh[~flagged], z[~flagged])  # latents without the feature are untouched
    orth = (z - zh) - ((z - zh) @ d.unit)[:, None] * d.unit
    assert float(orth.abs().max()) < 1e-5


def test_direction_needs_both_sides() -> None:
    z = torch.randn(10, 4)
    with pytest.raises(ValueError, match="both sides"):
        feature_direction(z, torch.ones(10, dtype=torch.bool))


def test_direction_round_trips_through_plain_values() -> None:
    z, pos, _ = _synthetic(200, 8)
    d = feature_direction(z, pos)
    back = FeatureDirection.from_dict(d.to_dict())
    assert torch.allclose(back.z_e, d.z_e) and back.threshold == d.threshold


def _gen(seed: int = 0) -> GAN:
    torch.manual_seed(seed)
    return GAN(GANArch(32, 32, 3, latent_dim=8, ch=8, disc_ch=8)).eval()


def test_recon_term_is_zero_when_g_equals_f_on_latents_without_the_feature() -> None:
    f = _gen()
    g = copy.deepcopy(f)
    z, pos, _ = _synthetic(64, 8)
    d = feature_direction(z, pos)
    parts = latent_feature_loss(g.sample, f.sample, z, d, alpha=0.5)
    assert parts.recon == pytest.approx(0.0, abs=1e-7)
    assert parts.unlearn > 0  # g(z) != f(z_hat) where the feature is present
    assert 0.0 < parts.pos_share < 1.0


def test_ms_ssim_term_is_bounded_and_zero_on_identical_images() -> None:
    a, b = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    v = ms_ssim_value(a, b)
    assert v.shape == (4,)
    assert bool(((1 - v) >= 0).all() and ((1 - v) <= 2).all())
    assert torch.allclose(ms_ssim_value(a, a), torch.ones(4), atol=1e-5)
    assert ms_ssim_value(torch.rand(2, 1, 28, 28), torch.rand(2, 1, 28, 28)).shape == (2,)


def test_ms_ssim_scales_follow_the_image_size() -> None:
    assert [ms_ssim_levels(s, s) for s in (8, 16, 28, 32, 64)] == [1, 2, 2, 3, 4]


def test_alpha_weights_the_unlearning_terms_only() -> None:
    r, u, p = torch.tensor(0.3), torch.tensor(0.5), torch.tensor(0.2)
    assert float(combine(r, u, p, 0.0)) == pytest.approx(0.3)
    assert float(combine(r, u, p, 2.0)) == pytest.approx(0.3 + 2 * 0.7)
    f, g = _gen(0), _gen(1)
    z, pos, _ = _synthetic(32, 8)
    d = feature_direction(z, pos)
    a = latent_feature_loss(g.sample, f.sample, z, d, alpha=1.0)
    b = latent_feature_loss(g.sample, f.sample, z, d, alpha=3.0)
    assert float((b.total - a.total).detach()) == pytest.approx(2 * (a.unlearn + a.perceptual), rel=1e-4)


def test_loss_trains_the_generator_only_through_g() -> None:
    f, g = _gen(0), _gen(1)
    z, pos, _ = _synthetic(32, 8)
    parts = latent_feature_loss(g.sample, f.sample, z, feature_direction(z, pos), alpha=1.0)
    parts.total.backward()
    assert any(p.grad is not None for p in g.gen.parameters())
    assert all(p.grad is None for p in f.parameters())


class _Brightness(nn.Module):
    """A feature classifier: the feature is a bright image (logit_1 - logit_0 = 20 * (mean - 0.5))."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.w * (x.mean((1, 2, 3)) - 0.5)
        return torch.stack([-s, s], dim=1)


def test_pgd_attack_increases_the_feature_score_on_the_original_model() -> None:
    torch.manual_seed(0)
    model = VAE(VAEArch(16, 16, 1, latent_dim=8, ch=8)).eval()
    clf = _Brightness()
    z0 = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    before = feature_logit(clf, model.sample(z0)).detach()
    res = pgd_attack(model, clf, z0, AttackSpec(eps=1.0, step=0.1, steps=10, n=16))
    assert res.mean_logit > float(before.mean())
    assert bool((res.best_logit >= before - 1e-6).all())  # best-so-far never loses the start
    assert float((res.best_z - z0).abs().max()) <= 1.0 + 1e-6  # stays inside the L_inf ball
    assert all(p.requires_grad for p in model.parameters())  # the attack leaves models as it found them


def test_class_score_bounds() -> None:
    one_hot = np.eye(4)[np.arange(100) % 4]
    assert class_score(one_hot) == pytest.approx(4.0, rel=1e-6)
    assert class_score(np.full((50, 4), 0.25)) == pytest.approx(1.0)
