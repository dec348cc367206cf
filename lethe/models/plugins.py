"""Plug-in families: a user's own image-to-image model, found by entry point or by dotted path.

`--family NAME` (config `family`) names a plug-in either as `package.module:Class` or as the name of
an entry point of group `lethe.families` (in the plug-in's pyproject.toml:
`[project.entry-points."lethe.families"] my-ae = "my_pkg.models:MyAE"`). The class is the whole
contract (docs/families/plugins.md has a complete example to copy):

  class MyAE(lethe.models.I2IModel):
      Arch = MyArch                      # a dataclass: MyArch(**arch) rebuilds it; .cell, .to_dict()
      @staticmethod
      def build_arch(section, height, width, channels) -> dict  # model.plugin + the data's shape
      def __init__(self, arch: MyArch)
      def encoder_parameters(self) -> list[nn.Parameter]       # what encoder-only methods train
      def _encode(self, x, mask, seed) -> Tensor                # what encoder re-targeting compares
      def _predict(self, x, mask, seed) -> Tensor               # (B, C, H, W) in [0, 1], differentiable
      def training_loss(self, x, mask, generator, phase) -> Tensor  # the pretraining loss
      def inpaint(self, x, mask, seed=0) -> Tensor              # the output users see: visible kept
  optional: full_parameters(), phase_parameters(phase), sampler_info(), phases(section, epochs)

Weights are saved and loaded by lethe (its checkpoint: the arch dict + the state dict, read
weights-only), so a plug-in needs no save / load of its own. Only image-to-image plug-ins exist.
The module must be importable wherever lethe runs, Ray workers included (installed, or on PYTHONPATH).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
from typing import Any

from lethe.catalogue import PLUGIN_GROUP as ENTRY_POINT_GROUP
from lethe.models.layers import I2IModel

# Each part a plug-in must define, and what it is for (the one line a plug-in without it gets).
REQUIRED: dict[str, str] = {
    "Arch": "a dataclass type: Arch(**arch) rebuilds the architecture, with .cell and .to_dict()",
    "build_arch": "build_arch(section, height, width, channels) -> the arch as a dict of plain values",
    "encoder_parameters": "encoder_parameters() -> the parameters encoder-only methods train",
    "_encode": "_encode(x, mask, seed) -> the activations encoder re-targeting compares",
    "_predict": "_predict(x, mask, seed) -> (B, C, H, W) in [0, 1], every pixel predicted",
    "training_loss": "training_loss(x, mask, generator, phase) -> the scalar pretraining loss",
    "inpaint": "inpaint(x, mask, seed) -> the output users see, visible pixels kept",
}


class PluginError(ValueError):
    """A plug-in family that cannot be found or lacks a part (one line, naming it)."""


def _load_class(name: str) -> Any:
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            obj: Any = importlib.import_module(module)
        except ImportError as e:
            raise PluginError(f"plug-in family {name!r}: cannot import {module!r} ({e})") from e
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise PluginError(f"plug-in family {name!r}: {module!r} has no {attr!r}")
            obj = getattr(obj, part)
        return obj
    found = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        raise PluginError(f"no plug-in family {name!r} (no entry point of group {ENTRY_POINT_GROUP})")
    try:
        return next(iter(found)).load()
    except Exception as e:  # noqa: BLE001 - whatever the plug-in's import raises is one line
        raise PluginError(f"plug-in family {name!r}: its entry point does not load ({e})") from e


def _check(name: str, cls: Any) -> None:
    if not isinstance(cls, type) or not issubclass(cls, I2IModel):
        raise PluginError(f"plug-in family {name!r} is not a subclass of lethe.models.I2IModel")
    for part, what in REQUIRED.items():
        value = getattr(cls, part, None)
        inherited = value is not None and value is getattr(I2IModel, part, object())
        if value is None or inherited:
            raise PluginError(f"plug-in family {name!r} lacks {part}: {what}")
    if not dataclasses.is_dataclass(cls.Arch):
        raise PluginError(f"plug-in family {name!r}: Arch must be a dataclass, got {cls.Arch!r}")


@functools.cache
def plugin_class(name: str) -> type[I2IModel]:
    """The checked class of plug-in family `name`; PluginError naming what is wrong."""
    cls = _load_class(name)
    _check(name, cls)
    _loaded.add(name)
    # The checkpoint records a model's family by this attribute: the name the user gave.
    cls.family = name
    return cls


def loaded(name: str) -> bool:
    """Whether this process has already loaded plug-in `name` (the configured family)."""
    return name in _loaded


_loaded: set[str] = set()
