"""A small convolutional VAE (Kingma & Welling 2014) whose shape comes from the data.

Decoder p(x|z): ConvDecoder with Bernoulli pixel likelihood (images in [0, 1]); encoder q(z|x):
ConvEncoder + linear mean / log-variance. Loss: the negative ELBO with a configurable KL weight
beta (Higgins et al. 2017), per pixel so the learning rate does not depend on the image size.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lethe.models.generative import ConvDecoder, ConvEncoder, GenerativeModel


@dataclass(frozen=True)
class VAEArch:
    height: int
    width: int
    channels: int
    latent_dim: int = 32
    ch: int = 32
    beta: float = 1.0

    def __post_init__(self) -> None:
        if min(self.height, self.width) < 4 or max(self.height, self.width) > 64:
            raise ValueError(f"image side must be 4..64, got {self.height}x{self.width}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")

    def to_dict(self) -> dict:
        return asdict(self)


class VAE(GenerativeModel):
    family: ClassVar[str] = "vae"

    def __init__(self, arch: VAEArch) -> None:
        super().__init__()
        self.arch = arch
        self.enc = ConvEncoder(arch.ch, arch.height, arch.width, arch.channels)
        self.mu = nn.Linear(self.enc.out_dim, arch.latent_dim)
        self.logvar = nn.Linear(self.enc.out_dim, arch.latent_dim)
        self.dec = ConvDecoder(arch.latent_dim, arch.ch, arch.height, arch.width, arch.channels)

    @property
    def generator(self) -> nn.Module:
        return self.dec

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.enc(x)
        return self.mu(h), self.logvar(h).clamp(-10, 10)

    def elbo_terms(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction NLL, KL) per pixel, batch means."""
        mu, logvar = self.encode(x)
        eps = torch.randn(mu.shape, generator=generator).to(mu.device)
        z = mu + eps * (0.5 * logvar).exp()
        n_pix = x[0].numel()
        nll = F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="sum") / (len(x) * n_pix)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum() / (len(x) * n_pix)
        return nll, kl

    def train_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"main": list(self.parameters())}

    def group_loss(self, group: str, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if group != "main":
            raise ValueError(f"unknown VAE parameter group {group!r}")
        nll, kl = self.elbo_terms(x, generator)
        return nll + self.arch.beta * kl
