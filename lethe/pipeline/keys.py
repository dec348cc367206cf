"""Cache keys and content digests: what makes two runs' work the same work.

A trained model is reused when its key matches (same data digest + the config sections that change
it); an unlearning or tuning run is resumed or returned when its name matches. Each key is defined
here once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lethe.config import RunConfig
from lethe.digests import stream_sha256

if TYPE_CHECKING:
    import torch

# The config sections that decide a pretrained model (original and oracle use the same recipe).
RECIPE = ("family", "model", "pretrain", "eval", "seed")
# Bumped when a family trains another model from the same recipe (a fix in how it is built), so that
# models cached before are trained again instead of reused. hf-vitmae 2: ViT-MAE's own initialisation
# (its position tables had been all zero: lethe.models.hf_vitmae.initialise).
FAMILY_REVISION = {"hf-vitmae": 2}


def key(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def file_digest(path: Path) -> str:
    with open(path, "rb") as fh:
        return stream_sha256(fh)[1]


def state_digest(model: torch.nn.Module) -> str:
    """sha256 over the weights (names, dtypes, shapes, bytes): equal models, equal digests."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def _recipe(cfg: RunConfig, man) -> str:
    from lethe.pipeline.jobs import config_arch
    from lethe.pipeline.source import arch_tag, source_arch

    # A run from a source model takes the source's architecture; where that is not the model
    # section's, the key says so (and where it is, a model trained by an earlier run is reused).
    recipe = cfg.digest(*RECIPE)
    if cfg.family in FAMILY_REVISION:
        recipe = key(recipe, f"revision {FAMILY_REVISION[cfg.family]}")
    arch = source_arch(cfg, man)
    if arch is None or arch == config_arch(cfg, man):
        return recipe
    return key(recipe, arch_tag(arch))


def original_key(cfg: RunConfig, man) -> str:
    return key(man.data_digest, _recipe(cfg, man))


def oracle_key(cfg: RunConfig, man) -> str:
    return key(man.shards["retain"].digest, _recipe(cfg, man))


def featnet_key(cfg: RunConfig, man) -> str:
    return key(man.data_digest, cfg.digest("featnet", "seed"))


def feature_classifier_key(cfg: RunConfig, man) -> str:
    # Which classes carry the feature depends on the request: its digest is part of the key.
    return key(man.data_digest, man.request_digest, cfg.digest("featnet", "feature", "seed"))


def unlearn_run_name(cfg: RunConfig, man, settings: Any, original: Path) -> str:
    """Same request, recipe, method settings and original model => same Ray Train run name: a re-run
    resumes the crashed run or returns the finished one (see lethe.execution)."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return "unlearn-" + key(
        man.request_digest,
        cfg.digest("family", "model", "pretrain", "method", "seed"),
        digest,
        file_digest(original),
    )


def tune_key(cfg: RunConfig, man, model_digests: list[str]) -> str:
    """Same request, models and search => the finished search is returned, not run again."""
    t = cfg.tune
    base = {k: v for k, v in cfg.unlearn.settings(cfg.method).items() if k not in ("alpha", "lr")}
    return key(
        man.request_digest,
        json.dumps(base, sort_keys=True),
        json.dumps(t.model_dump(exclude={"enabled"}), sort_keys=True),
        # the objective reads the gates' limits (the retain ceilings, the small-set forget scale)
        json.dumps(cfg.gates.model_dump(), sort_keys=True),
        cfg.method,
        str(cfg.seed),
        *model_digests,
    )
