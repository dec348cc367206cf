"""Unlearning methods for image-to-image families, one interface (DESIGN.md 2.1).

A method says which part of the student it trains ("encoder" or "full") and computes one loss from a
retain batch and a forget batch that share one mask. Methods only use the family interface
(lethe/models/layers.py `I2IModel`): `model(x, mask, mode="encode" | "predict", seed=...)`,
`encoder_parameters()`, `full_parameters()`; no per-family branches.

Student calls go through `student(...)` exactly once per step, on the retain and forget batches
concatenated, so DDP sees one forward per backward. Teacher calls use the same concatenated layout
and the same `seed`, so a stochastic family (diffusion: random timestep and noise) corrupts a
sample identically for student and teacher, and an untouched student matches its teacher exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

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

    # -- stages: most methods have one; a multi-stage method (decouple_retain) overrides these. The
    # training loops stay method-agnostic: a fresh optimiser + schedule per stage, no update on the
    # step where `stage` changes inside `loss`, stop early when `finished()`, and `state()` rides
    # in the checkpointed progress so a resumed run continues in the same stage.
    stage: str = "main"

    def stages(self, base_steps: int) -> list[tuple[str, int]]:
        """(stage, step budget) in order; `base_steps` is what the run's passes / max_steps give."""
        return [("main", base_steps)]

    def finished(self) -> bool:
        return False

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        pass


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
            # E0(T(n)): the whole noise image under the forget image's mask, in every family.
            n = matched_noise(b.x_f, self.noise, b.generator)
            seed = _seed(b)
            t_r, t_f = _both(teacher, b, "encode", seed, x_f=n)
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


def _global_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over DDP workers (identity in one process), so every worker takes the same decision."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        x = x.detach().clone()
        dist.all_reduce(x)
        return x / dist.get_world_size()
    return x.detach()


DECOUPLE, RETAIN = "decouple", "retain"


class DecoupleRetain(Method):
    """Varshney & Torra 2025 (DESIGN.md 2.2): decoupling, then knowledge retention; full model.

    Stage "decouple": pure gradient ascent on the masked reconstruction loss of the forget batch
    (the paper's step 1; no retain term). Every step first measures the distance d = mean masked
    MSE between the student's and the original's (teacher's) predictions on that forget batch
    (averaged over DDP workers). When d >= lam, or after `max_ascent_steps` ascent steps, the step
    is a measurement only (the loss is 0 * forget loss, so DDP still runs one backward; the loops
    apply no update) and the stage switches to "retain". The distance is measured on the batch in
    hand rather than on a fixed probe set: it costs no extra forward pass, and with the batch sizes
    used (64 per worker) the batch mean is a low-variance estimate of the forget-set mean.

    Stage "retain": knowledge retention on retain data only: masked reconstruction loss toward the
    truth, plus `distill` * masked MSE toward the teacher's prediction (distillation from the
    original; 0 turns it off), for `retain_steps` steps (None: the run's usual step count). The
    config defaults (30 steps, no distillation) come from the demo: long retention distilled from
    the original pulls the forget outputs back to the original's (docs/methods/decouple_retain.md).

    Why the full model and not the encoder: the oracle differs from the original in every weight,
    and ascent restricted to the encoder of a token family (VQ-GAN: the transformer encoder) leaves
    the decoder able to rebuild forget details from the visible context; phase 2 repairs whatever
    phase 1 broke in the shared weights, which needs the decoder trainable too.

    lam comes from `calibrate_lambda` (the original's own error on held-out images it never saw);
    inf means "not calibrated": ascend for `max_ascent_steps`. alpha is unused.
    """

    name, trains, uses_alpha = "decouple_retain", "full", False

    def __init__(
        self,
        lam: float = math.inf,
        max_ascent_steps: int = 100,
        retain_steps: int | None = None,
        distill: float = 0.0,
    ) -> None:
        self.lam, self.max_ascent_steps = float(lam), int(max_ascent_steps)
        self.retain_steps, self.distill = retain_steps, float(distill)
        self.stage = DECOUPLE
        self.ascent_steps = 0  # ascent updates applied
        self.retain_done = 0  # retain steps taken
        self.reached = False  # lam reached (False with stage "retain": stopped by the cap)
        self.distance = 0.0  # last measured distance to the teacher on forget
        self.retain_total = retain_steps if retain_steps is not None else 0

    def stages(self, base_steps: int) -> list[tuple[str, int]]:
        if self.retain_steps is None:
            self.retain_total = base_steps
        # +1: the switch step (measurement only) belongs to the decoupling stage.
        return [(DECOUPLE, self.max_ascent_steps + 1), (RETAIN, self.retain_total)]

    def finished(self) -> bool:
        return self.stage == RETAIN and self.retain_done >= self.retain_total

    def state(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "ascent_steps": self.ascent_steps,
            "retain_done": self.retain_done,
            "reached": self.reached,
            "distance": self.distance,
            "retain_total": self.retain_total,
            "lam": self.lam,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.stage = str(state["stage"])
        self.ascent_steps, self.retain_done = int(state["ascent_steps"]), int(state["retain_done"])
        self.reached, self.distance = bool(state["reached"]), float(state["distance"])
        self.retain_total = int(state["retain_total"])

    def loss(self, student, teacher, b, alpha):
        seed = _seed(b)
        m_r, m_f = _masks(b)
        if self.stage == DECOUPLE:
            p_f = student(b.x_f, m_f, mode="predict", seed=seed)
            with torch.no_grad():
                t_f = teacher(b.x_f, m_f, mode="predict", seed=seed)
            self.distance = float(_global_mean(masked_mse(p_f.detach(), t_f, m_f).mean()))
            l_f = masked_mse(p_f, b.x_f, m_f).mean()
            parts = {"retain": 0.0, "forget": l_f.item()}
            if self.distance >= self.lam or self.ascent_steps >= self.max_ascent_steps:
                self.reached = self.distance >= self.lam
                self.stage = RETAIN
                return 0.0 * l_f, parts
            self.ascent_steps += 1
            return -l_f, parts
        p_r = student(b.x_r, m_r, mode="predict", seed=seed)
        l_r = masked_mse(p_r, b.x_r, m_r).mean()
        loss = l_r
        if self.distill > 0:
            with torch.no_grad():
                t_r = teacher(b.x_r, m_r, mode="predict", seed=seed)
            loss = loss + self.distill * masked_mse(p_r, t_r, m_r).mean()
        self.retain_done += 1
        return loss, {"retain": l_r.item(), "forget": 0.0}


def calibrate_lambda(
    model: nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor,
    factor: float = 1.0,
    quantile: float | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """lambda for decouple_retain, from the ORIGINAL model's error on images it never saw.

    Rule: per-image masked MSE between the original's prediction ("predict" mode, the mask kind the
    unlearning uses) and the truth on held-out retain images; lambda = factor * mean (or factor *
    the given quantile). Why: an oracle treats forget images as unseen data, so its outputs there
    sit about one "unseen-data error" away from the truth, and the original's outputs sit close to
    it; pushing the student's forget outputs that far from the original's makes them as far off as
    a model that never saw them, not further (over-forgetting is what the method avoids).
    """
    if len(x) == 0:
        raise ValueError("lambda calibration needs at least one held-out image")
    errs = []
    model = model.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            m = mask.expand(len(xb), -1, -1, -1) if mask.shape[0] == 1 else mask[i : i + batch_size]
            errs.append(masked_mse(model(xb, m, mode="predict", seed=seed + i), xb, m))
    e = torch.cat(errs).double()
    stat = float(e.mean()) if quantile is None else float(torch.quantile(e, quantile))
    return {
        "lambda": factor * stat,
        "heldout_mse_mean": float(e.mean()),
        "heldout_mse_stat": stat,
        "factor": float(factor),
        "n_images": len(e),
    }


def output_distance(
    model: nn.Module,
    reference: nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor,
    batch_size: int = 256,
    seed: int = 0,
) -> float:
    """Mean masked MSE between two models' predictions (decouple_retain's distance, off-line): used to
    check the lambda rule against the oracle's own distance from the original on forget data."""
    total, n = 0.0, 0
    model, reference = model.eval(), reference.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            m = mask.expand(len(xb), -1, -1, -1) if mask.shape[0] == 1 else mask[i : i + batch_size]
            a = model(xb, m, mode="predict", seed=seed + i)
            b = reference(xb, m, mode="predict", seed=seed + i)
            total += float(masked_mse(a, b, m).sum())
            n += len(xb)
    return total / max(1, n)


_METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (EncoderNoise, RetainLabel, RandomEncoder, MaxLoss, NoisyLabel, FinetuneRetain, DecoupleRetain)
}


def get_method(name: str, noise: str = "gaussian", options: dict[str, Any] | None = None) -> Method:
    """`options`: constructor settings of methods that have them (decouple_retain: lam, ...)."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {', '.join(_METHODS)}")
    cls = _METHODS[name]
    if cls in (EncoderNoise, NoisyLabel):
        return cls(noise=noise)
    return cls(**(options or {})) if cls is DecoupleRetain else cls()


def method_names() -> tuple[str, ...]:
    return tuple(_METHODS)
