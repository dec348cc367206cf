"""The family registry: name -> model class, arch class, how to build the arch, pretraining phases.

Everything family-specific that the pipeline needs goes through here, so steps, training loops,
methods and evaluation never branch on the family. `build_arch` takes the family's section of the
model config as a plain mapping (no dependency on lethe.config) plus the data shape, and returns
the arch as a dict of plain values (what checkpoints and Ray Train jobs carry).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lethe.models.diffusion import Diffusion, DiffusionArch
from lethe.models.layers import MAIN_PHASE, I2IModel
from lethe.models.mae import MAE, MAEArch, auto_patch
from lethe.models.vqgan import TOKENIZER, TRANSFORMER, VQGAN, VQGANArch, auto_downsample

Section = Mapping[str, Any]


@dataclass(frozen=True)
class Family:
    name: str
    model_cls: type[I2IModel]
    arch_cls: type
    # (model config section, height, width, channels) -> arch kwargs
    arch_fields: Callable[[Section, int, int, int], dict[str, Any]]
    # (model config section, epochs) -> the phase of each epoch
    phases: Callable[[Section, int], list[str]]
    # how pretraining draws the share of hidden cells: "fixed" (train.mask_ratio) or "cosine"
    mask_schedule: str = "fixed"

    def build_arch(self, section: Section, height: int, width: int, channels: int) -> dict[str, Any]:
        """Validated arch dict of plain values (building the dataclass runs its checks)."""
        return self.arch_cls(**self.arch_fields(section, height, width, channels)).to_dict()

    def cell(self, arch: Mapping[str, Any]) -> int:
        return int(self.arch_cls(**arch).cell)


def _pick(section: Section, names: tuple[str, ...]) -> dict[str, Any]:
    return {k: section[k] for k in names if k in section}


_MAE_FIELDS = ("dim", "depth", "heads", "mlp_ratio", "dec_dim", "dec_depth", "dec_heads")
_VQ_FIELDS = (
    "ch",
    "codebook_size",
    "code_dim",
    "codebook_update",
    "ema_decay",
    "commitment",
    "perceptual_weight",
    "adv_weight",
    "adv_start_step",
    "disc_ch",
    "dim",
    "depth",
    "heads",
    "mlp_ratio",
    "dec_dim",
    "dec_depth",
    "dec_heads",
    "label_smoothing",
    "decode_steps",
    "temperature",
    "choice_temperature",
)
_DIFF_FIELDS = (
    "patch",
    "ch",
    "mults",
    "res_blocks",
    "attention",
    "timesteps",
    "schedule",
    "sample_steps",
    "eta",
)


def _mae_fields(s: Section, h: int, w: int, c: int) -> dict[str, Any]:
    return {
        "height": h,
        "width": w,
        "channels": c,
        "patch": s.get("patch") or auto_patch(h, w),
        **_pick(s, _MAE_FIELDS),
    }


def _vq_fields(s: Section, h: int, w: int, c: int) -> dict[str, Any]:
    down = s.get("downsample")
    down = auto_downsample(h, w) if down is None else down
    return {"height": h, "width": w, "channels": c, "downsample": down, **_pick(s, _VQ_FIELDS)}


def _diff_fields(s: Section, h: int, w: int, c: int) -> dict[str, Any]:
    # Random training masks use the same cells as the MAE patches / VQ tokens, so every family is
    # trained and evaluated on the same pixel masks.
    fields = {"height": h, "width": w, "channels": c, "cell": s.get("cell") or auto_patch(h, w)}
    return {**fields, **_pick(s, _DIFF_FIELDS)}


def _one_phase(section: Section, epochs: int) -> list[str]:
    return [MAIN_PHASE] * epochs


def vq_phases(section: Section, epochs: int) -> list[str]:
    """Tokenizer first, then the transformer on its frozen tokens: the tokenizer gets
    `tokenizer_share` of the epochs (at least one each)."""
    if epochs < 2:
        raise ValueError("the vqgan family needs pretrain.epochs >= 2 (tokenizer, then transformer)")
    n_tok = min(epochs - 1, max(1, round(float(section.get("tokenizer_share", 0.4)) * epochs)))
    return [TOKENIZER] * n_tok + [TRANSFORMER] * (epochs - n_tok)


FAMILIES: dict[str, Family] = {
    "mae": Family("mae", MAE, MAEArch, _mae_fields, _one_phase),
    "vqgan": Family("vqgan", VQGAN, VQGANArch, _vq_fields, vq_phases, mask_schedule="cosine"),
    "diffusion": Family("diffusion", Diffusion, DiffusionArch, _diff_fields, _one_phase),
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; implemented: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def family_names() -> tuple[str, ...]:
    return tuple(FAMILIES)
