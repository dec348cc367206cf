"""`RunConfig`: every section of one run, its cross-field validation and the paths and cache
digests derived from it."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lethe import catalogue, digests
from lethe.config.base import _Strict
from lethe.config.data import DataConfig, RequestConfig
from lethe.config.families import ModelConfig
from lethe.config.requests import RequestsConfig
from lethe.config.runtime import (
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
    EvalConfig,
    FeatNetConfig,
    FeatureUnlearnConfig,
    TrainConfig,
    TuneConfig,
    UnlearnConfig,
)


class RunConfig(_Strict):
    preset: Literal["smoke", "demo"] = "demo"
    seed: int = 0
    workdir: str = "runs/default"
    cache_dir: str | None = Field(None, description="None: <workdir>/../cache, shared by runs")
    cache: CacheConfig = Field(default_factory=CacheConfig)
    family: str = "mae"
    # auto: the tune step chooses the method, alpha and lr per request (lethe.pipeline.auto);
    # a generator family's default is its feature method instead.
    method: str = Field(catalogue.AUTO, description="an unlearning method, or auto (chosen per request)")
    source_model: str | None = Field(
        None,
        description="models:/NAME/VERSION or models:/NAME@ALIAS: unlearn this registered model "
        "instead of pretraining one; the result becomes a new version of NAME. Families with a folder "
        "format (hf-vitmae, diffusers-inpaint) also take a save_pretrained folder, local or s3://",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    request: RequestConfig = Field(default_factory=RequestConfig)
    requests: RequestsConfig = Field(default_factory=RequestsConfig)
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
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

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
        v = v.strip()
        if is_registry_source(v):
            parse_source_model(v)
        elif re.match(r"^[A-Za-z][\w+.-]*:/", v) and not v.startswith("s3://"):
            raise ValueError(
                "source_model must be models:/NAME/VERSION, models:/NAME@ALIAS, a local "
                f"save_pretrained folder or s3://bucket/prefix, got {v!r}"
            )
        elif "://" not in v and not Path(v).is_dir():
            # what the folder must hold is the family's to say (checked before the run starts)
            raise ValueError(f"source_model {v!r} is not a save_pretrained folder (no such directory)")
        return v

    @model_validator(mode="after")
    def _one_registered_model(self) -> RunConfig:
        if self.source_model and not is_registry_source(self.source_model):
            if self.family not in catalogue.FOLDER_FAMILIES:
                raise ValueError(
                    f"a save_pretrained folder as source_model needs family "
                    f"{' or '.join(catalogue.FOLDER_FAMILIES)}, got {self.family!r}; "
                    "lethe's own families start from models:/NAME/VERSION"
                )
            return self
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
        v = catalogue.check_family(v)
        if catalogue.is_plugin(v):  # found and complete now, not halfway through a run
            from lethe.models.plugins import plugin_class

            plugin_class(v)
        return v

    @model_validator(mode="after")
    def _family_needs(self) -> RunConfig:
        if self.family == "vqgan" and self.pretrain.epochs < 2:
            raise ValueError("family vqgan needs pretrain.epochs >= 2 (tokenizer, then transformer)")
        generator = catalogue.is_generator(self.family)
        if generator and self.method == catalogue.AUTO and "method" not in self.model_fields_set:
            self.method = catalogue.FEATURE_METHODS[0]  # the default, for a family auto does not search
        if self.method == catalogue.AUTO and generator:
            raise ValueError(
                f"method auto searches the image-to-image methods; family {self.family!r} unlearns "
                f"features of what it generates: use method {' or '.join(catalogue.FEATURE_METHODS)}"
            )
        if self.method == catalogue.AUTO:
            # auto is a search: the tune step chooses the method (and its alpha / lr) per request.
            # Without an oracle it has nothing to score against and runs its first method unsearched.
            self.tune.enabled = True
        elif self.tune.enabled and self.cache.oracle == "none":
            raise ValueError(
                "tune.enabled scores trials by their distance to the oracle, and cache.oracle = none "
                "has none: set unlearn.alpha and unlearn.lr by hand, or use method auto"
            )
        elif self.method not in catalogue.methods_for(self.family):
            if generator:
                raise ValueError(
                    f"family {self.family!r} unlearns features of what it generates: use method "
                    f"{' or '.join(catalogue.FEATURE_METHODS)} (got {self.method!r})"
                )
            raise ValueError(
                f"method {self.method!r} needs a generator family "
                f"({', '.join(catalogue.GENERATOR_FAMILIES)}); got {self.family!r}"
            )
        # An image-to-image family may take a feature request (it forgets the images that show the
        # feature, like a class request); a generator can only unlearn a feature.
        if generator and self.request.kind != "feature":
            raise ValueError(
                f"request.kind {self.request.kind!r} does not fit family {self.family!r}: generator "
                f"families ({', '.join(catalogue.GENERATOR_FAMILIES)}) unlearn a feature "
                "(request.kind 'feature', --forget-feature NAME)"
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
        return catalogue.check_method(v)

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
    def digest_key_path(self) -> Path:
        """The digest key file (used when LETHE_DIGEST_KEY is unset): privacy.digest_key_file, else
        <cache_dir>/keys/digest.key."""
        if self.privacy.digest_key_file:
            return Path(self.privacy.digest_key_file).expanduser().resolve()
        return digests.default_key_file(self.cache_path)

    @property
    def signing_key_path(self) -> Path:
        """The certificate signing key file (used when LETHE_SIGNING_KEY is unset)."""
        if self.privacy.signing_key_file:
            return Path(self.privacy.signing_key_file).expanduser().resolve()
        return self.cache_path / "keys" / "signing.key"

    @property
    def tracking_uri(self) -> str:
        if self.tracking.tracking_uri:
            return self.tracking.tracking_uri
        return f"sqlite:///{self.workdir_path / 'mlflow.db'}"

    @property
    def requests_db_url(self) -> str:
        """The deletion-request store: requests.db_url, else a SQLite file next to the MLflow store."""
        if self.requests.db_url:
            return self.requests.db_url
        return f"sqlite:///{self.workdir_path / 'requests.db'}"

    @property
    def model_name(self) -> str:
        """The registered model the unlearned model joins: the source model's, else lethe-<family>."""
        if self.tracking.model_name:
            return self.tracking.model_name
        if self.source_model and is_registry_source(self.source_model):
            return parse_source_model(self.source_model)[0]
        # MLflow model names cannot hold '/' or ':' (a plug-in's dotted path has one)
        return "lethe-" + re.sub(r"[/:]", "-", self.family)

    def digest(self, *sections: str) -> str:
        """Stable digest of some config sections, for cache keys. "model" stands for the active
        family's section only, so tuning another family never invalidates this one's models."""
        dump = self.model_dump(mode="json")
        key = catalogue.section_key(self.family)
        dump["model"] = {key: dump["model"][key]}
        payload = {s: dump[s] for s in sections} if sections else dump
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
