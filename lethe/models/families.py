"""The family registry: name -> model class, arch class, how to build the arch, how it trains.

Everything family-specific that the pipeline needs goes through here, so steps, training loops,
methods and evaluation never branch on the family. `build_arch` takes the family's section of the
model config as a plain mapping (no dependency on lethe.config) plus the data shape, and returns
the arch as a dict of plain values (what checkpoints and Ray Train jobs carry).

Two kinds of family, named in lethe.catalogue: image-to-image families (`I2IFamily`: MAE, VQ-GAN,
diffusion, the `transformers` ViT-MAE and `diffusers` inpainting adapters, and plug-ins found by
lethe.models.plugins) take masked images and have an encoder split; generator families (`GeneratorFamily`:
GAN, VAE) take latents. The pipeline asks `family.kind` (or `lethe.catalogue.family_kind(name)`)
once, at the step that picks a training loop / method / evaluation, and everything past that point
uses one interface per kind (`I2IModel` or `GenerativeModel`), never the family name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from lethe import catalogue
from lethe.models import diffusers_inpaint as dfi
from lethe.models.diffusion import Diffusion, DiffusionArch
from lethe.models.gan import GAN, GANArch
from lethe.models.generative import GenerativeModel
from lethe.models.hf_vitmae import (
    HFViTMAE,
    HFViTMAEArch,
    auto_patch_square,
    folder_arch,
    load_pretrained,
    save_pretrained,
)
from lethe.models.layers import MAIN_PHASE, I2IModel
from lethe.models.mae import MAE, MAEArch, auto_patch
from lethe.models.plugins import plugin_class
from lethe.models.vae import VAE, VAEArch
from lethe.models.vqgan import TOKENIZER, TRANSFORMER, VQGAN, VQGANArch, auto_downsample

Section = Mapping[str, Any]


@dataclass(frozen=True)
class I2IFamily:
    """An image-to-image family: masked image in, image out; pretrains in phases."""

    kind: ClassVar[Literal["i2i"]] = "i2i"
    name: str
    model_cls: type[I2IModel]
    arch_cls: type
    # (model config section, height, width, channels) -> arch kwargs
    arch_fields: Callable[[Section, int, int, int], dict[str, Any]]
    # (model config section, epochs) -> the phase of each epoch
    phases: Callable[[Section, int], list[str]]
    # how pretraining draws the share of hidden cells: "fixed" (train.mask_ratio) or "cosine"
    mask_schedule: str = "fixed"
    # Adapters over another library's format (lethe.catalogue.FOLDER_FAMILIES): folder -> model,
    # and (model, folder) -> folder written the way that library's users load it.
    load_folder: Callable[[Path], I2IModel] | None = None
    save_folder: Callable[[I2IModel, Path], Path] | None = None
    # (read a file of the folder by name -> its text or None) -> arch, without reading the weights
    folder_arch: Callable[[Callable[[str], str | None]], Any] | None = None
    # arch fields the configuration decides even for a source model (evaluation settings, such as
    # the sampler's steps): the folder or registry gives the rest
    config_fields: tuple[str, ...] = ()

    def build_arch(self, section: Section, height: int, width: int, channels: int) -> dict[str, Any]:
        """Validated arch dict of plain values (building the dataclass runs its checks)."""
        return self.arch_cls(**self.arch_fields(section, height, width, channels)).to_dict()

    def cell(self, arch: Mapping[str, Any]) -> int:
        return int(self.arch_cls(**arch).cell)


@dataclass(frozen=True)
class GeneratorFamily:
    """An unconditional generator family: latents in, images out; pretrains its groups in turn."""

    kind: ClassVar[Literal["generator"]] = "generator"
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


Family = I2IFamily | GeneratorFamily


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


_HF_VITMAE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "decoder_hidden_size",
    "decoder_num_hidden_layers",
    "decoder_num_attention_heads",
    "decoder_intermediate_size",
)


def _hf_vitmae_fields(s: Section, h: int, w: int, c: int) -> dict[str, Any]:
    # ViT-MAE's position table needs whole patches on a square grid (the arch refuses anything else)
    patch = s.get("patch") or auto_patch_square(h)
    return {"height": h, "width": w, "channels": c, "patch": patch, **_pick(s, _HF_VITMAE_FIELDS)}


def _dfi_fields(s: Section, h: int, w: int, c: int) -> dict[str, Any]:
    return {
        "height": h,
        "width": w,
        "channels": c,
        "cell": s.get("cell") or auto_patch(h, w),
        "unet": dfi.unet_config(s, h, c),
        "scheduler": dfi.scheduler_config(s),
        "sample_steps": s.get("sample_steps", 10),
        "eta": s.get("eta", 0.0),
    }


def _one_phase(section: Section, epochs: int) -> list[str]:
    return [MAIN_PHASE] * epochs


def vq_phases(section: Section, epochs: int) -> list[str]:
    """Tokenizer first, then the transformer on its frozen tokens: the tokenizer gets
    `tokenizer_share` of the epochs (at least one each)."""
    if epochs < 2:
        raise ValueError("the vqgan family needs pretrain.epochs >= 2 (tokenizer, then transformer)")
    n_tok = min(epochs - 1, max(1, round(float(section.get("tokenizer_share", 0.4)) * epochs)))
    return [TOKENIZER] * n_tok + [TRANSFORMER] * (epochs - n_tok)


# One entry per family of lethe.catalogue, in its order (checked below).
FAMILY_REGISTRY: Mapping[str, Family] = {
    "mae": I2IFamily("mae", MAE, MAEArch, _mae_fields, _one_phase),
    "vqgan": I2IFamily("vqgan", VQGAN, VQGANArch, _vq_fields, vq_phases, mask_schedule="cosine"),
    "diffusion": I2IFamily("diffusion", Diffusion, DiffusionArch, _diff_fields, _one_phase),
    "hf-vitmae": I2IFamily(
        "hf-vitmae",
        HFViTMAE,
        HFViTMAEArch,
        _hf_vitmae_fields,
        _one_phase,
        load_folder=load_pretrained,
        save_folder=save_pretrained,
        folder_arch=folder_arch,
    ),
    "diffusers-inpaint": I2IFamily(
        "diffusers-inpaint",
        dfi.DiffusersInpaint,
        dfi.DiffusersInpaintArch,
        _dfi_fields,
        _one_phase,
        load_folder=dfi.load_pretrained,
        save_folder=dfi.save_pretrained,
        folder_arch=dfi.folder_arch,
        config_fields=("sample_steps", "eta"),
    ),
    "gan": GeneratorFamily("gan", GAN, GANArch, ("latent_dim", "ch", "disc_ch", "loss")),
    "vae": GeneratorFamily("vae", VAE, VAEArch, ("latent_dim", "ch", "beta")),
}


def _check_registry() -> None:
    """The registry holds exactly the catalogue's families, each under its own name and kind."""
    got = {name: (fam.name, fam.kind) for name, fam in FAMILY_REGISTRY.items()}
    want = {name: (name, kind) for name, kind in catalogue.FAMILY_KINDS.items()}
    if got != want or tuple(FAMILY_REGISTRY) != catalogue.FAMILIES:
        raise RuntimeError(f"model family registry {got} differs from lethe.catalogue {want}")


_check_registry()
if {n for n, f in FAMILY_REGISTRY.items() if getattr(f, "load_folder", None)} != set(
    catalogue.FOLDER_FAMILIES
):
    raise RuntimeError("the families with a folder format differ from lethe.catalogue.FOLDER_FAMILIES")


def get_family(name: str) -> Family:
    """The family of any catalogue name or plug-in; ValueError for a name that is not a family
    (lethe.models.plugins.PluginError, one line, for a plug-in that cannot be used)."""
    if catalogue.check_family(name) in FAMILY_REGISTRY:
        return FAMILY_REGISTRY[name]
    return _plugin_family(name)


def _plugin_family(name: str) -> I2IFamily:
    cls = plugin_class(name)
    phases = getattr(cls, "phases", None) or _one_phase
    return I2IFamily(name, cls, cls.Arch, cls.build_arch, phases)
