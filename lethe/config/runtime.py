"""The sections of where a run executes and what it records: compute resources, output storage,
the model cache, MLflow tracking (with the registered source model) and the promotion gates."""

from __future__ import annotations

import os
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationInfo, field_validator

from lethe.config.base import (
    DATABASE_CREDENTIALS,
    MLFLOW_CREDENTIALS,
    RAY_CREDENTIALS,
    STORAGE_CREDENTIALS,
    _Strict,
    no_credentials,
)


class ResourcesConfig(_Strict):
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    torch_threads: int | None = Field(None, ge=1, description="None: cores / workers")
    ray_address: str | None = None
    ray_num_cpus: int | None = Field(None, ge=1, description="logical CPUs for a local Ray; None: 2x cores")
    worker_cache_mb: float = Field(
        1024.0,
        ge=0,
        description="pretraining data up to this size (float32) reaches every worker through the object "
        "store and stays in memory; above it each worker streams its Ray Data shard; 0: stream",
    )
    # Each Ray Train report cost ~0.5 s here (measured: 300 epochs), so many short epochs (a small data
    # set trained long) spent more time reporting than training: 300 epochs of 140 images, 174 s for
    # 29 s of training loop. A crash still loses at most this much work.
    checkpoint_interval_s: float = Field(
        20.0,
        ge=0,
        description="pretraining: checkpoint an epoch when this long passed since the last; 0: every epoch",
    )

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, v: str | None) -> str | None:
        return no_credentials(v, "the Ray address", RAY_CREDENTIALS)


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
        no_credentials(v, "storage.uri", STORAGE_CREDENTIALS)
        if v is None or not v.startswith("s3://"):
            return v
        bucket = v[len("s3://") :].partition("/")[0]
        if not bucket or bucket != bucket.lower():
            raise ValueError(f"expected s3://bucket/prefix with a lower-case bucket name, got {v!r}")
        return v.rstrip("/")


class CacheConfig(_Strict):
    """The model cache (`cache_dir`): what to do with an entry that fails its check before reuse."""

    on_corrupt: Literal["rebuild", "refuse"] = Field(
        "rebuild",
        description="a cached model whose file does not match its cache index entry (size, sha256) or "
        "does not load: rebuild it, or refuse (one line naming the command that clears the entry)",
    )
    oracle: Literal["reuse", "retrain", "sample", "none"] = Field(
        "reuse",
        description="the oracle policy: reuse the oracle cached for the same retain set (the same "
        "cumulative forget set, so the same yardstick), retrain it every run, sample: train (or "
        "reuse) it only on a keyed random share of runs (oracle_audit_share), the others judged "
        "without it (the gates that need it: not evaluated), or none: no oracle can be trained (the "
        "training data is no longer kept: see unlearn.proxy_retain), every run judged without one; "
        "the certificate says which",
    )
    oracle_audit_share: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="cache.oracle = sample: the share of runs that get an oracle, drawn from the keyed "
        "digest of the run's retain set (the same forget set draws the same answer: a night cannot be "
        "re-run until it escapes the audit); 0 = never, 1 = always. A run that tunes always gets one",
    )


# MLflow's rules for alias names (mlflow.utils.validation._validate_model_alias_name), checked here
# so a bad alias fails before any work instead of after the model version exists.
_ALIAS_RE = re.compile(r"^[\w\-]{1,255}$")
_RESERVED_ALIAS_RE = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)
# models:/NAME/VERSION or models:/NAME@ALIAS (DESIGN.md 3.2: the source model of an unlearning run).
SOURCE_MODEL_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w\-]+))$")


def is_registry_source(uri: str) -> bool:
    """models:/... (a registered version); anything else is a folder (local path or s3://)."""
    return uri.strip().startswith("models:/")


def parse_source_model(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/NAME/VERSION` -> (NAME, VERSION, None); `models:/NAME@ALIAS` -> (NAME, None, ALIAS)."""
    m = SOURCE_MODEL_RE.match(uri.strip())
    if not m:
        raise ValueError(f"source_model must be models:/NAME/VERSION or models:/NAME@ALIAS, got {uri!r}")
    return m["name"], m["version"], m["alias"]


# The tracking stores lethe can use (MLflow's, less the Unity Catalog registries and the file store
# MLflow 3 has switched off); checked before a run starts so a typo never ends in a traceback.
TRACKING_SCHEMES = "http(s)://host[:port], sqlite:///PATH, postgresql|mysql|mssql[+driver]://host/db or databricks[://profile]"
_DB_SCHEME_RE = re.compile(r"^(postgresql|mysql|mssql)(\+\w+)?$")
_FILE_STORE_ENV = "MLFLOW_ALLOW_FILE_STORE"


def check_tracking_uri(v: str) -> str:
    """`v` if it names a tracking store lethe can use, else a ValueError naming the schemes."""
    uri = v.strip()
    try:
        parts = urlsplit(uri)
    except ValueError:
        raise ValueError(f"expected {TRACKING_SCHEMES}") from None
    scheme = parts.scheme.lower()
    if scheme in ("http", "https") and parts.hostname:
        return uri
    if scheme == "sqlite" and not parts.netloc and parts.path.strip("/"):
        return uri
    if _DB_SCHEME_RE.match(scheme) and parts.hostname:
        return uri
    if uri == "databricks" or (scheme == "databricks" and parts.netloc and not parts.path.strip("/")):
        return uri
    if scheme in ("", "file") or (len(scheme) == 1 and scheme.isalpha()):  # a path, file://, C:\
        if os.environ.get(_FILE_STORE_ENV, "").lower() in ("1", "true"):
            return uri
        raise ValueError(
            f"expected {TRACKING_SCHEMES}; MLflow 3 refuses its file store (use sqlite:///PATH/mlflow.db, "
            f"or set {_FILE_STORE_ENV}=true)"
        )
    raise ValueError(f"expected {TRACKING_SCHEMES}")


class TrackingConfig(_Strict):
    tracking_uri: str | None = Field(None, description="None: sqlite store in the work dir")
    retry_s: float = Field(
        60.0,
        ge=0,
        description="how long calls to an MLflow server that stopped answering are retried (exponential "
        "backoff) before the run fails with one line; 0: no retries",
    )
    experiment: str = "lethe"
    model_name: str | None = Field(
        None, description="None: the source model's registered model, else lethe-<family>"
    )
    register_model: bool = True
    alias: str = Field("champion", description="registry alias moved to a new version when the gates pass")

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri(cls, v: str | None) -> str | None:
        # The URI travels in clear text (KFP parameters, Ray job command lines, MLflow params); MLflow
        # reads the credentials from its own variables in every process that talks to the server.
        web = not v or v.startswith(("http://", "https://"))
        no_credentials(v, "the MLflow tracking URI", MLFLOW_CREDENTIALS if web else DATABASE_CREDENTIALS)
        return None if v is None else check_tracking_uri(v)

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
    source model <= retain_psnr_drop_db. mia: the unlearned model's calibrated-attack AUC lies in
    the oracle's interval widened by z. Power checks make a gate inconclusive (never passed) when it
    cannot tell the untouched source from the oracle.
    """

    forget_oracle_tol: float = Field(1.0, ge=0, description="x: forget FD within a factor 1+x of the oracle")
    retain_fd_tol: float = Field(0.15, ge=0, description="y: retain FD ratio to the source <= 1+y")
    retain_psnr_drop_db: float = Field(1.0, ge=0, description="retain PSNR may drop this much (dB)")
    mia_auc_tol: float = Field(
        0.1, ge=0, le=0.5, description="z: the unlearned MIA AUC within the oracle's interval widened by z"
    )
    forget_psnr_tol_db: float = Field(
        1.0,
        ge=0,
        description="forget sets too small for FD: |PSNR_unlearned - PSNR_oracle| on forget <= this (dB)",
    )


class PrivacyConfig(_Strict):
    """How ids and forget-set content are digested (lethe.digests): HMAC-SHA256 under a secret key."""

    digest_key_file: str | None = Field(
        None,
        description="the digest key file; None: <cache_dir>/keys/digest.key (created on first use, mode "
        "0600). The LETHE_DIGEST_KEY variable, when set, wins over any file",
    )

    signing_key_file: str | None = Field(
        None,
        description="the certificate signing key (Ed25519 seed); None: <cache_dir>/keys/signing.key (created "
        "on first use, mode 0600). The LETHE_SIGNING_KEY variable (64 hex characters), when set, wins",
    )

    @field_validator("digest_key_file", "signing_key_file")
    @classmethod
    def _key_file(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            return None
        kind = "digest" if info.field_name == "digest_key_file" else "signing"
        if not v.strip():
            raise ValueError(f"must be a file path, or unset for <cache_dir>/keys/{kind}.key")
        if "://" in v:
            raise ValueError(
                f"must be a local file (mount the key into the container), got {v!r}; "
                f"or set LETHE_{kind.upper()}_KEY"
            )
        return v.strip()
