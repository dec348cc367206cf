"""Nested settings and results as the flat, numeric records MLflow takes."""

from __future__ import annotations

from typing import Any

from lethe.config import RunConfig


def flat_params(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    """Nested settings as flat MLflow params: unlearn.decouple.lambda_factor, ..."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_params(f"{prefix}.{k}", v))
        else:
            out[f"{prefix}.{k}"] = v
    return out


def section_params(section: str, cfg: RunConfig) -> dict[str, Any]:
    """One config section as params: eval.box_frac, ..."""
    return {f"{section}.{k}": v for k, v in getattr(cfg, section).model_dump().items()}


def prefixed(p: str, d: dict[str, Any]) -> dict[str, Any]:
    return {f"{p}.{k}": v for k, v in d.items()}


def numeric(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def numeric_or_str(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if isinstance(v, (int, float, str, bool))}


def ratio(a: float | None, b: float | None) -> float | None:
    return float(a) / float(b) if a is not None and b not in (None, 0) else None
