"""Checkpoints carry their architecture and load with `weights_only=True`.

Format: {"format": "lethe.v1", "kind": <family>, "arch": {plain ints/floats}, "state_dict": ...,
"meta": {plain values}}. Nothing in it needs unpickling of project classes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lethe import catalogue
from lethe.errors import CheckpointError
from lethe.models import plugins
from lethe.models.families import FAMILY_REGISTRY, get_family
from lethe.models.featnet import FeatNet, FeatNetArch

FORMAT = "lethe.v1"
# Every family of the registry (image-to-image and generator), plus the feature net.
_KINDS: dict[str, tuple[type, type]] = {
    **{name: (f.model_cls, f.arch_cls) for name, f in FAMILY_REGISTRY.items()},
    "featnet": (FeatNet, FeatNetArch),
}


def build_model(kind: str, arch: dict[str, Any], plugin: bool = False) -> nn.Module:
    """A fresh model of `kind`. A plug-in family's module is imported only when the caller vouches
    for the kind (`plugin`: it is the configured family) or this process loaded it already: a
    checkpoint alone never makes lethe import a module it names."""
    if kind in _KINDS:
        model_cls, arch_cls = _KINDS[kind]
    elif catalogue.is_plugin(kind) and (plugin or plugins.loaded(kind)):
        fam = get_family(kind)
        model_cls, arch_cls = fam.model_cls, fam.arch_cls
    else:
        raise CheckpointError("unknown model kind", expected=" or ".join(_KINDS), seen=repr(kind))
    return model_cls(arch_cls(**arch))


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP


def save_checkpoint(
    path: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any] | None = None
) -> Path:
    """Atomic write: a crash or a full disk never leaves a truncated checkpoint under the final name
    (temp file, fsync, rename); a failed write is one CheckpointError line."""
    model = _unwrap(model)
    payload = {
        "format": FORMAT,
        "kind": model.family,
        "arch": model.arch.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            # Durable before the rename: otherwise a power loss can leave the new name on an empty file.
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch reports a full disk as a RuntimeError
        raise CheckpointError(
            "cannot write checkpoint",
            where=str(path),
            seen=str(e).splitlines()[0] if str(e) else type(e).__name__,
        ) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(
    path: str | os.PathLike[str],
    expected_kind: str | None = None,
    expected_arch: dict[str, Any] | None = None,
    plugin: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a lethe checkpoint, read weights-only. A plug-in family's module is imported
    when it is the expected kind, or when the caller vouches for the file (`plugin`)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", where=str(path))
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad checkpoint to the user
        raise CheckpointError("cannot read checkpoint", where=str(path), seen=type(e).__name__) from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError("not a lethe checkpoint", where=str(path), expected=f"format {FORMAT}")
    kind, arch = payload["kind"], payload["arch"]
    if expected_kind and kind != expected_kind:
        raise CheckpointError(
            "checkpoint is of another architecture", where=str(path), expected=expected_kind, seen=kind
        )
    if expected_arch:
        diff = {k: (v, arch.get(k)) for k, v in expected_arch.items() if arch.get(k) != v}
        if diff:
            k, (want, got) = next(iter(diff.items()))
            raise CheckpointError(
                f"checkpoint architecture differs in {k}",
                where=str(path),
                expected=repr(want),
                seen=repr(got),
            )
    try:
        model = build_model(kind, arch, plugin=plugin or kind == expected_kind)
        model.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError("checkpoint does not fit its declared architecture", where=str(path)) from e
    return model, payload.get("meta", {})
