"""Model families and the checkpoint format. Family names and kinds live in lethe.catalogue."""

from lethe.models.checkpoint import build_model, load_checkpoint, save_checkpoint
from lethe.models.diffusion import Diffusion, DiffusionArch
from lethe.models.families import FAMILY_REGISTRY, Family, GeneratorFamily, I2IFamily, get_family
from lethe.models.featnet import FeatNet, FeatNetArch
from lethe.models.gan import GAN, GANArch
from lethe.models.generative import GenerativeModel
from lethe.models.layers import I2IModel, masked_mse
from lethe.models.mae import MAE, MAEArch, auto_patch
from lethe.models.vae import VAE, VAEArch
from lethe.models.vqgan import VQGAN, VQGANArch

__all__ = [
    "FAMILY_REGISTRY",
    "GAN",
    "GANArch",
    "GenerativeModel",
    "GeneratorFamily",
    "VAE",
    "VAEArch",
    "Diffusion",
    "DiffusionArch",
    "Family",
    "FeatNet",
    "FeatNetArch",
    "I2IFamily",
    "I2IModel",
    "MAE",
    "MAEArch",
    "VQGAN",
    "VQGANArch",
    "auto_patch",
    "build_model",
    "get_family",
    "load_checkpoint",
    "masked_mse",
    "save_checkpoint",
]
