"""The deletion-request store section: where requests live and how their lifecycle is bounded."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, field_validator

from lethe.config.base import DATABASE_CREDENTIALS, _Strict, no_credentials

DB_SCHEMES = "sqlite:///PATH or postgresql[+psycopg]://user@host[:port]/db"


class RequestsConfig(_Strict):
    db_url: str | None = Field(
        None,
        description="None: sqlite:///<workdir>/requests.db, next to the MLflow store. Production: "
        "postgresql+psycopg://user@host/db (the password from PGPASSWORD or ~/.pgpass, never in the URL)",
    )
    deadline_days: int = Field(
        30, ge=1, le=90, description="a request's deadline when none is given (GDPR Art. 12(3))"
    )
    max_attempts: int = Field(3, ge=1, description="failed nights before a request needs attention")
    lease_s: float = Field(
        3600.0,
        gt=0,
        description="a claim lasts this long unless its run renews it; a crashed run's requests are queued again after it",
    )

    @field_validator("db_url")
    @classmethod
    def _db_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        # Any userinfo with a password is refused; a bare user name is not a secret.
        no_credentials(v, "requests.db_url", DATABASE_CREDENTIALS)
        scheme = urlsplit(v).scheme.lower()
        if scheme == "sqlite":
            if not v.startswith("sqlite:///") or not v[len("sqlite:///") :].strip("/"):
                raise ValueError(f"expected {DB_SCHEMES}, got {v!r}")
        elif scheme.partition("+")[0] in ("postgresql", "postgres"):
            if scheme.partition("+")[2] not in ("", "psycopg"):
                raise ValueError(f"expected the psycopg driver ({DB_SCHEMES}), got {scheme!r}")
        else:
            raise ValueError(f"expected {DB_SCHEMES}, got {v!r}")
        return v
