"""The Ray-free optimiser / schedule / mask-spec / loss-step toolkit shared by the Ray Train loops
(lethe.execution.loops, lethe.execution.generator_loops) and the single-process benchmark loop.

Nothing here imports Ray: the execution layer decides where batches come from and who reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lethe import masks
from lethe.methods import Batch, Method
from lethe.models.layers import MAIN_PHASE


def warmup_cosine(total_steps: int, warmup_frac: float):
    """LR multiplier: linear warm-up, then cosine decay to 0 (clamped past the end)."""
    warm = max(1, int(round(total_steps * warmup_frac))) if warmup_frac > 0 else 0

    def fn(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.5 * (1.0 + math.cos(math.pi * t))

    return fn


def make_optimizer(
    params: list[nn.Parameter], lr: float, weight_decay: float, total_steps: int, warmup_frac: float
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total_steps, warmup_frac))


@dataclass
class MaskSpec:
    height: int
    width: int
    cell: int
    box_frac: float
    ratio: float = 0.5
    box_prob: float = 0.0
    # "fixed": hide `ratio` of the cells; "cosine": MaskGIT's r = cos(pi/2 * u), u ~ U(0, 1), drawn
    # per batch (every image of a batch hides the same count, which the token encoders need).
    schedule: str = "fixed"

    def box(self) -> torch.Tensor:
        return masks.box_mask(self.height, self.width, self.box_frac, self.cell)

    def draw_ratio(self, generator: torch.Generator) -> float:
        if self.schedule == "cosine":
            return math.cos(math.pi / 2 * float(torch.rand((), generator=generator)))
        return self.ratio

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Training mask: random patches, or the evaluation box with probability box_prob."""
        if self.box_prob > 0 and float(torch.rand((), generator=generator)) < self.box_prob:
            return self.box()
        return masks.random_mask(n, self.height, self.width, self.cell, self.draw_ratio(generator), generator)


def training_loss(
    model: nn.Module, x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, phase: str = MAIN_PHASE
) -> torch.Tensor:
    """The family's pretraining loss, through forward (mode "loss") so DDP sees the call."""
    mask = masks.expand(mask, x.shape[0]).to(x.device)
    return model(x, mask, mode="loss", generator=generator, phase=phase)


def classifier_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def unlearn_step(
    method: Method,
    student: nn.Module,
    teacher: nn.Module,
    x_r: torch.Tensor,
    x_f: torch.Tensor,
    mask: torch.Tensor,
    alpha: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, dict[str, Any]]:
    mask = mask.to(x_r.device)
    return method.loss(student, teacher, Batch(x_r=x_r, x_f=x_f, mask=mask, generator=generator), alpha)


def optimizer_step(
    loss: torch.Tensor,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    params: list[nn.Parameter],
    clip: float | None = None,
) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
    sched.step()


def unlearn_total_steps(
    n_forget: int,
    batch_size: int,
    world: int,
    passes: float,
    max_steps: int | None,
    min_steps: int | None = None,
) -> int:
    """Same count on every worker: passes over the global forget set at world * batch per step, at
    least `min_steps` (a request of a few images is otherwise one step), at most `max_steps`."""
    steps = max(1, math.ceil(passes * n_forget / (batch_size * world)), min_steps or 1)
    return min(steps, max_steps) if max_steps else steps
