"""Unlearning methods for image-to-image families, one interface (DESIGN.md 2.1).

A method says which part of the student it trains ("encoder" or "full") and computes one loss from a
retain batch and a forget batch that share one mask. Methods only use the family interface
(lethe/models/layers.py `I2IModel`): `model(x, mask, mode="encode" | "predict", seed=...)`,
`encoder_parameters()`, `full_parameters()`, `forget_partner()`; no per-family branches.

Student calls go through `student(...)` exactly once per step, on the retain and forget batches
concatenated, so DDP sees one forward per backward. Teacher calls use the same concatenated layout
and the same `seed`, so a stochastic family (diffusion: random timestep and noise) corrupts a
sample identically for student and teacher, and an untouched student matches its teacher exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lethe.models.layers import masked_mse

Part = Literal["encoder", "full"]


def matched_noise(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Noise images matched to the batch's pixel statistics, clamped to the valid range (authors' code)."""
    if kind == "gaussian":
        n = torch.randn(x.shape, generator=generator, device="cpu").to(x.device) * x.std() + x.mean()
    elif kind == "uniform":
        n = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
    elif kind == "constant":
        n = torch.full_like(x, float(x.mean()))
    else:
        raise ValueError(f"unknown noise kind {kind!r}")
    return n.clamp(0.0, 1.0)


@dataclass
class Batch:
    x_r: torch.Tensor  # (B_r, C, H, W) retain images
    x_f: torch.Tensor  # (B_f, C, H, W) forget images
    mask: torch.Tensor  # (1 or B_r + B_f, 1, H, W); an image and its noise partner share one T
    generator: torch.Generator


class Method:
    name: str = ""
    trains: Part = "encoder"
    uses_alpha: bool = True

    def trainable_parameters(self, student: nn.Module) -> list[nn.Parameter]:
        """Freeze what the method must not touch; return what the optimiser gets."""
        model = _unwrap(student)
        chosen = model.full_parameters() if self.trains == "full" else model.encoder_parameters()
        ids = {id(p) for p in chosen}
        for p in model.parameters():
            p.requires_grad_(id(p) in ids)
        return [p for p in model.parameters() if id(p) in ids]

    def loss(
        self, student: nn.Module, teacher: nn.Module, b: Batch, alpha: float
    ) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError


def _masks(b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks for the retain and forget halves: b.mask is (1,1,H,W) or (B_r + B_f, 1, H, W)."""
    n_r, n_f = len(b.x_r), len(b.x_f)
    m = b.mask.expand(n_r + n_f, -1, -1, -1) if b.mask.shape[0] == 1 else b.mask
    return m[:n_r], m[n_r:]


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP


def _seed(b: Batch) -> int:
    """One randomness key per step, shared by the student and teacher calls."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=b.generator))


def _both(
    model: nn.Module, b: Batch, mode: str, seed: int, x_f: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One call on [retain; forget] (forget replaced by `x_f` when given): (retain out, forget out)."""
    m_r, m_f = _masks(b)
    x = torch.cat([b.x_r, b.x_f if x_f is None else x_f])
    out = model(x, torch.cat([m_r, m_f]), mode=mode, seed=seed)
    return out[: len(b.x_r)], out[len(b.x_r) :]


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).mean()


class EncoderNoise(Method):
    """Li et al.: E(T(x_r)) -> E0(T(x_r)), E(T(x_f)) -> E0(T(n)); decoder frozen."""

    name, trains = "encoder_noise", "encoder"

    def __init__(self, noise: str = "gaussian") -> None:
        self.noise = noise

    def loss(self, student, teacher, b, alpha):
        with torch.no_grad():
            n = matched_noise(b.x_f, self.noise, b.generator)
            # The family decides what "noise in place of the forget image" means for its teacher
            # (MAE / VQ-GAN: the noise image; diffusion: noise inside the mask only).
            partner = _unwrap(teacher).forget_partner(b.x_f, n, _masks(b)[1])
            seed = _seed(b)
            t_r, t_f = _both(teacher, b, "encode", seed, x_f=partner)
        z_r, z_f = _both(student, b, "encode", seed)
        l_r, l_f = _mse(z_r, t_r), _mse(z_f, t_f)
        return l_r + alpha * l_f, {"retain": l_r.item(), "forget": l_f.item()}


class RetainLabel(Method):
    """Baseline: forget target = teacher embedding of retain samples."""

    name, trains = "retain_label", "encoder"

    def loss(self, student, teacher, b, alpha):
        seed = _seed(b)
        with torch.no_grad():
            t_r, _ = _both(teacher, b, "encode", seed)
        z_r, z_f = _both(student, b, "encode", seed)
        k = min(len(z_f), len(t_r))
        l_r, l_f = _mse(z_r, t_r), _mse(z_f[:k], t_r[:k])
        return l_r + alpha * l_f, {"retain": l_r.item(), "forget": l_f.item()}


class RandomEncoder(Method):
    """Baseline: encoder output on forget -> Gaussian noise matched to the teacher embedding statistics."""

    name, trains = "random_encoder", "encoder"

    def loss(self, student, teacher, b, alpha):
        seed = _seed(b)
        with torch.no_grad():
            t_r, t_f = _both(teacher, b, "encode", seed)
            target = torch.randn(t_f.shape, generator=b.generator).to(t_f.device) * t_f.std() + t_f.mean()
        z_r, z_f = _both(student, b, "encode", seed)
        l_r, l_f = _mse(z_r, t_r), _mse(z_f, target)
        return l_r + alpha * l_f, {"retain": l_r.item(), "forget": l_f.item()}


class MaxLoss(Method):
    """Baseline: gradient ascent on the forget reconstruction loss, descent on retain, full model."""

    name, trains = "max_loss", "full"

    def loss(self, student, teacher, b, alpha):
        p_r, p_f = _both(student, b, "predict", _seed(b))
        l_r = masked_mse(p_r, b.x_r, _masks(b)[0]).mean()
        l_f = masked_mse(p_f, b.x_f, _masks(b)[1]).mean()
        return l_r - alpha * l_f, {"retain": l_r.item(), "forget": l_f.item()}


class NoisyLabel(Method):
    """Baseline: full model trained toward random targets on forget."""

    name, trains = "noisy_label", "full"

    def __init__(self, noise: str = "gaussian") -> None:
        self.noise = noise

    def loss(self, student, teacher, b, alpha):
        p_r, p_f = _both(student, b, "predict", _seed(b))
        target = matched_noise(b.x_f, self.noise, b.generator)
        l_r = masked_mse(p_r, b.x_r, _masks(b)[0]).mean()
        l_f = masked_mse(p_f, target, _masks(b)[1]).mean()
        return l_r + alpha * l_f, {"retain": l_r.item(), "forget": l_f.item()}


class FinetuneRetain(Method):
    """Baseline: keep training on retain only; the forget batch is ignored."""

    name, trains, uses_alpha = "finetune_retain", "full", False

    def loss(self, student, teacher, b, alpha):
        p_r = student(b.x_r, _masks(b)[0], mode="predict", seed=_seed(b))
        l_r = masked_mse(p_r, b.x_r, _masks(b)[0]).mean()
        return l_r, {"retain": l_r.item(), "forget": 0.0}


_METHODS: dict[str, type[Method]] = {
    m.name: m for m in (EncoderNoise, RetainLabel, RandomEncoder, MaxLoss, NoisyLabel, FinetuneRetain)
}


def get_method(name: str, noise: str = "gaussian") -> Method:
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(_METHODS)}")
    cls = _METHODS[name]
    return cls(noise=noise) if cls in (EncoderNoise, NoisyLabel) else cls()


def method_names() -> tuple[str, ...]:
    return tuple(_METHODS)
