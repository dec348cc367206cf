"""Building a `RunConfig`: preset < family settings < YAML file < overrides, and back from JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lethe.config.presets import _family_of, _family_preset, _preset
from lethe.config.run import RunConfig
from lethe.errors import ConfigError


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
