"""Conditional inpainting diffusion (Palette style, Saharia et al. 2022; Li et al. 2024).

A small UNet predicts the noise of x_t given the masked image and the mask (input channels:
x_t, masked image, mask). As in Palette, only the hidden region is diffused: outside the mask
x_t is the known image, and the loss is the noise MSE inside the mask. Sampling is DDIM with a few
deterministic steps (eta = 0) from seeded starting noise, so evaluation fits a CPU budget and is
repeatable.

The "encoder" that unlearning re-targets is the UNet's input blocks plus its middle block (the
time embedding and everything after the middle block stay frozen); "encode" returns their
activations, flattened and concatenated, each block scaled so the plain MSE over the concatenation
equals the authors' sum of per-block MSEs. For a forget image the teacher encodes the noise image
under the same mask, as in every family: its visible context is noise, and so is what it diffuses
inside the mask. (Real context with noise only inside the mask would be a weak target: the sampler
never sees the inside of the mask, so the teacher's behaviour there says little about forgetting.)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lethe.models.layers import MAIN_PHASE, I2IModel, ResBlock, group_norm, pad_to_multiple, sinusoidal


@dataclass(frozen=True)
class DiffusionArch:
    height: int
    width: int
    channels: int
    cell: int  # granularity of random training masks (the same cells as the other families)
    patch: int = 2  # space-to-depth factor: the UNet runs at 1/patch resolution (CPU budget)
    ch: int = 32
    mults: tuple[int, ...] = (1, 2)
    res_blocks: int = 1
    attention: bool = True  # self-attention in the middle block
    timesteps: int = 1000
    schedule: str = "cosine"  # "cosine" | "linear"
    sample_steps: int = 10
    eta: float = 0.0

    def __post_init__(self) -> None:
        # Checkpoints and configs may carry a list; the dataclass is frozen, so fix it up here.
        object.__setattr__(self, "mults", tuple(int(m) for m in self.mults))
        if self.schedule not in ("cosine", "linear"):
            raise ValueError(f"schedule must be 'cosine' or 'linear', got {self.schedule!r}")
        if not 1 <= self.sample_steps <= self.timesteps:
            raise ValueError("sample_steps must be between 1 and timesteps")

    @property
    def down_factor(self) -> int:
        """Inputs are padded to a multiple of this: space-to-depth, then one halving per level."""
        return self.patch * 2 ** (len(self.mults) - 1)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mults"] = list(self.mults)  # plain JSON-like values in checkpoints and configs
        return d


def alphas_cumprod(schedule: str, steps: int) -> torch.Tensor:
    """(T,) cumulative products of (1 - beta_t): cosine (Nichol & Dhariwal) or linear (Ho et al.)."""
    if schedule == "linear":
        betas = torch.linspace(1e-4, 0.02, steps, dtype=torch.float64)
    else:
        s = 0.008
        t = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0).float()


class _Attention(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm, self.qkv, self.proj = group_norm(ch), nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)  # (B, HW, C)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class _Down(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(x)


class _Up(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Seq(nn.ModuleList):
    """Blocks that all take (h, emb) (guided-diffusion's TimestepEmbedSequential)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for m in self:
            x = m(x, emb)
        return x


class _Conv(nn.Conv2d):
    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x)


class UNet(nn.Module):
    """guided-diffusion layout at toy size: input_blocks / middle_block / output_blocks."""

    def __init__(self, arch: DiffusionArch) -> None:
        super().__init__()
        ch, c, p = arch.ch, arch.channels, arch.patch
        emb = 4 * ch
        self.time_embed = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        # (x_t, conditioning image, mask) folded p x p into channels: (2C+1) p^2 input channels
        self.input_blocks = nn.ModuleList([_Seq([_Conv((2 * c + 1) * p * p, ch, 3, padding=1)])])
        skips, cur = [ch], ch
        for level, mult in enumerate(arch.mults):
            for _ in range(arch.res_blocks):
                self.input_blocks.append(_Seq([ResBlock(cur, ch * mult, emb)]))
                cur = ch * mult
                skips.append(cur)
            if level < len(arch.mults) - 1:
                self.input_blocks.append(_Seq([_Down(cur)]))
                skips.append(cur)
        mid: list[nn.Module] = [ResBlock(cur, cur, emb)]
        if arch.attention:
            mid.append(_Attention(cur))
        mid.append(ResBlock(cur, cur, emb))
        self.middle_block = _Seq(mid)
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(arch.mults))):
            for i in range(arch.res_blocks + 1):
                blk: list[nn.Module] = [ResBlock(cur + skips.pop(), ch * mult, emb)]
                cur = ch * mult
                if level > 0 and i == arch.res_blocks:
                    blk.append(_Up(cur))
                self.output_blocks.append(_Seq(blk))
        self.out = nn.Sequential(group_norm(cur), nn.SiLU(), nn.Conv2d(cur, c * p * p, 3, padding=1))
        self.ch, self.patch = ch, p

    def encoder_modules(self) -> list[nn.Module]:
        return [self.input_blocks, self.middle_block]

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, features_only: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """(B, 2C+1, H', W'), (B,) -> noise (B, C, H', W'), or the input + middle activations."""
        emb = self.time_embed(sinusoidal(t, self.ch))
        hs = []
        h = F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x
        for blk in self.input_blocks:
            h = blk(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        if features_only:
            return [*hs, h]
        for blk in self.output_blocks:
            h = blk(torch.cat([h, hs.pop()], dim=1), emb)
        h = self.out(h)
        return F.pixel_shuffle(h, self.patch) if self.patch > 1 else h


class Diffusion(I2IModel):
    family = "diffusion"

    def __init__(self, arch: DiffusionArch) -> None:
        super().__init__()
        self.arch = arch
        self.unet = UNet(arch)
        # Derived from the arch: not saved, recomputed on load.
        self.register_buffer("abar", alphas_cumprod(arch.schedule, arch.timesteps), persistent=False)

    # -- the family interface --------------------------------------------------------------------
    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.unet.encoder_modules() for p in m.parameters()]

    def sampler_info(self) -> dict[str, Any]:
        a = self.arch
        return {
            "name": "ddim",
            "steps": a.sample_steps,
            "eta": a.eta,
            "train_timesteps": a.timesteps,
            "schedule": a.schedule,
            "seeded": True,
        }

    # -- internals ---------------------------------------------------------------------------------
    def _prep(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[0,1] image -> x0 in [-1,1], mask and conditioning image (hole = 0), all padded."""
        x0 = pad_to_multiple(x * 2 - 1, self.arch.down_factor)
        m = pad_to_multiple(mask.float(), self.arch.down_factor)
        return x0, m, x0 * (1 - m)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : self.arch.height, : self.arch.width]

    def _noised(self, x0: torch.Tensor, m: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        ab = self.abar[t][:, None, None, None]
        return m * (ab.sqrt() * x0 + (1 - ab).sqrt() * eps) + (1 - m) * x0

    def _draw(self, x0: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.randint(self.arch.timesteps, (x0.shape[0],), generator=generator).to(x0.device)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        return t, eps

    def _seeded(self, x0: torch.Tensor, seed: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        # Without a seed (evaluation, MIA), a fixed one: the same image gets the same corruption.
        return self._draw(x0, torch.Generator().manual_seed(0 if seed is None else int(seed)))

    def training_loss(
        self, x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, phase: str = MAIN_PHASE
    ) -> torch.Tensor:
        """Palette's objective: noise MSE inside the mask at a uniform random timestep."""
        x0, m, cond = self._prep(x, mask)
        t, eps = self._draw(x0, generator)
        eps_hat = self.unet(torch.cat([self._noised(x0, m, t, eps), cond, m], 1), t)
        mm = m.expand_as(eps)
        return ((eps_hat - eps) ** 2 * mm).sum() / mm.sum().clamp_min(1.0)

    def _encode(self, x: torch.Tensor, mask: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        # 'encode' -> (B, N): input-block and middle-block activations at a seeded timestep
        x0, m, cond = self._prep(x, mask)
        t, eps = self._seeded(x0, seed)
        feats = self.unet(torch.cat([self._noised(x0, m, t, eps), cond, m], 1), t, features_only=True)
        flat = [f.flatten(1) for f in feats]
        total = sum(f.shape[1] for f in flat)
        return torch.cat([f * math.sqrt(total / f.shape[1]) for f in flat], dim=1)

    def _predict(self, x: torch.Tensor, mask: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """One-step x0 estimate at a seeded random timestep, visible pixels kept: (B, C, H, W)."""
        x0, m, cond = self._prep(x, mask)
        t, eps = self._seeded(x0, seed)
        x_t = self._noised(x0, m, t, eps)
        eps_hat = self.unet(torch.cat([x_t, cond, m], 1), t)
        ab = self.abar[t][:, None, None, None]
        x0_hat = ((x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt()).clamp(-1, 1)
        out = self._crop((x0_hat + 1) / 2)
        return x * (1 - mask) + out * mask

    def ddim_timesteps(self) -> list[int]:
        a = self.arch
        ts = torch.linspace(a.timesteps - 1, 0, a.sample_steps).round().long().tolist()
        return sorted(set(ts), reverse=True)

    @torch.no_grad()
    def inpaint(self, x: torch.Tensor, mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """DDIM from seeded noise inside the mask; outside it x_t is the known image at every step."""
        mask = mask.expand(x.shape[0], -1, -1, -1) if mask.shape[0] == 1 else mask
        x0, m, cond = self._prep(x, mask)
        g = torch.Generator().manual_seed(int(seed))
        x_t = m * torch.randn(x0.shape, generator=g).to(x0.device) + (1 - m) * x0
        ts = self.ddim_timesteps()
        x0_hat = x0
        for i, t_int in enumerate(ts):
            t = torch.full((x0.shape[0],), t_int, device=x0.device, dtype=torch.long)
            ab = self.abar[t_int]
            eps_hat = self.unet(torch.cat([x_t, cond, m], 1), t)
            x0_hat = ((x_t - (1 - ab).sqrt() * eps_hat) / ab.sqrt()).clamp(-1, 1)
            if i == len(ts) - 1:
                break
            # the noise consistent with the clipped x0 estimate keeps DDIM on the data range
            eps_hat = (x_t - ab.sqrt() * x0_hat) / (1 - ab).sqrt().clamp_min(1e-8)
            ab_prev = self.abar[ts[i + 1]]
            sigma = self.arch.eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).clamp_min(0).sqrt()
            x_prev = ab_prev.sqrt() * x0_hat + (1 - ab_prev - sigma**2).clamp_min(0).sqrt() * eps_hat
            if self.arch.eta > 0:
                x_prev = x_prev + sigma * torch.randn(x0.shape, generator=g).to(x0.device)
            x_t = m * x_prev + (1 - m) * x0
        out = self._crop((x0_hat + 1) / 2)
        return x * (1 - mask) + out * mask
