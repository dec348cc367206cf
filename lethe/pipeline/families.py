"""The step-side interface of the run's family: image-to-image or generator (lethe.catalogue)."""

from __future__ import annotations

from lethe.catalogue import family_kind
from lethe.config import RunConfig
from lethe.pipeline.family_api import StepFamily
from lethe.pipeline.generator import Generator
from lethe.pipeline.i2i import ImageToImage

_KINDS: dict[str, StepFamily] = {"i2i": ImageToImage(), "generator": Generator()}


def for_config(cfg: RunConfig) -> StepFamily:
    return _KINDS[family_kind(cfg.family)]
