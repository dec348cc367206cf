"""The base of every configuration section: unknown keys and bad assignments are errors."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

# Where each kind of credentials goes instead of the URI (the configuration travels in clear text:
# KFP parameters, Ray job command lines, MLflow params, reports).
MLFLOW_CREDENTIALS = (
    "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead"
)
DATABASE_CREDENTIALS = "give the database password through its driver's variables (e.g. PGPASSWORD)"
STORAGE_CREDENTIALS = "object storage credentials come from the AWS_* variables or AWS config files"
RAY_CREDENTIALS = "give the Ray cluster's credentials through the environment"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def no_credentials(v: str | None, what: str, instead: str) -> str | None:
    """Refuse a URI that embeds credentials (`scheme://user:password@host`, or any userinfo in an
    http(s) URI: a bare token there is a secret too). Error lines show URIs without them
    (lethe.errors.redact_userinfo)."""
    if not v or "://" not in v or "@" not in v:
        return v
    try:
        parts = urlsplit(v.strip())
    except ValueError:
        return v  # not a URI the fields below would accept anyway; their own checks say so
    secret = parts.password is not None or (parts.scheme in ("http", "https") and parts.username is not None)
    if secret:
        # The value itself is not repeated: the error line shows it, without the credentials.
        raise ValueError(f"{what} must not embed credentials (user:password@); {instead}")
    return v
