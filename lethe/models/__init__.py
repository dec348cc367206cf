"""Model families and the checkpoint format."""

from lethe.models.checkpoint import build_model, load_checkpoint, save_checkpoint
from lethe.models.diffusion import Diffusion, DiffusionArch
from lethe.models.families import FAMILIES, Family, family_names, get_family
from lethe.models.featnet import FeatNet, FeatNetArch
from lethe.models.layers import I2IModel, masked_mse
from lethe.models.mae import MAE, MAEArch, auto_patch
from lethe.models.vqgan import VQGAN, VQGANArch

__all__ = [
    "FAMILIES",
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
