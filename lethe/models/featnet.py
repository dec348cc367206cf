"""The project's own feature network: a small CNN classifier trained on the same data.

Its penultimate features define FD (Frechet distance) and embedding similarity. It is not Inception,
so the number is called FD, never FID.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FeatNetArch:
    height: int
    width: int
    channels: int
    num_classes: int
    width_mult: int = 32
    feat_dim: int = 128

    def to_dict(self) -> dict:
        return asdict(self)


class FeatNet(nn.Module):
    family = "featnet"

    def __init__(self, arch: FeatNetArch) -> None:
        super().__init__()
        self.arch = arch
        w = arch.width_mult
        self.conv = nn.Sequential(
            nn.Conv2d(arch.channels, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(4),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(2 * w * 16, arch.feat_dim), nn.ReLU())
        self.cls = nn.Linear(arch.feat_dim, arch.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) in [0,1] -> (B, feat_dim)
        return self.fc(self.conv(x * 2 - 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.features(x))
