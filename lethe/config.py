"""One typed configuration object per run, validated at the edge.

Every entry point (CLI, ray_jobs, KFP components) builds a `RunConfig` from a preset, an optional
YAML file and flag overrides, then hands it on. Every field has a default that works.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lethe.errors import ConfigError

FAMILIES = ("mae", "vqgan", "diffusion", "gan", "vae")
IMPLEMENTED_FAMILIES = ("mae",)
METHODS = (
    "encoder_noise",
    "max_loss",
    "noisy_label",
    "retain_label",
    "random_encoder",
    "finetune_retain",
    "decouple_retain",
    "latent_feature",
)
IMPLEMENTED_METHODS = METHODS[:6]
PRESETS = ("smoke", "demo")

DEFAULT_DATASET = "fashion-mnist"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    dataset: str = DEFAULT_DATASET
    # Datasets without a train/test subset column hold out this fraction (by id hash).
    heldout_fraction: float = Field(0.15, gt=0.0, lt=0.9)
    # Cap on training rows (deterministic by id hash); None = all. The smoke preset uses it.
    max_train: int | None = Field(None, ge=10)
    max_heldout: int | None = Field(None, ge=10)


class RequestConfig(_Strict):
    kind: Literal["classes", "ids", "feature"] = "classes"
    classes: list[str] = Field(default_factory=lambda: ["Trouser"])
    ids_file: str | None = None

    @model_validator(mode="after")
    def _check(self) -> RequestConfig:
        if self.kind == "ids" and not self.ids_file:
            raise ValueError("request.kind 'ids' needs request.ids_file (a file with one id per line)")
        if self.kind == "classes" and not self.classes:
            raise ValueError("request.kind 'classes' needs at least one class name in request.classes")
        if self.kind == "feature":
            raise ValueError("request.kind 'feature' (GAN/VAE feature unlearning) is not implemented yet")
        return self


class ModelConfig(_Strict):
    """MAE architecture; the image shape and patch size come from the data."""

    dim: int = Field(128, ge=8)
    depth: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    dec_dim: int = Field(64, ge=8)
    dec_depth: int = Field(2, ge=1)
    dec_heads: int = Field(4, ge=1)
    patch: int | None = Field(None, ge=1, description="None: chosen from the image size (<= 8x8 tokens)")

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.dim % self.heads:
            raise ValueError(f"model.dim ({self.dim}) must be divisible by model.heads ({self.heads})")
        if self.dec_dim % self.dec_heads:
            raise ValueError(
                f"model.dec_dim ({self.dec_dim}) must be divisible by model.dec_heads ({self.dec_heads})"
            )
        return self


class TrainConfig(_Strict):
    """Recipe shared by the original model and the oracle (the oracle must use the same one)."""

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1.5e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    warmup_frac: float = Field(0.1, ge=0, lt=1)
    mask_ratio: float = Field(0.5, gt=0, lt=1)
    # Share of pretraining batches masked with the evaluation box instead of random patches.
    box_mask_prob: float = Field(0.0, ge=0, le=1)


class UnlearnConfig(_Strict):
    alpha: float = Field(0.2, ge=0)
    lr: float = Field(5e-4, gt=0)
    batch_size: int = Field(64, ge=1, description="per side: forget and retain batches each")
    forget_passes: float = Field(1.5, gt=0)
    max_steps: int | None = Field(None, ge=1)
    weight_decay: float = Field(0.05, ge=0)
    grad_clip: float = Field(3.0, gt=0)
    warmup_frac: float = Field(0.1, ge=0, lt=1)
    noise: Literal["gaussian", "uniform", "constant"] = "gaussian"
    mask: Literal["box", "random"] = "box"
    checkpoint_every: int = Field(50, ge=1)


class FeatNetConfig(_Strict):
    """The project's own classifier whose features define FD (never called FID)."""

    epochs: int = Field(2, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2e-3, gt=0)
    width: int = Field(32, ge=4)
    feat_dim: int = Field(128, ge=8)


class EvalConfig(_Strict):
    box_frac: float = Field(12 / 28, gt=0, lt=1, description="side of the centre box as a share of each side")
    n_forget: int = Field(1000, ge=2)
    n_retain: int = Field(2000, ge=2)
    n_mia: int = Field(1000, ge=2)
    grid_rows: int = Field(8, ge=1, le=32)
    batch_size: int = Field(500, ge=1)


class ResourcesConfig(_Strict):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, ge=1, description="None: cores / workers")
    ray_address: str | None = None
    ray_num_cpus: int | None = Field(None, ge=1, description="logical CPUs for a local Ray; None: 2x cores")
    worker_cache_mb: float = Field(
        1024.0, ge=0, description="keep a worker's shard in memory below this; 0: stream"
    )


# MLflow's rules for alias names (mlflow.utils.validation._validate_model_alias_name), checked here
# so a bad alias fails before any work instead of after the model version exists.
_ALIAS_RE = re.compile(r"^[\w\-]{1,255}$")
_RESERVED_ALIAS_RE = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)
# models:/NAME/VERSION or models:/NAME@ALIAS (DESIGN.md 3.2: the source model of an unlearning run).
SOURCE_MODEL_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w\-]+))$")


def parse_source_model(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/NAME/VERSION` -> (NAME, VERSION, None); `models:/NAME@ALIAS` -> (NAME, None, ALIAS)."""
    m = SOURCE_MODEL_RE.match(uri.strip())
    if not m:
        raise ValueError(f"source_model must be models:/NAME/VERSION or models:/NAME@ALIAS, got {uri!r}")
    return m["name"], m["version"], m["alias"]


class TrackingConfig(_Strict):
    tracking_uri: str | None = Field(None, description="None: sqlite store in the work dir")
    experiment: str = "lethe"
    model_name: str | None = Field(
        None, description="None: the source model's registered model, else lethe-<family>"
    )
    register_model: bool = True
    alias: str = Field("champion", description="registry alias moved to a new version when the gates pass")

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        if not _ALIAS_RE.match(v) or _RESERVED_ALIAS_RE.match(v):
            raise ValueError(
                f"alias {v!r} is not usable: letters, digits, '_' and '-' only, and not 'latest' or 'v<N>'"
            )
        return v


class GatesConfig(_Strict):
    """When `lethe promote` may move the alias to the new version (see lethe.gates).

    forget: FD_unlearned / FD_oracle on held-out forget data lies in [1/(1+x), 1+x] (as far from the
    oracle as the model may be, in either direction: under-forgetting and over-forgetting both fail).
    retain: FD_unlearned / FD_source on held-out retain data <= 1 + y, and the PSNR drop from the
    source model <= retain_psnr_drop_db. mia: |AUC - 0.5| <= z for the unlearned model.
    """

    forget_oracle_tol: float = Field(1.0, ge=0, description="x: forget FD within a factor 1+x of the oracle")
    retain_fd_tol: float = Field(0.15, ge=0, description="y: retain FD ratio to the source <= 1+y")
    retain_psnr_drop_db: float = Field(1.0, ge=0, description="retain PSNR may drop this much (dB)")
    mia_auc_tol: float = Field(0.1, ge=0, le=0.5, description="z: |MIA AUC - 0.5| <= z")


class RunConfig(_Strict):
    preset: Literal["smoke", "demo"] = "demo"
    seed: int = 0
    workdir: str = "runs/default"
    cache_dir: str | None = Field(None, description="None: <workdir>/../cache, shared by runs")
    family: str = "mae"
    method: str = "encoder_noise"
    source_model: str | None = Field(
        None,
        description="models:/NAME/VERSION or models:/NAME@ALIAS: unlearn this registered model "
        "instead of pretraining one; the result becomes a new version of NAME",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    request: RequestConfig = Field(default_factory=RequestConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: TrainConfig = Field(default_factory=TrainConfig)
    unlearn: UnlearnConfig = Field(default_factory=UnlearnConfig)
    featnet: FeatNetConfig = Field(default_factory=FeatNetConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    gates: GatesConfig = Field(default_factory=GatesConfig)

    @field_validator("source_model")
    @classmethod
    def _source_model(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        parse_source_model(v)
        return v.strip()

    @model_validator(mode="after")
    def _one_registered_model(self) -> RunConfig:
        if self.source_model and self.tracking.model_name:
            name = parse_source_model(self.source_model)[0]
            if name != self.tracking.model_name:
                raise ValueError(
                    f"tracking.model_name {self.tracking.model_name!r} differs from the source model's "
                    f"registered model {name!r}; the unlearned model is registered as a new version of the "
                    "source model, so leave tracking.model_name unset"
                )
        return self

    @field_validator("family")
    @classmethod
    def _family(cls, v: str) -> str:
        if v not in FAMILIES:
            raise ValueError(f"unknown family {v!r}; expected one of {', '.join(FAMILIES)}")
        if v not in IMPLEMENTED_FAMILIES:
            raise ValueError(
                f"family {v!r} is not implemented yet; available: {', '.join(IMPLEMENTED_FAMILIES)}"
            )
        return v

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"unknown method {v!r}; expected one of {', '.join(METHODS)}")
        if v not in IMPLEMENTED_METHODS:
            raise ValueError(
                f"method {v!r} is not implemented yet; available: {', '.join(IMPLEMENTED_METHODS)}"
            )
        return v

    # -- derived paths -------------------------------------------------------------------------
    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir).expanduser().resolve()

    @property
    def cache_path(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser().resolve()
        return self.workdir_path.parent / "cache"

    @property
    def tracking_uri(self) -> str:
        if self.tracking.tracking_uri:
            return self.tracking.tracking_uri
        return f"sqlite:///{self.workdir_path / 'mlflow.db'}"

    @property
    def model_name(self) -> str:
        """The registered model the unlearned model joins: the source model's, else lethe-<family>."""
        if self.tracking.model_name:
            return self.tracking.model_name
        if self.source_model:
            return parse_source_model(self.source_model)[0]
        return f"lethe-{self.family}"

    def digest(self, *sections: str) -> str:
        """Stable digest of some config sections, for cache keys."""
        dump = self.model_dump(mode="json")
        payload = {s: dump[s] for s in sections} if sections else dump
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _preset(name: str) -> dict[str, Any]:
    if name == "demo":
        return {"preset": "demo"}
    if name == "smoke":
        return {
            "preset": "smoke",
            "workdir": "runs/smoke",
            "data": {"max_train": 1500, "max_heldout": 400},
            "model": {"dim": 32, "depth": 1, "heads": 2, "dec_dim": 16, "dec_depth": 1, "dec_heads": 2},
            "pretrain": {"epochs": 1, "batch_size": 128},
            "unlearn": {"batch_size": 32, "forget_passes": 1.0, "max_steps": 6, "checkpoint_every": 3},
            "featnet": {"epochs": 1, "width": 8, "feat_dim": 32},
            "eval": {"n_forget": 64, "n_retain": 128, "n_mia": 64, "grid_rows": 4, "batch_size": 128},
        }
    raise ConfigError("unknown preset", where="--preset", expected=" or ".join(PRESETS), seen=repr(name))


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _format_validation_error(err: ValidationError, source: str) -> ConfigError:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(root)"
    seen = first.get("input")
    seen_s = repr(seen) if not isinstance(seen, dict) else "a mapping"
    return ConfigError(f"invalid configuration field {field}: {first['msg']}", where=source, seen=seen_s)


def build_config(
    preset: str | None = None,
    config_file: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> RunConfig:
    """Preset < YAML file < overrides (nested dicts, e.g. {"unlearn": {"alpha": 0.5}})."""
    merged: dict[str, Any] = _preset(preset or "demo")
    source = f"--preset {preset or 'demo'}"
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError("config file not found", where=str(path), expected="a YAML file")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(
                "config file is not valid YAML", where=str(path), seen=str(e).splitlines()[0]
            ) from e
        if not isinstance(loaded, dict):
            raise ConfigError("config file must hold a mapping", where=str(path), seen=type(loaded).__name__)
        merged = _deep_merge(merged, loaded)
        source = str(path)
    if overrides:
        merged = _deep_merge(merged, overrides)
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as e:
        raise _format_validation_error(e, source) from None


def config_from_json(payload: str | dict[str, Any]) -> RunConfig:
    """Rebuild a config shipped to a Ray worker / KFP component as JSON."""
    data = json.loads(payload) if isinstance(payload, str) else payload
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise _format_validation_error(e, "serialized config") from None
