"""A `diffusers` UNet2DModel trained for Palette-style inpainting, as an image-to-image family.

The user's model as their code keeps it: a folder with `unet/` (UNet2DModel.save_pretrained: its
input is (x_t, masked image, mask), 2C+1 channels, its output the noise of x_t, C channels) and
`scheduler/` (a diffusers scheduler config). lethe drives it like its own `diffusion` family
(lethe/models/diffusion.py, whose Palette objective and encoder it reuses): only the hidden region is
diffused, the training loss is the noise MSE inside the mask at a DDPM timestep, and evaluation
samples with diffusers' DDIMScheduler built from the folder's scheduler config, from seeded noise.
The encoder that unlearning re-targets is conv_in + the down blocks + the mid block; the time
embedding, up blocks and output stay frozen under encoder-only methods.

Loading reads safetensors only, from local files only; `diffusers` is imported when a model is built.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lethe.models.diffusion import Diffusion

__all__ = ["DiffusersInpaint", "DiffusersInpaintArch", "folder_arch", "load_pretrained", "save_pretrained"]

UNET_DIR, SCHEDULER_DIR = "unet", "scheduler"
CONFIG_FILE, SCHEDULER_FILE = "config.json", "scheduler_config.json"


def _plain(config: Any) -> dict[str, Any]:
    """A diffusers config as JSON-safe plain values, without its private keys."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dict(config).items() if not k.startswith("_")
    }


@dataclass(frozen=True)
class DiffusersInpaintArch:
    height: int
    width: int
    channels: int
    cell: int  # granularity of random training masks (the same cells as the other families)
    unet: dict[str, Any] = field(default_factory=dict)  # UNet2DModel's config
    scheduler: dict[str, Any] = field(default_factory=dict)  # DDPMScheduler's config
    sample_steps: int = 10
    eta: float = 0.0

    def __post_init__(self) -> None:
        u, c = self.unet, self.channels
        if u.get("in_channels") != 2 * c + 1 or u.get("out_channels") != c:
            raise ValueError(
                f"diffusers-inpaint needs a UNet2DModel with in_channels {2 * c + 1} (x_t, masked image, mask) "
                f"and out_channels {c}; got {u.get('in_channels')} and {u.get('out_channels')}"
            )
        if u.get("class_embed_type") or u.get("time_embedding_type", "positional") != "positional":
            raise ValueError(
                "diffusers-inpaint supports UNet2DModel without class conditioning, positional time"
            )
        if any("Skip" in b for b in u.get("down_block_types", [])):
            raise ValueError("diffusers-inpaint does not support skip down blocks")
        if self.scheduler.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(
                f"diffusers-inpaint needs an epsilon-predicting scheduler, got {self.scheduler['prediction_type']!r}"
            )
        if not 1 <= self.sample_steps <= self.timesteps:
            raise ValueError("sample_steps must be between 1 and the scheduler's num_train_timesteps")

    # what lethe's Diffusion reads of its arch
    @property
    def timesteps(self) -> int:
        return int(self.scheduler.get("num_train_timesteps", 1000))

    @property
    def down_factor(self) -> int:
        return 2 ** (len(self.unet["block_out_channels"]) - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unet_config(section: dict[str, Any], height: int, channels: int) -> dict[str, Any]:
    """A UNet2DModel config for lethe to train, from the config section's few fields."""
    from diffusers import UNet2DModel

    levels = len(section["block_out_channels"])
    attn = [
        "AttnDownBlock2D" if section.get("attention", True) and i > 0 else "DownBlock2D"
        for i in range(levels)
    ]
    unet = UNet2DModel(
        sample_size=height,
        in_channels=2 * channels + 1,
        out_channels=channels,
        block_out_channels=tuple(section["block_out_channels"]),
        layers_per_block=section.get("layers_per_block", 1),
        down_block_types=tuple(attn),
        up_block_types=tuple(b.replace("Down", "Up") for b in reversed(attn)),
        norm_num_groups=section.get("norm_num_groups", 8),
        attention_head_dim=section.get("attention_head_dim", 8),
    )
    return _plain(unet.config)


def scheduler_config(section: dict[str, Any]) -> dict[str, Any]:
    from diffusers import DDPMScheduler

    s = DDPMScheduler(
        num_train_timesteps=section.get("timesteps", 1000),
        beta_schedule=section.get("beta_schedule", "squaredcos_cap_v2"),
    )
    return _plain(s.config)


class _UNet(nn.Module):
    """UNet2DModel behind the interface lethe's Diffusion calls: (input, t) -> noise, or the
    encoder's activations (conv_in, every down-block output, the mid block)."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def encoder_modules(self) -> list[nn.Module]:
        u = self.unet
        return [u.conv_in, u.down_blocks, *([u.mid_block] if u.mid_block is not None else [])]

    def forward(self, x: torch.Tensor, t: torch.Tensor, features_only: bool = False):
        u = self.unet
        if not features_only:
            return u(x, t).sample
        # UNet2DModel.forward up to its mid block (positional time, no class embedding: the arch checks)
        emb = u.time_embedding(u.time_proj(t).to(dtype=x.dtype))
        h = u.conv_in(x)
        feats = [h]
        for block in u.down_blocks:
            h, res = block(hidden_states=h, temb=emb)
            feats.extend(res)
        if u.mid_block is not None:
            h = u.mid_block(h, emb)
            feats.append(h)
        return feats


class DiffusersInpaint(Diffusion):
    """lethe's Palette objective and encoder over a diffusers UNet; DDIM with diffusers' scheduler."""

    family = "diffusers-inpaint"

    def __init__(self, arch: DiffusersInpaintArch, unet: nn.Module | None = None) -> None:
        nn.Module.__init__(self)
        from diffusers import DDPMScheduler, UNet2DModel

        self.arch = arch
        self.unet = _UNet(unet if unet is not None else UNet2DModel.from_config(arch.unet))
        abar = DDPMScheduler.from_config(arch.scheduler).alphas_cumprod.float()
        self.register_buffer("abar", abar, persistent=False)

    def sampler_info(self) -> dict[str, Any]:
        a = self.arch
        return {
            "name": "ddim (diffusers)",
            "steps": a.sample_steps,
            "eta": a.eta,
            "train_timesteps": a.timesteps,
            "seeded": True,
        }

    @torch.no_grad()
    def inpaint(self, x: torch.Tensor, mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """diffusers' DDIMScheduler from seeded noise inside the mask; outside it x_t is the known image."""
        from diffusers import DDIMScheduler

        mask = mask.expand(x.shape[0], -1, -1, -1) if mask.shape[0] == 1 else mask
        x0, m, cond = self._prep(x, mask)
        g = torch.Generator().manual_seed(int(seed))
        sched = DDIMScheduler.from_config(self.arch.scheduler)
        sched.set_timesteps(self.arch.sample_steps)
        x_t = m * torch.randn(x0.shape, generator=g).to(x0.device) + (1 - m) * x0
        x0_hat = x0
        for t in sched.timesteps:
            eps = self.unet(torch.cat([x_t, cond, m], 1), t.expand(x0.shape[0]).to(x0.device))
            out = sched.step(eps, t, x_t, eta=self.arch.eta, generator=g)
            x0_hat = out.pred_original_sample.clamp(-1, 1)
            x_t = m * out.prev_sample + (1 - m) * x0
        pred = self._crop((x0_hat + 1) / 2)
        return x * (1 - mask) + pred * mask


def folder_arch(read: Callable[[str], str | None]) -> DiffusersInpaintArch:
    """The arch of a folder with unet/ and scheduler/ from their JSON files (no weights read)."""
    text = read(f"{UNET_DIR}/{CONFIG_FILE}")
    if text is None:
        raise ValueError(f"not a diffusers inpainting folder (no {UNET_DIR}/{CONFIG_FILE})")
    unet = _plain(json.loads(text))
    sched_text = read(f"{SCHEDULER_DIR}/{SCHEDULER_FILE}")
    if sched_text is None:
        raise ValueError(f"not a diffusers inpainting folder (no {SCHEDULER_DIR}/{SCHEDULER_FILE})")
    scheduler = _plain(json.loads(sched_text))
    size = unet.get("sample_size")
    h, w = (size, size) if isinstance(size, int) else tuple(size or (0, 0))
    c = int(unet.get("out_channels", 0))
    return DiffusersInpaintArch(
        height=int(h),
        width=int(w),
        channels=c,
        cell=max(1, math.ceil(max(h, w) / 8)),
        unet=unet,
        scheduler=scheduler,
    )


def load_pretrained(folder: str | Path) -> DiffusersInpaint:
    """A folder with unet/ and scheduler/ -> DiffusersInpaint (eval mode); safetensors only."""
    from diffusers import UNet2DModel

    folder = Path(folder)
    arch = folder_arch(lambda name: (folder / name).read_text() if (folder / name).is_file() else None)
    if not any((folder / UNET_DIR).glob("*.safetensors")):
        raise ValueError(
            f"{folder / UNET_DIR} has no .safetensors weights (lethe never loads pickled weights)"
        )
    unet = UNet2DModel.from_pretrained(
        folder, subfolder=UNET_DIR, local_files_only=True, use_safetensors=True, low_cpu_mem_usage=False
    )
    return DiffusersInpaint(arch, unet).eval()


def save_pretrained(model: DiffusersInpaint, folder: str | Path) -> Path:
    """Write `model` as its users load it: UNet2DModel.from_pretrained(folder, subfolder="unet") and
    DDPMScheduler.from_pretrained(folder, subfolder="scheduler")."""
    from diffusers import DDPMScheduler

    folder = Path(folder)
    model = getattr(model, "module", model)
    model.unet.unet.save_pretrained(folder / UNET_DIR, safe_serialization=True)
    DDPMScheduler.from_config(model.arch.scheduler).save_pretrained(folder / SCHEDULER_DIR)
    return folder
