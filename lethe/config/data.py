"""The data and request sections: which dataset a run reads and what it is asked to forget."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from lethe.catalogue import RequestKind
from lethe.config.base import STORAGE_CREDENTIALS, _Strict, no_credentials

DEFAULT_DATASET = "fashion-mnist"


class DataConfig(_Strict):
    dataset: str = DEFAULT_DATASET
    # Datasets without a train/test subset column hold out this fraction (by id hash).
    heldout_fraction: float = Field(0.15, gt=0.0, lt=0.9)
    # Cap on training rows (deterministic by id hash); None = all. The smoke preset uses it.
    max_train: int | None = Field(None, ge=10)
    max_heldout: int | None = Field(None, ge=10)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return no_credentials(v, "the data set URI", STORAGE_CREDENTIALS) or v


class RequestRef(_Strict):
    """A stored deletion request a run applies (lethe nightly): uuid and keyed digest, never its ids."""

    request_id: str = Field(pattern=r"^[0-9a-f-]{36}$")
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")
    received_at: str
    deadline: str
    # "this": claimed by this run; "earlier": applied to the lineage before, forgotten again (cumulative)
    night: Literal["this", "earlier"] = "this"


class RequestConfig(_Strict):
    kind: RequestKind = "classes"
    classes: list[str] = Field(default_factory=lambda: ["Trouser"])
    ids_file: str | None = None
    # kind "feature": a visual feature ("glasses" on avataaars) or a class name (class-as-feature);
    # forget = the training images that show it, and the generator must stop producing it.
    feature: str | None = None
    # Set by `lethe nightly`: the stored requests whose union this run forgets.
    refs: list[RequestRef] = Field(default_factory=list)

    @field_validator("ids_file")
    @classmethod
    def _ids_file(cls, v: str | None) -> str | None:
        return no_credentials(v, "the ids file URI", STORAGE_CREDENTIALS)

    @model_validator(mode="after")
    def _check(self) -> RequestConfig:
        if self.kind == "ids" and not self.ids_file:
            raise ValueError("request.kind 'ids' needs request.ids_file (a file with one id per line)")
        if self.kind == "classes" and not self.classes:
            raise ValueError("request.kind 'classes' needs at least one class name in request.classes")
        if self.kind == "feature" and not (self.feature or "").strip():
            raise ValueError("request.kind 'feature' needs request.feature (e.g. 'glasses' or a class name)")
        return self
