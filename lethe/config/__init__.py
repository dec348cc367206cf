"""One typed configuration object per run, validated at the edge.

Every entry point (CLI, ray_jobs, KFP components) builds a `RunConfig` from a preset, an optional
YAML file and flag overrides, then hands it on. Every field has a default that works.

Modules: `base` (the strict section base), `data` (data and request sections), `families` (the
model section, one per family), `training` (pretraining, unlearning, feature network, evaluation
and tuning recipes), `runtime` (resources, storage, model cache, tracking, gates, privacy), `requests` (the
deletion-request store), `run` (`RunConfig` and its
cross-field validation), `presets` (presets and their per-family settings) and `loading`
(`build_config`, `config_from_json`).
"""

from __future__ import annotations

from lethe.config.data import DEFAULT_DATASET, DataConfig, RequestConfig
from lethe.config.families import (
    DiffusionConfig,
    GANConfig,
    MAEConfig,
    ModelConfig,
    VAEConfig,
    VQGANConfig,
)
from lethe.config.loading import build_config, config_from_json
from lethe.config.presets import PRESETS
from lethe.config.requests import RequestsConfig
from lethe.config.run import RunConfig
from lethe.config.runtime import (
    SOURCE_MODEL_RE,
    CacheConfig,
    GatesConfig,
    PrivacyConfig,
    ResourcesConfig,
    StorageConfig,
    TrackingConfig,
    is_registry_source,
    parse_source_model,
)
from lethe.config.training import (
    DecoupleConfig,
    EvalConfig,
    FeatNetConfig,
    FeatureUnlearnConfig,
    TrainConfig,
    TuneConfig,
    UnlearnConfig,
)

__all__ = [
    "DEFAULT_DATASET",
    "PRESETS",
    "SOURCE_MODEL_RE",
    "CacheConfig",
    "DataConfig",
    "DecoupleConfig",
    "DiffusionConfig",
    "EvalConfig",
    "FeatNetConfig",
    "FeatureUnlearnConfig",
    "GANConfig",
    "GatesConfig",
    "MAEConfig",
    "ModelConfig",
    "PrivacyConfig",
    "RequestConfig",
    "RequestsConfig",
    "ResourcesConfig",
    "RunConfig",
    "StorageConfig",
    "TrackingConfig",
    "TrainConfig",
    "TuneConfig",
    "UnlearnConfig",
    "VAEConfig",
    "VQGANConfig",
    "build_config",
    "config_from_json",
    "is_registry_source",
    "parse_source_model",
]
