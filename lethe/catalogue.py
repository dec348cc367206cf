"""The one list of names: model families (with their kind), unlearning methods and request kinds.

Names only: this module imports nothing heavy (no torch, no lethe.models), so the configuration,
the CLI and the pipeline definitions can read it cheaply. Everything that lists families or methods
reads them from here; the model registry (lethe/models/families.py) and the method registry
(lethe/methods) are checked against it.

Two kinds of family (DESIGN.md 2.3): image-to-image families ("i2i") take masked images and unlearn
with the methods of lethe.methods; unconditional generators ("generator") unlearn a feature of what
they generate, with a feature method and a request of kind "feature".
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from typing import Literal, get_args

FamilyKind = Literal["i2i", "generator"]
RequestKind = Literal["classes", "ids", "feature"]

# family name -> kind, in the order every listing uses (CLI choices, error messages, registries)
FAMILY_KINDS: Mapping[str, FamilyKind] = {
    "mae": "i2i",
    "vqgan": "i2i",
    "diffusion": "i2i",
    "hf-vitmae": "i2i",
    "diffusers-inpaint": "i2i",
    "gan": "generator",
    "vae": "generator",
}
FAMILIES: tuple[str, ...] = tuple(FAMILY_KINDS)
I2I_FAMILIES: tuple[str, ...] = tuple(n for n, k in FAMILY_KINDS.items() if k == "i2i")
GENERATOR_FAMILIES: tuple[str, ...] = tuple(n for n, k in FAMILY_KINDS.items() if k == "generator")
# Adapters over other libraries' models: a run may start from the user's `save_pretrained` folder
# (--source-model PATH) and the unlearned model is handed back in that format too.
FOLDER_FAMILIES: tuple[str, ...] = ("hf-vitmae", "diffusers-inpaint")

# Methods of the image-to-image families (lethe.methods.get_method).
I2I_METHODS: tuple[str, ...] = (
    "encoder_noise",
    "max_loss",
    "noisy_label",
    "retain_label",
    "random_encoder",
    "finetune_retain",
    "decouple_retain",
)
# Methods of the generator families (lethe.methods.latent_feature).
FEATURE_METHODS: tuple[str, ...] = ("latent_feature",)
# Not a method: the tune step searches the image-to-image methods per request and the unlearn step
# runs the one it chose (lethe.pipeline.auto).
AUTO = "auto"
METHODS: tuple[str, ...] = I2I_METHODS + FEATURE_METHODS

REQUEST_KINDS: tuple[str, ...] = get_args(RequestKind)


# Plug-in families (lethe.models.plugins): image-to-image models of the user's own, named by dotted
# path (package.module:Class) or by an entry point of this group.
PLUGIN_GROUP = "lethe.families"
PLUGIN_SECTION = "plugin"  # their settings: config model.plugin


def is_plugin(name: str) -> bool:
    """Whether `name` names a plug-in family (a built-in name never does); imports nothing."""
    if name in FAMILY_KINDS:
        return False
    return ":" in name or bool(importlib.metadata.entry_points(group=PLUGIN_GROUP, name=name))


def check_family(name: str) -> str:
    """`name` if it is a family (built in, or a plug-in's name); else ValueError naming the families."""
    if name not in FAMILY_KINDS and not is_plugin(name):
        raise ValueError(
            f"unknown family {name!r}; expected one of {', '.join(FAMILIES)}, or a plug-in "
            f"(package.module:Class, or an entry point of group {PLUGIN_GROUP})"
        )
    return name


def check_method(name: str) -> str:
    """`name` if it is a method; else ValueError naming the methods."""
    if name not in METHODS and name != AUTO:
        raise ValueError(f"unknown method {name!r}; expected {AUTO} or one of {', '.join(METHODS)}")
    return name


def section_key(family: str) -> str:
    """The family's section under `model` in the configuration (hf-vitmae -> hf_vitmae)."""
    return PLUGIN_SECTION if is_plugin(family) else check_family(family).replace("-", "_")


def family_kind(name: str) -> FamilyKind:
    """ "i2i" or "generator" (every plug-in is image-to-image); ValueError for a name that is not a family."""
    return FAMILY_KINDS.get(check_family(name), "i2i")


def is_generator(name: str) -> bool:
    """True for an unconditional generator family (GAN, VAE)."""
    return family_kind(name) == "generator"


def methods_for(family: str) -> tuple[str, ...]:
    """The methods a family can unlearn with."""
    return FEATURE_METHODS if is_generator(family) else I2I_METHODS
