"""The source model's architecture, and --source-model PATH (a `save_pretrained` folder).

A run that starts from a source model takes that model's architecture, not the configuration's
model section: the oracle is trained from scratch with it, and it must fit the data (image size
and channels), which is checked before anything is trained. Where the architecture comes from:
  * a save_pretrained folder, local or s3:// (the families of lethe.catalogue.FOLDER_FAMILIES):
    its config.json (and preprocessor_config.json);
  * a registered version: its `lethe.arch` tag, written when lethe registered it. A version
    registered before that tag existed has none: the configuration's section is used, and the
    pretrain step refuses a source that differs from it (naming the model.* field to set).
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from lethe import storage
from lethe.config import RunConfig, is_registry_source
from lethe.errors import CheckpointError, StorageError
from lethe.models import get_family

log = logging.getLogger("lethe")


ARCH_TAG = "lethe.arch"  # a registered version's architecture, as JSON


def is_folder_source(cfg: RunConfig) -> bool:
    return bool(cfg.source_model) and not is_registry_source(str(cfg.source_model))


def arch_tag(arch: dict[str, Any]) -> str:
    return json.dumps(arch, sort_keys=True, separators=(",", ":"))


@functools.lru_cache(maxsize=8)
def _registry_arch(tracking_uri: str, experiment: str, uri: str, family: str) -> str | None:
    """The version's arch tag when it is a model of `family` (another family's source is refused by
    the pretrain step, which names both)."""
    from lethe.tracking.mlflow_tracker import Tracker

    tags = Tracker(tracking_uri, experiment).resolve_model_version(uri).tags or {}
    return tags.get(ARCH_TAG) if tags.get("lethe.family") == family else None


@functools.lru_cache(maxsize=8)
def _arch(family: str, uri: str) -> str:
    """The folder's arch as JSON (cached: every step asks, and the folder does not change in a run)."""

    def read(name: str) -> str | None:
        path = storage.join(uri, name)
        return storage.read_text(path) if storage.exists(path) else None

    try:
        arch = get_family(family).folder_arch(read)
    except (ValueError, OSError, StorageError) as e:
        raise CheckpointError(
            "source model folder cannot be used", where=uri, seen=str(e).splitlines()[0]
        ) from e
    return json.dumps(arch.to_dict(), sort_keys=True)


def check_folder(cfg: RunConfig) -> str:
    """The folder's URI once its config is readable and of the family (CheckpointError otherwise)."""
    _arch(cfg.family, str(cfg.source_model))
    return str(cfg.source_model)


def source_arch(cfg: RunConfig, man) -> dict[str, Any] | None:
    """The source model's architecture, checked against the data's image shape; None when the
    run has no source model or a registered one without the tag (see the module docstring)."""
    if not cfg.source_model:
        return None
    uri = str(cfg.source_model)
    if is_folder_source(cfg):
        text = _arch(cfg.family, uri)
    else:
        text = _registry_arch(cfg.tracking_uri, cfg.tracking.experiment, uri, cfg.family)
        if text is None:
            return None
    arch = json.loads(text)
    fam = get_family(cfg.family)
    section = cfg.model.section(cfg.family)
    arch.update({k: section[k] for k in getattr(fam, "config_fields", ()) if k in section})
    want = {"height": man.height, "width": man.width, "channels": man.channels}
    for k, v in want.items():
        if arch.get(k) != v:
            raise CheckpointError(
                f"source model's {k} differs from the data's",
                where=uri,
                expected=f"{k} {v} (the data set's images are {man.height}x{man.width}x{man.channels})",
                seen=repr(arch.get(k)),
            )
    return arch


def load_folder(cfg: RunConfig, man) -> tuple[Any, dict[str, Any]]:
    """The model of the source folder (weights read from safetensors only) and its source record."""
    uri = str(cfg.source_model)
    arch = source_arch(cfg, man)
    fam = get_family(cfg.family)
    with tempfile.TemporaryDirectory(prefix="lethe-source-") as tmp:
        local = uri
        if storage.is_s3(uri):
            local = str(Path(tmp) / "model")
            storage.copy_tree(uri, local)
        try:
            model = fam.load_folder(Path(local))
        except (ValueError, OSError) as e:
            raise CheckpointError(
                "cannot load the source model folder", where=uri, seen=str(e).splitlines()[0]
            ) from e
    ours = set(getattr(fam, "config_fields", ()))
    loaded = {k: v for k, v in model.arch.to_dict().items() if k not in ours}
    if loaded != {k: v for k, v in arch.items() if k not in ours}:  # the folder changed under us
        raise CheckpointError("source model folder changed during the run", where=uri)
    model.arch = fam.arch_cls(**arch)  # with the configuration's evaluation settings
    log.warning("pretrain: source model %s (a %s save_pretrained folder)", uri, cfg.family)
    info = {"uri": uri, "requested": uri, "name": None, "version": None, "run_id": None, "format": "folder"}
    return model, info
