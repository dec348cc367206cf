"""Model families and the checkpoint format."""

from lethe.models.checkpoint import build_model, load_checkpoint, save_checkpoint
from lethe.models.featnet import FeatNet, FeatNetArch
from lethe.models.mae import MAE, MAEArch, auto_patch, masked_mse

__all__ = [
    "MAE",
    "MAEArch",
    "FeatNet",
    "FeatNetArch",
    "auto_patch",
    "masked_mse",
    "build_model",
    "load_checkpoint",
    "save_checkpoint",
]
