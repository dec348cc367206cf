"""Model families and the checkpoint format."""

from lethe.models.checkpoint import build_model, load_checkpoint, save_checkpoint
from lethe.models.diffusion import Diffusion, DiffusionArch
from lethe.models.families import FAMILIES, Family, family_names, get_family
from lethe.models.featnet import FeatNet, FeatNetArch
from lethe.models.gan import GAN, GANArch
from lethe.models.generative import GenerativeModel
from lethe.models.generator_families import (
    GENERATOR_FAMILIES,
    GeneratorFamily,
    family_kind,
    get_generator_family,
)
from lethe.models.layers import I2IModel, masked_mse
from lethe.models.mae import MAE, MAEArch, auto_patch
from lethe.models.vae import VAE, VAEArch
from lethe.models.vqgan import VQGAN, VQGANArch

__all__ = [
    "FAMILIES",
    "GAN",
    "GANArch",
    "GENERATOR_FAMILIES",
    "GenerativeModel",
    "GeneratorFamily",
    "VAE",
    "VAEArch",
    "family_kind",
    "get_generator_family",
    "Diffusion",
    "DiffusionArch",
    "Family",
    "FeatNet",
    "FeatNetArch",
    "I2IModel",
    "MAE",
    "MAEArch",
    "VQGAN",
    "VQGANArch",
    "auto_patch",
    "build_model",
    "family_names",
    "get_family",
    "load_checkpoint",
    "masked_mse",
    "save_checkpoint",
]
