"""The registry of unconditional generator families (GAN, VAE): the second kind of family.

Image-to-image families (lethe/models/families.py) take masked images and have an encoder split;
generator families take latents. The pipeline asks `family_kind(name)` once, at the step that picks
a training loop / method / evaluation, and everything past that point uses one interface per kind
(`I2IModel` or `GenerativeModel`), never the family name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from lethe.models.gan import GAN, GANArch
from lethe.models.generative import GenerativeModel
from lethe.models.vae import VAE, VAEArch

Section = Mapping[str, Any]
FamilyKind = Literal["i2i", "generator"]


@dataclass(frozen=True)
class GeneratorFamily:
    name: str
    model_cls: type[GenerativeModel]
    arch_cls: type
    fields: tuple[str, ...]  # the config section's fields that are arch fields

    def build_arch(self, section: Section, height: int, width: int, channels: int) -> dict[str, Any]:
        """Validated arch dict of plain values (building the dataclass runs its checks)."""
        picked = {k: section[k] for k in self.fields if k in section}
        return self.arch_cls(height=height, width=width, channels=channels, **picked).to_dict()

    def train_groups(self, arch: Mapping[str, Any]) -> list[str]:
        return list(self.model_cls(self.arch_cls(**arch)).train_groups())


GENERATOR_FAMILIES: dict[str, GeneratorFamily] = {
    "gan": GeneratorFamily("gan", GAN, GANArch, ("latent_dim", "ch", "disc_ch", "loss")),
    "vae": GeneratorFamily("vae", VAE, VAEArch, ("latent_dim", "ch", "beta")),
}


def get_generator_family(name: str) -> GeneratorFamily:
    if name not in GENERATOR_FAMILIES:
        raise ValueError(f"unknown generator family {name!r}; implemented: {', '.join(GENERATOR_FAMILIES)}")
    return GENERATOR_FAMILIES[name]


def family_kind(name: str) -> FamilyKind:
    """ "generator" for GAN / VAE, "i2i" for every other family name."""
    return "generator" if name in GENERATOR_FAMILIES else "i2i"
