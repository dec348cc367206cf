"""The interface of unconditional generator families (GAN, VAE) and their shared conv blocks.

Generator families are a second kind of family, beside the image-to-image ones of
lethe/models/layers.py `I2IModel`: they have no masks and no encoder split, but a latent space.
Feature unlearning (lethe/methods/latent_feature.py) and its evaluation only use this interface:
`latent_dim`, `sample(z)`, `generator_parameters()`; pretraining only uses `train_groups()` and
`group_loss()`, so neither branches on the family.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

# Spatial side of the first feature map of the generator / last one of a discriminator or encoder.
BASE_SIDE = 4


def up_stages(height: int, width: int) -> int:
    """Stride-2 stages from a 4x4 map to a square side >= max(H, W): 28 -> 3 (32), 64 -> 4, 8 -> 1."""
    return max(1, math.ceil(math.log2(max(height, width) / BASE_SIDE)))


def gen_norm(ch: int) -> nn.GroupNorm:
    # No batch statistics: g(z) of one latent does not depend on the rest of its batch, so the PGD
    # attack and the feature labelling treat samples independently, and train / eval outputs agree
    # (the unlearning target f(z_hat) is the same network the user samples).
    groups = next(g for g in (8, 4, 2, 1) if ch % g == 0)
    return nn.GroupNorm(groups, ch)


class ConvDecoder(nn.Module):
    """DCGAN-style: linear to a 4x4 map, stride-2 transposed convs halving channels, 3x3 conv out,
    sigmoid, centre crop to (H, W). The GAN generator and the VAE decoder."""

    def __init__(self, latent_dim: int, ch: int, height: int, width: int, channels: int) -> None:
        super().__init__()
        self.height, self.width = height, width
        n = up_stages(height, width)
        top = ch * 2 ** (n - 1)
        self.fc = nn.Linear(latent_dim, top * BASE_SIDE * BASE_SIDE)
        self.top = top
        layers: list[nn.Module] = [gen_norm(top), nn.ReLU()]
        c = top
        for i in range(n):
            nxt = max(ch, c // 2) if i < n - 1 else ch
            layers += [nn.ConvTranspose2d(c, nxt, 4, 2, 1), gen_norm(nxt), nn.ReLU()]
            c = nxt
        layers += [nn.Conv2d(c, channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(len(z), self.top, BASE_SIDE, BASE_SIDE)
        logits = self.net(h)
        return crop(logits, self.height, self.width)


class ConvEncoder(nn.Module):
    """Stride-2 convs from the (zero-padded, square) image down to 4x4, then flatten:
    the GAN discriminator trunk and the VAE encoder."""

    def __init__(
        self, ch: int, height: int, width: int, channels: int, spectral: bool = False, slope: float = 0.2
    ) -> None:
        super().__init__()
        self.side = BASE_SIDE * 2 ** up_stages(height, width)
        n = up_stages(height, width)
        wrap = nn.utils.parametrizations.spectral_norm if spectral else (lambda m: m)
        layers: list[nn.Module] = []
        c = channels
        for i in range(n):
            nxt = ch * 2**i
            layers += [wrap(nn.Conv2d(c, nxt, 4, 2, 1)), nn.LeakyReLU(slope)]
            c = nxt
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.out_dim = c * BASE_SIDE * BASE_SIDE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.side - x.shape[-2], self.side - x.shape[-1]
        x = nn.functional.pad(x * 2 - 1, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return self.net(x)


def crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centre crop (B, C, S, S) -> (B, C, height, width); the inverse of ConvEncoder's padding."""
    top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


class GenerativeModel(nn.Module):
    """An unconditional generator x = g(z), z ~ N(0, I), images in [0, 1]."""

    family: ClassVar[str] = ""
    arch: Any
    # Pretraining optimiser betas: GANs want a short first-moment memory (Radford et al. 2016).
    betas: ClassVar[tuple[float, float]] = (0.9, 0.999)

    @property
    def latent_dim(self) -> int:
        return int(self.arch.latent_dim)

    @property
    def generator(self) -> nn.Module:
        """The module g with g(z) -> logits; `sample` applies the sigmoid."""
        raise NotImplementedError

    def sample(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, C, H, W) in [0, 1]."""
        return torch.sigmoid(self.generator(z))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # forward is sample, so DDP sees the generator call of a feature-unlearning step.
        return self.sample(z)

    def latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator)

    def generator_parameters(self) -> list[nn.Parameter]:
        """What feature unlearning fine-tunes; the rest (discriminator / encoder) stays frozen."""
        return list(self.generator.parameters())

    def train_groups(self) -> dict[str, list[nn.Parameter]]:
        """Pretraining parameter groups, stepped in this order on every batch, one optimiser each."""
        raise NotImplementedError

    def group_loss(self, group: str, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The loss that trains `group` on a batch of real images x."""
        raise NotImplementedError
