"""A small DCGAN-style GAN (Radford et al. 2016) whose shape comes from the data.

Generator: ConvDecoder (GroupNorm instead of BatchNorm, see generative.gen_norm). Discriminator:
stride-2 convs with spectral normalisation, then a linear score. Loss: hinge (default) or the
non-saturating logistic loss.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lethe.models.generative import ConvDecoder, ConvEncoder, GenerativeModel

GAN_LOSSES = ("hinge", "nonsat")


@dataclass(frozen=True)
class GANArch:
    height: int
    width: int
    channels: int
    latent_dim: int = 64
    ch: int = 32
    disc_ch: int = 32
    loss: str = "hinge"

    def __post_init__(self) -> None:
        if self.loss not in GAN_LOSSES:
            raise ValueError(f"unknown GAN loss {self.loss!r}; expected one of {', '.join(GAN_LOSSES)}")
        if min(self.height, self.width) < 4 or max(self.height, self.width) > 64:
            raise ValueError(f"image side must be 4..64, got {self.height}x{self.width}")

    def to_dict(self) -> dict:
        return asdict(self)


class GAN(GenerativeModel):
    family: ClassVar[str] = "gan"
    betas: ClassVar[tuple[float, float]] = (0.5, 0.999)

    def __init__(self, arch: GANArch) -> None:
        super().__init__()
        self.arch = arch
        self.gen = ConvDecoder(arch.latent_dim, arch.ch, arch.height, arch.width, arch.channels)
        self.disc_trunk = ConvEncoder(arch.disc_ch, arch.height, arch.width, arch.channels, spectral=True)
        self.disc_head = nn.utils.parametrizations.spectral_norm(nn.Linear(self.disc_trunk.out_dim, 1))

    @property
    def generator(self) -> nn.Module:
        return self.gen

    def discriminate(self, x: torch.Tensor) -> torch.Tensor:
        return self.disc_head(self.disc_trunk(x)).squeeze(1)

    def train_groups(self) -> dict[str, list[nn.Parameter]]:
        disc = list(self.disc_trunk.parameters()) + list(self.disc_head.parameters())
        return {"disc": disc, "gen": list(self.gen.parameters())}

    def group_loss(self, group: str, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        z = self.latents(len(x), generator).to(x.device)
        if group == "disc":
            with torch.no_grad():
                fake = self.sample(z)
            real_s, fake_s = self.discriminate(x), self.discriminate(fake)
            if self.arch.loss == "hinge":
                return F.relu(1 - real_s).mean() + F.relu(1 + fake_s).mean()
            return F.softplus(-real_s).mean() + F.softplus(fake_s).mean()
        if group == "gen":
            fake_s = self.discriminate(self.sample(z))
            return -fake_s.mean() if self.arch.loss == "hinge" else F.softplus(-fake_s).mean()
        raise ValueError(f"unknown GAN parameter group {group!r}")
