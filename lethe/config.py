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
IMPLEMENTED_FAMILIES = ("mae", "vqgan", "diffusion", "gan", "vae")
# Unconditional generators: they unlearn a feature of what they generate (DESIGN.md 2.3), with the
# method latent_feature and a request of kind "feature"; the other families are image-to-image.
GENERATOR_FAMILIES = ("gan", "vae")
FEATURE_METHODS = ("latent_feature",)
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
IMPLEMENTED_METHODS = METHODS
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
    # kind "feature": a visual feature ("glasses" on avataaars) or a class name (class-as-feature);
    # forget = the training images that show it, and the generator must stop producing it.
    feature: str | None = None

    @model_validator(mode="after")
    def _check(self) -> RequestConfig:
        if self.kind == "ids" and not self.ids_file:
            raise ValueError("request.kind 'ids' needs request.ids_file (a file with one id per line)")
        if self.kind == "classes" and not self.classes:
            raise ValueError("request.kind 'classes' needs at least one class name in request.classes")
        if self.kind == "feature" and not (self.feature or "").strip():
            raise ValueError("request.kind 'feature' needs request.feature (e.g. 'glasses' or a class name)")
        return self


class MAEConfig(_Strict):
    """ViT masked autoencoder; the image shape and patch size come from the data."""

    dim: int = Field(128, ge=8)
    depth: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    dec_dim: int = Field(64, ge=8)
    dec_depth: int = Field(2, ge=1)
    dec_heads: int = Field(4, ge=1)
    patch: int | None = Field(None, ge=1, description="None: chosen from the image size (<= 8x8 tokens)")

    @model_validator(mode="after")
    def _heads_divide(self) -> MAEConfig:
        _check_heads(self.dim, self.heads, "dim", "heads")
        _check_heads(self.dec_dim, self.dec_heads, "dec_dim", "dec_heads")
        return self


class VQGANConfig(_Strict):
    """VQ tokenizer (conv encoder / codebook / conv decoder, adversarial + perceptual training) and a
    MAGE-style masked-token transformer decoded with MaskGIT. Token grid <= 8x8 from the data."""

    # tokenizer
    ch: int = Field(16, ge=4, description="tokenizer base channels (doubled after the first stage)")
    downsample: int | None = Field(None, ge=0, le=4, description="stride-2 stages; None: <= 8x8 tokens")
    codebook_size: int = Field(256, ge=2)
    code_dim: int = Field(32, ge=2)
    codebook_update: Literal["ema", "gradient"] = "ema"
    ema_decay: float = Field(0.99, gt=0, lt=1)
    commitment: float = Field(0.25, ge=0)
    perceptual_weight: float = Field(0.1, ge=0, description="frozen random-conv feature loss (see vqgan.py)")
    adv_weight: float = Field(0.1, ge=0)
    adv_start_step: int = Field(200, ge=0, description="tokenizer steps before the discriminator joins")
    disc_ch: int = Field(16, ge=4)
    tokenizer_share: float = Field(0.4, gt=0, lt=1, description="share of pretrain.epochs for the tokenizer")
    # token transformer
    dim: int = Field(128, ge=8)
    depth: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    dec_dim: int = Field(64, ge=8)
    dec_depth: int = Field(2, ge=1)
    dec_heads: int = Field(4, ge=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    # MaskGIT sampler
    decode_steps: int = Field(8, ge=1)
    temperature: float = Field(1.0, ge=0, description="token sampling temperature; 0 = greedy")
    choice_temperature: float = Field(2.0, ge=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> VQGANConfig:
        _check_heads(self.dim, self.heads, "dim", "heads")
        _check_heads(self.dec_dim, self.dec_heads, "dec_dim", "dec_heads")
        return self


class DiffusionConfig(_Strict):
    """Palette-style conditional inpainting DDPM with a small UNet, sampled with DDIM."""

    # The UNet runs at half resolution (2x2 space-to-depth): at 28x28 that costs about what the MAE
    # costs per image on CPU, where a full-resolution UNet of the same width costs ~2.5x more.
    patch: int = Field(
        2, ge=1, le=4, description="space-to-depth factor: the UNet runs at 1/patch resolution"
    )
    ch: int = Field(32, ge=4, description="UNet base channels")
    mults: list[int] = Field(default_factory=lambda: [1, 2], min_length=1, max_length=4)
    res_blocks: int = Field(1, ge=1)
    attention: bool = True
    timesteps: int = Field(1000, ge=2)
    schedule: Literal["cosine", "linear"] = "cosine"
    sample_steps: int = Field(10, ge=1, description="DDIM steps at evaluation")
    eta: float = Field(0.0, ge=0, le=1, description="0 = deterministic DDIM")

    @model_validator(mode="after")
    def _steps(self) -> DiffusionConfig:
        if self.sample_steps > self.timesteps:
            raise ValueError(
                f"sample_steps ({self.sample_steps}) must not exceed timesteps ({self.timesteps})"
            )
        if any(m < 1 for m in self.mults):
            raise ValueError("mults must be positive")
        return self


class GANConfig(_Strict):
    """DCGAN-style generator + spectral-norm discriminator; the image shape comes from the data."""

    latent_dim: int = Field(64, ge=2)
    ch: int = Field(32, ge=4, description="generator channels at full resolution (doubled per stage down)")
    disc_ch: int = Field(32, ge=4)
    loss: Literal["hinge", "nonsat"] = "hinge"


class VAEConfig(_Strict):
    """Convolutional VAE, Bernoulli decoder; beta weights the KL term of the ELBO."""

    latent_dim: int = Field(32, ge=2)
    ch: int = Field(32, ge=4)
    beta: float = Field(1.0, ge=0)


def _check_heads(dim: int, heads: int, dim_name: str, heads_name: str) -> None:
    if dim % heads:
        raise ValueError(f"{dim_name} ({dim}) must be divisible by {heads_name} ({heads})")


_MAE_KEYS = frozenset(MAEConfig.model_fields)


class ModelConfig(_Strict):
    """One typed section per family; a run uses the section of `family` (the others are ignored
    and stay out of its cache keys)."""

    mae: MAEConfig = Field(default_factory=MAEConfig)
    vqgan: VQGANConfig = Field(default_factory=VQGANConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    gan: GANConfig = Field(default_factory=GANConfig)
    vae: VAEConfig = Field(default_factory=VAEConfig)

    @model_validator(mode="before")
    @classmethod
    def _legacy_flat_mae(cls, data: Any) -> Any:
        # Configs written before the families existed put MAE fields directly under `model`.
        if isinstance(data, dict) and any(k in _MAE_KEYS for k in data):
            data = dict(data)
            flat = {k: data.pop(k) for k in list(data) if k in _MAE_KEYS}
            data["mae"] = {**(data.get("mae") or {}), **flat}
        return data

    def section(self, family: str) -> dict[str, Any]:
        return getattr(self, family).model_dump(mode="json")


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


class DecoupleConfig(_Strict):
    """decouple_retain (Varshney & Torra 2025, DESIGN.md 2.2); ignored by the other methods.

    lambda = lambda_factor * (mean, or the lambda_quantile quantile, of the original model's
    per-image masked MSE on `calibration_images` held-out retain images it never saw).
    """

    lambda_factor: float = Field(1.0, gt=0, description="lambda = factor * the original's held-out error")
    lambda_quantile: float | None = Field(
        None, gt=0, lt=1, description="None: the mean of the per-image errors; else this quantile"
    )
    calibration_images: int = Field(256, ge=1, description="held-out retain images for the calibration")
    max_ascent_steps: int = Field(100, ge=1, description="decoupling always ends: at lambda or this cap")
    ascent_lr: float | None = Field(None, gt=0, description="lr of the ascent stage; None: unlearn.lr")
    # Measured on the demo (Fashion-MNIST, forget Trouser, MAE; benchmarks/methods_vs_oracle.py): 3
    # ascent steps reach lambda; then 141 retention steps with distill 1.0 pull the model back to the
    # original on forget too (forget FD 37 vs oracle 72, distance to the original 0.013 vs the
    # oracle's 0.074), while 30 steps without distillation end at forget FD 74.7 (oracle 72.4) with
    # retain FD x1.04. Distilling to the original on retain re-couples the forget behaviour.
    retain_steps: int | None = Field(
        30, ge=1, description="knowledge-retention steps; None: the usual unlearning step count"
    )
    distill: float = Field(0.0, ge=0, description="weight of distillation to the original on retain; 0: off")


class UnlearnConfig(_Strict):
    alpha: float = Field(0.2, ge=0)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(64, ge=1, description="per side: forget and retain batches each")
    # Measured on the demo (Fashion-MNIST, forget Trouser, 2 cores, one original/oracle pair, see
    # README "Measured"): 1.5 passes at lr 5e-4: forget FD x5.66, retain FD x1.021, PSNR -0.06 dB,
    # unlearning/oracle loop time 0.15; 0.5 passes at lr 1e-3: forget FD x5.64, retain FD x1.023,
    # PSNR -0.15 dB, loop time 0.07; 0.5 at 5e-4: retain FD x1.069; 0.3 at 1e-3: retain FD x1.059.
    # The loop's compute is proportional to passes, so 0.5 at the higher rate is the default.
    forget_passes: float = Field(0.5, gt=0)
    max_steps: int | None = Field(None, ge=1)
    weight_decay: float = Field(0.05, ge=0)
    grad_clip: float = Field(3.0, gt=0)
    warmup_frac: float = Field(0.1, ge=0, lt=1)
    noise: Literal["gaussian", "uniform", "constant"] = "gaussian"
    mask: Literal["box", "random"] = "box"
    checkpoint_every: int = Field(50, ge=1)
    decouple: DecoupleConfig = Field(default_factory=DecoupleConfig)

    def settings(self, method: str) -> dict[str, Any]:
        """What changes an unlearning run of `method`: method-specific sections only for their method
        (so adding one never renames, and re-trains, the runs of the others)."""
        d = self.model_dump()
        if method != "decouple_retain":
            d.pop("decouple")
        return d


class FeatNetConfig(_Strict):
    """The project's own classifier whose features define FD (never called FID)."""

    epochs: int = Field(2, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2e-3, gt=0)
    width: int = Field(32, ge=4)
    feat_dim: int = Field(128, ge=8)


class FeatureUnlearnConfig(_Strict):
    """Latent feature unlearning (DESIGN.md 2.3) and its evaluation; alpha, lr, batch size and
    max_steps come from `unlearn`."""

    n_label: int = Field(2000, ge=10, description="latents sampled and labelled to find the direction")
    classifier_epochs: int = Field(3, ge=1, description="binary feature classifier (feature vs not)")
    classifier_width: int = Field(32, ge=4)
    n_eval: int = Field(2000, ge=10, description="fixed seeded latents for flagged share, FD, class score")
    attack_n: int = Field(256, ge=1, description="PGD starts per model")
    attack_eps: float = Field(0.5, gt=0, description="L_inf radius around each N(0, I) start, latent units")
    attack_step: float = Field(0.05, gt=0)
    attack_steps: int = Field(20, ge=1)
    flagged_oracle_tol: float = Field(
        1.0,
        ge=0,
        description="gates: flagged share of the unlearned model <= (1 + x) * max(the oracle's, 1/n_eval), "
        "and the source's above that bound",
    )
    fd_tol: float = Field(
        0.2,
        ge=0,
        description="gate: sample FD vs held-out images without the feature, unlearned <= (1 + y) * original's",
    )


class EvalConfig(_Strict):
    box_frac: float = Field(12 / 28, gt=0, lt=1, description="side of the centre box as a share of each side")
    outpaint: bool = Field(True, description="also evaluate outpainting (border mask), under metrics_by_mask")
    outpaint_frac: float = Field(
        4 / 28, gt=0, lt=0.5, description="width of the hidden border as a share of each side"
    )
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


class StorageConfig(_Strict):
    """Where a run's outputs live. The work dir always stays local (scratch copies, local MLflow store)."""

    uri: str | None = Field(
        None,
        description="None: the work dir. s3://bucket/prefix: shards, models, Ray checkpoints, reports and "
        "state go there (endpoint, region and credentials from the AWS_* variables or AWS config)",
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is None or not v.startswith("s3://"):
            return v
        bucket = v[len("s3://") :].partition("/")[0]
        if not bucket or bucket != bucket.lower():
            raise ValueError(f"expected s3://bucket/prefix with a lower-case bucket name, got {v!r}")
        return v.rstrip("/")


class TuneConfig(_Strict):
    """Ray Tune search over unlearning alpha and learning rate, ASHA early stopping.

    Objective (lower is better), on held-out validation images disjoint from the evaluation ones:
    |log(FD_forget(unlearned) / FD_forget(oracle))| + retain_weight * max(0, FD_retain(unlearned) /
    FD_retain(original) - 1).
    """

    enabled: bool = Field(False, description="`lethe run` tunes first and unlearns with the best config")
    num_samples: int = Field(8, ge=1)
    max_concurrent_trials: int = Field(2, ge=1)
    cpus_per_trial: float = Field(
        0.25, gt=0, description="the Tune function that drives a trial's TorchTrainer"
    )
    workers_per_trial: int = Field(1, ge=1, description="Ray Train workers of each trial")
    cpus_per_worker: float = Field(0.5, gt=0, description="fractional CPUs let trials share small machines")
    alpha_range: tuple[float, float] = (0.02, 2.0)
    lr_range: tuple[float, float] = (1e-4, 2e-3)
    grace_period: int = Field(1, ge=1, description="ASHA: evaluations a trial gets before it may be stopped")
    reduction_factor: int = Field(2, ge=2)
    retain_weight: float = Field(1.0, ge=0, description="w in the objective")
    val_forget: int = Field(200, ge=8, description="validation images from the end of heldout_forget")
    val_retain: int = Field(400, ge=8, description="validation images from the end of heldout_retain")

    @field_validator("alpha_range", "lr_range")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 < lo < hi:
            raise ValueError(
                f"expected [low, high] with 0 < low < high (searched on a log scale), got {list(v)}"
            )
        return v


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
    feature: FeatureUnlearnConfig = Field(default_factory=FeatureUnlearnConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)

    @field_validator("workdir", "cache_dir")
    @classmethod
    def _local_dir(cls, v: str | None) -> str | None:
        if v is not None and "://" in v:
            raise ValueError(
                f"must be a local folder, got {v!r}; put outputs on object storage with storage.uri (--storage)"
            )
        return v

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

    @model_validator(mode="after")
    def _family_needs(self) -> RunConfig:
        if self.family == "vqgan" and self.pretrain.epochs < 2:
            raise ValueError("family vqgan needs pretrain.epochs >= 2 (tokenizer, then transformer)")
        generator = self.family in GENERATOR_FAMILIES
        if generator and self.method not in FEATURE_METHODS:
            raise ValueError(
                f"family {self.family!r} unlearns features of what it generates: use method "
                f"{' or '.join(FEATURE_METHODS)} (got {self.method!r})"
            )
        if not generator and self.method in FEATURE_METHODS:
            raise ValueError(
                f"method {self.method!r} needs a generator family ({', '.join(GENERATOR_FAMILIES)}); "
                f"got {self.family!r}"
            )
        # An image-to-image family may take a feature request (it forgets the images that show the
        # feature, like a class request); a generator can only unlearn a feature.
        if generator and self.request.kind != "feature":
            raise ValueError(
                f"request.kind {self.request.kind!r} does not fit family {self.family!r}: generator "
                f"families ({', '.join(GENERATOR_FAMILIES)}) unlearn a feature (request.kind 'feature', "
                "--forget-feature NAME)"
            )
        if generator and self.tune.enabled:
            raise ValueError(
                f"tuning is not supported for family {self.family!r} (generator families); "
                "set unlearn.alpha and unlearn.lr by hand"
            )
        if generator and not self.unlearn.max_steps:
            raise ValueError(
                "method latent_feature needs unlearn.max_steps (it reads no data to count passes)"
            )
        return self

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
        """Stable digest of some config sections, for cache keys. "model" stands for the active
        family's section only, so tuning another family never invalidates this one's models."""
        dump = self.model_dump(mode="json")
        dump["model"] = {self.family: dump["model"][self.family]}
        payload = {s: dump[s] for s in sections} if sections else dump
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _preset(name: str) -> dict[str, Any]:
    """What a preset sets whatever the family (data caps, unlearning steps, evaluation sizes)."""
    if name == "demo":
        return {"preset": "demo"}
    if name == "smoke":
        return {
            "preset": "smoke",
            "workdir": "runs/smoke",
            "data": {"max_train": 1500, "max_heldout": 400},
            "pretrain": {"epochs": 1, "batch_size": 128},
            "unlearn": {
                "batch_size": 32,
                "forget_passes": 1.0,
                "max_steps": 6,
                "checkpoint_every": 3,
                "decouple": {"max_ascent_steps": 10, "retain_steps": 5, "calibration_images": 64},
            },
            "featnet": {"epochs": 1, "width": 8, "feat_dim": 32},
            "eval": {"n_forget": 64, "n_retain": 128, "n_mia": 64, "grid_rows": 4, "batch_size": 128},
            "tune": {"num_samples": 3, "max_concurrent_trials": 2, "val_forget": 32, "val_retain": 64},
        }
    raise ConfigError("unknown preset", where="--preset", expected=" or ".join(PRESETS), seen=repr(name))


# Per (preset, family) settings, applied over the preset and under the YAML file and the flags.
# Demo timings on the 2-core development machine are in README.md ("Model families").
_TINY_TRANSFORMER = {"dim": 32, "depth": 1, "heads": 2, "dec_dim": 16, "dec_depth": 1, "dec_heads": 2}
_FAMILY_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("smoke", "mae"): {"model": {"mae": _TINY_TRANSFORMER}},
    ("smoke", "vqgan"): {
        "model": {
            "vqgan": {
                **_TINY_TRANSFORMER,
                "ch": 8,
                "codebook_size": 32,
                "code_dim": 8,
                "disc_ch": 8,
                "adv_start_step": 4,
                "decode_steps": 4,
            }
        },
        "pretrain": {"epochs": 2},
    },
    ("smoke", "diffusion"): {
        "model": {"diffusion": {"patch": 1, "ch": 8, "mults": [1, 2], "sample_steps": 4}},
        "unlearn": {"alpha": 0.1},
    },
    # Generator families: GAN recipe of Radford et al. (Adam 2e-4, beta1 0.5), no weight decay; the
    # unlearning step count is fixed (latents, no data), Adam without decay as in the paper.
    ("smoke", "gan"): {
        "pretrain": {"lr": 2e-4, "weight_decay": 0.0, "warmup_frac": 0.0, "batch_size": 64},
        "model": {"gan": {"latent_dim": 16, "ch": 8, "disc_ch": 8}},
        "unlearn": {"max_steps": 6, "batch_size": 32, "weight_decay": 0.0, "lr": 1e-4, "alpha": 1.0},
        "feature": {
            "n_label": 200,
            "classifier_epochs": 1,
            "classifier_width": 8,
            "n_eval": 128,
            "attack_n": 16,
            "attack_steps": 3,
        },
    },
    ("smoke", "vae"): {
        "pretrain": {"lr": 1e-3, "weight_decay": 0.0, "warmup_frac": 0.0, "batch_size": 64},
        "model": {"vae": {"latent_dim": 8, "ch": 8}},
        "unlearn": {"max_steps": 6, "batch_size": 32, "weight_decay": 0.0, "lr": 1e-4, "alpha": 1.0},
        "feature": {
            "n_label": 200,
            "classifier_epochs": 1,
            "classifier_width": 8,
            "n_eval": 128,
            "attack_n": 16,
            "attack_steps": 3,
        },
    },
    # Non-saturating loss: in benchmarks/feature_unlearning.py (Fashion-MNIST, 10 epochs) a width-16
    # hinge GAN dropped the Trouser mode (0.1% of samples flagged against 10% of the data); width 32
    # (the default) with this loss did not (2.5%).
    ("demo", "gan"): {
        "pretrain": {"epochs": 10, "lr": 2e-4, "weight_decay": 0.0, "warmup_frac": 0.0, "batch_size": 64},
        "model": {"gan": {"loss": "nonsat"}},
        # 400 steps left 6 of 2000 samples flagged (oracle: 0); 800 left 1 (README, feature unlearning)
        "unlearn": {
            "max_steps": 800,
            "batch_size": 64,
            "weight_decay": 0.0,
            "lr": 1e-4,
            "alpha": 1.0,
            "checkpoint_every": 100,
        },
    },
    ("demo", "vae"): {
        "pretrain": {"epochs": 10, "lr": 1e-3, "weight_decay": 0.0, "warmup_frac": 0.0, "batch_size": 64},
        "unlearn": {
            "max_steps": 400,
            "batch_size": 64,
            "weight_decay": 0.0,
            "lr": 1e-4,
            "alpha": 1.0,
            "checkpoint_every": 100,
        },
    },
    # The samplers cost several network passes per image: evaluate on 500 forget / 1000 retain.
    # 8 epochs (tokenizer 2, transformer 6): unlearned forget FD x6.36 (oracle x6.53), retain x1.116.
    # With 4 the original inpainted far worse (forget FD 32.9 vs 4.9) and unlearning reached only
    # forget x1.47 (README, "Demo runs of the other families").
    ("demo", "vqgan"): {
        "pretrain": {"epochs": 8},
        "model": {"vqgan": {"tokenizer_share": 0.25, "adv_start_step": 100}},
        "eval": {"n_forget": 500, "n_retain": 1000, "n_mia": 500},
    },
    ("demo", "diffusion"): {
        "pretrain": {"epochs": 3},
        "unlearn": {"alpha": 0.1},
        "eval": {"n_forget": 500, "n_retain": 1000, "n_mia": 500},
    },
}


def _family_preset(name: str, family: str) -> dict[str, Any]:
    return _FAMILY_PRESETS.get((name, family), {})


def _family_of(*layers: dict[str, Any] | None) -> str:
    """The family a run will use: the last layer that names one, else the default."""
    family = str(RunConfig.model_fields["family"].default)
    for layer in layers:
        if layer and isinstance(layer.get("family"), str):
            family = layer["family"]
    return family


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
    """Preset < the preset's family settings < YAML file < overrides (nested dicts, e.g.
    {"unlearn": {"alpha": 0.5}}). The family is known before merging (file or flags name it)."""
    merged: dict[str, Any] = _preset(preset or "demo")
    source = f"--preset {preset or 'demo'}"
    loaded: dict[str, Any] | None = None
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
        source = str(path)
    merged = _deep_merge(merged, _family_preset(preset or "demo", _family_of(loaded, overrides)))
    if loaded:
        merged = _deep_merge(merged, loaded)
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
