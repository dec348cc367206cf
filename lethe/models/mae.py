"""A small ViT masked autoencoder for image-to-image reconstruction (He et al. 2022, Li et al. 2024).

The encoder sees only visible patches; the decoder fills mask tokens and predicts every pixel.
The "encoder" that unlearning re-targets is patch embedding + encoder blocks + norm.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lethe.models.layers import (
    MAIN_PHASE,
    I2IModel,
    MaskedTokenTransformer,
    cell_hidden,
    masked_mse,
)

__all__ = ["MAE", "MAEArch", "auto_patch", "masked_mse"]


def auto_patch(height: int, width: int) -> int:
    """Patch side giving at most 8x8 tokens: 28 -> 4 (7x7), 64 -> 8, 8 -> 1."""
    return max(1, math.ceil(max(height, width) / 8))


@dataclass(frozen=True)
class MAEArch:
    height: int
    width: int
    channels: int
    patch: int
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    dec_dim: int = 64
    dec_depth: int = 2
    dec_heads: int = 4

    @property
    def grid(self) -> tuple[int, int]:
        return math.ceil(self.height / self.patch), math.ceil(self.width / self.patch)

    @property
    def num_tokens(self) -> int:
        gh, gw = self.grid
        return gh * gw

    @property
    def cell(self) -> int:
        return self.patch

    def to_dict(self) -> dict:
        return asdict(self)


class MAE(I2IModel, MaskedTokenTransformer):
    family = "mae"

    def __init__(self, arch: MAEArch) -> None:
        super().__init__()
        self.arch = arch
        p, c = arch.patch, arch.channels
        self.patch_embed = nn.Linear(p * p * c, arch.dim)
        a = arch
        self.init_transformer(
            a.num_tokens, a.dim, a.depth, a.heads, a.mlp_ratio, a.dec_dim, a.dec_depth, a.dec_heads, p * p * c
        )

    # -- the family interface ------------------------------------------------------------------
    def encoder_modules(self) -> list[nn.Module]:
        return [self.patch_embed, self.blocks, self.norm]

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [self.pos, *(p for m in self.encoder_modules() for p in m.parameters())]

    def _encode(self, x: torch.Tensor, mask: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        # 'encode' -> (B, L_vis, D): the encoder sees visible patches only; nothing random.
        return self._encode_tokens(x, mask)[0]

    def _predict(self, x: torch.Tensor, mask: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        # 'predict' -> (B, C, H, W) in [0, 1], every pixel predicted
        return self._decode(*self._encode_tokens(x, mask))

    def training_loss(
        self, x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, phase: str = MAIN_PHASE
    ) -> torch.Tensor:
        """Masked reconstruction: MSE on the hidden patches only (He et al.)."""
        return masked_mse(self._predict(x, mask), x, mask).mean()

    def inpaint(self, x: torch.Tensor, mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """The user-facing output: visible pixels kept, hidden ones predicted (deterministic)."""
        mask = mask.expand(x.shape[0], -1, -1, -1) if mask.shape[0] == 1 else mask
        return x * (1 - mask) + self._predict(x, mask) * mask

    # -- internals -----------------------------------------------------------------------------
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        gh, gw = self.arch.grid
        p = self.arch.patch
        ph, pw = gh * p - x.shape[-2], gw * p - x.shape[-1]
        return F.pad(x, (0, pw, 0, ph)) if ph or pw else x

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, L, p*p*C)
        x = self._pad(x)
        b, c = x.shape[:2]
        p = self.arch.patch
        gh, gw = self.arch.grid
        x = x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, gh * gw, p * p * c)

    def unpatchify(self, t: torch.Tensor) -> torch.Tensor:
        # (B, L, p*p*C) -> (B, C, H, W), padding cropped
        b = t.shape[0]
        p, c = self.arch.patch, self.arch.channels
        gh, gw = self.arch.grid
        x = t.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, gh * p, gw * p)
        return x[:, :, : self.arch.height, : self.arch.width]

    def token_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(B,1,H,W) pixel mask -> (B, L) bool, a patch hidden when most of it is hidden."""
        return cell_hidden(mask[:, :1], self.arch.patch)

    def _encode_tokens(self, x: torch.Tensor, mask: torch.Tensor):
        hidden = self.token_mask(mask.expand(x.shape[0], -1, -1, -1))  # (B, L)
        z, keep = self.encode_visible(self.patch_embed(self.patchify(x)), hidden)
        return z, keep, hidden

    def _decode(self, z: torch.Tensor, keep: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.unpatchify(self.head(self.decode_tokens(z, keep, hidden))))
