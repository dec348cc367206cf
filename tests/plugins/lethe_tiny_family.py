"""A third-party image-to-image family, defined only here (as a user's package would define it).

A small convolutional inpainting autoencoder: the encoder reads the masked image and the mask, the
decoder predicts every pixel. Registered by dotted path (`lethe_tiny_family:TinyAE`) or by an entry
point of group `lethe.families`; `NoEncoder` lacks a part on purpose.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from lethe.models import I2IModel, masked_mse

PLUGIN_FAMILY = "lethe_tiny_family:TinyAE"  # how the tests name it (--family)


@dataclass(frozen=True)
class TinyArch:
    height: int
    width: int
    channels: int
    cell: int  # masks are aligned to cells of this many pixels
    ch: int = 8

    def to_dict(self) -> dict:
        return asdict(self)


class TinyAE(I2IModel):
    Arch = TinyArch

    @staticmethod
    def build_arch(section: dict, height: int, width: int, channels: int) -> dict:
        # at most 8x8 cells, as lethe's own families: 28 -> 4, 8 -> 1
        cell = section.get("cell") or -(-max(height, width) // 8)
        return TinyArch(height, width, channels, **{**section, "cell": cell}).to_dict()

    def __init__(self, arch: TinyArch) -> None:
        super().__init__()
        self.arch = arch
        c, ch = arch.channels, arch.ch
        self.enc = nn.Sequential(
            nn.Conv2d(c + 1, ch, 3, padding=1), nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1)
        )
        self.dec = nn.Sequential(
            nn.SiLU(), nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU(), nn.Conv2d(ch, c, 3, padding=1)
        )

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.enc.parameters())

    def _encode(self, x: torch.Tensor, mask: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        # (B, ch, H, W): the encoder sees the visible pixels and where the hole is
        return self.enc(torch.cat([x * (1 - mask), mask], dim=1))

    def _predict(self, x: torch.Tensor, mask: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        return torch.sigmoid(self.dec(self._encode(x, mask)))

    def training_loss(self, x, mask, generator, phase="main") -> torch.Tensor:
        return masked_mse(self._predict(x, mask), x, mask).mean()

    def inpaint(self, x: torch.Tensor, mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
        mask = mask.expand(x.shape[0], -1, -1, -1) if mask.shape[0] == 1 else mask
        return x * (1 - mask) + self._predict(x, mask) * mask


class NoEncoder(TinyAE):
    """What a plug-in that forgot the encoder split looks like."""

    encoder_parameters = I2IModel.encoder_parameters
