"""Ray Train jobs from the run configuration: one builder, per-kind recipes and options.

Every training lethe runs (pretraining, oracle, feature net, feature classifier, unlearning) is a
`TrainJob`, handed to `lethe.execution.fit.fit` (a Ray Train run), or for the two classifiers to
`lethe.execution.task.train_in_task` (one Ray task); the fields every kind shares (seed, threads, cache)
and each kind's optimiser recipe are filled in here, once.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from lethe.config import RunConfig
from lethe.errors import ConfigError
from lethe.execution.job import FAULT_ENV, TrainJob
from lethe.models.families import get_family
from lethe.pipeline.layout import Layout

log = logging.getLogger("lethe")


def mask_spec(cfg: RunConfig, arch: dict[str, Any]) -> dict[str, Any]:
    """An image-to-image family's masks (lethe.optim.MaskSpec fields): training draws and the box."""
    fam = get_family(cfg.family)
    return {
        "height": arch["height"],
        "width": arch["width"],
        "cell": fam.cell(arch),
        "box_frac": cfg.eval.box_frac,
        "ratio": cfg.pretrain.mask_ratio,
        "box_prob": cfg.pretrain.box_mask_prob,
        "schedule": fam.mask_schedule,
    }


def family_arch(cfg: RunConfig, man) -> dict[str, Any]:
    """The family's architecture for this data (shape from the manifest), via the registry; a run
    from a source model has the source's (lethe.pipeline.source)."""
    from lethe.pipeline.source import source_arch

    arch = source_arch(cfg, man)
    return config_arch(cfg, man) if arch is None else arch


def config_arch(cfg: RunConfig, man) -> dict[str, Any]:
    """The architecture the configuration's model section gives for this data."""
    return get_family(cfg.family).build_arch(
        cfg.model.section(cfg.family), man.height, man.width, man.channels
    )


def proxy_retain(cfg: RunConfig, man, job: TrainJob, world: int) -> tuple[Any, dict[str, Any] | None]:
    """The proxy retain images (uint8 (N, H, W, C)) that replace the retain shard in the unlearning
    loss, and what the report records of them; (None, None) without `unlearn.proxy_retain`."""
    spec = cfg.unlearn.proxy_retain
    if not spec:
        return None, None
    from lethe.data.proxy import proxy_images
    from lethe.execution.fit import retain_rows

    images, name = proxy_images(spec, man.shape, retain_rows(job, world))
    log.warning(
        "unlearn: the retain side of the loss is the proxy data set %s (%d images)", name, len(images)
    )
    return images, {"dataset": name, "images": len(images)}


def unlearned_meta(cfg: RunConfig, man, u: Any, tuned: bool, **extra: Any) -> dict[str, Any]:
    """What the unlearned checkpoint records of how it was made (never ids or pixels)."""
    return {
        "role": "unlearned",
        "method": cfg.method,
        "alpha": u.alpha,
        "lr": u.lr,
        "tuned": tuned,
        **extra,
        "forget_digest": man.shards["forget"].digest,
    }


def phases(cfg: RunConfig) -> list[str]:
    """The family's phase of each pretraining epoch (VQ-GAN: tokenizer..., transformer...)."""
    return get_family(cfg.family).phases(cfg.model.section(cfg.family), cfg.pretrain.epochs)


def job_common(cfg: RunConfig) -> dict[str, Any]:
    from lethe.execution.ray_env import worker_threads

    return {
        "seed": cfg.seed,
        "threads": worker_threads(cfg.resources),
        "cache_mb": cfg.resources.worker_cache_mb,
        "checkpoint_interval_s": cfg.resources.checkpoint_interval_s,
    }


def fit_kwargs(cfg: RunConfig, lay: Layout) -> dict[str, Any]:
    r = cfg.resources
    return {
        "num_workers": r.num_workers,
        "use_gpu": r.use_gpu,
        "cpus_per_worker": r.cpus_per_worker,
        "storage_path": lay.ray_storage_uri,
    }


def recipe(section: Any) -> dict[str, Any]:
    """The optimiser recipe of a config section (pretrain, unlearn: possibly with tuned alpha / lr)."""
    return {
        "batch_size": section.batch_size,
        "lr": section.lr,
        "weight_decay": section.weight_decay,
        "warmup_frac": section.warmup_frac,
    }


def train_job(
    cfg: RunConfig,
    kind: str,
    *,
    arch: dict[str, Any],
    n_rows: int,
    meta: dict[str, Any],
    recipe_: dict[str, Any],
    model_kind: str | None = None,
    **options: Any,
) -> TrainJob:
    """The one TrainJob builder: kind ("pretrain", "gen_pretrain", "featnet", "unlearn",
    "feature_unlearn"), the data it reads, its recipe, and the kind's own options (mask, phases,
    method, direction, ...)."""
    return TrainJob(
        kind=kind,
        model_kind=model_kind or cfg.family,
        arch=arch,
        n_rows=n_rows,
        **recipe_,
        **job_common(cfg),
        **options,
        meta=meta,
    )


def pretrain_job(
    cfg: RunConfig, kind: str, arch: dict[str, Any], n_rows: int, meta: dict[str, Any], **options
):
    return train_job(
        cfg,
        kind,
        arch=arch,
        n_rows=n_rows,
        meta=meta,
        recipe_=recipe(cfg.pretrain),
        epochs=cfg.pretrain.epochs,
        **options,
    )


def featnet_job(
    cfg: RunConfig,
    man,
    n_rows: int,
    meta: dict[str, Any],
    *,
    classes: int,
    width: int,
    epochs: int,
    label_map: list[int] | None = None,
) -> TrainJob:
    """A FeatNet classifier's training job: the FD feature network (every class) or, for generator
    runs, the binary feature classifier (label_map: class index -> 1 if it has the feature)."""
    from lethe.models.featnet import FeatNetArch

    f = cfg.featnet
    return train_job(
        cfg,
        "featnet",
        model_kind="featnet",
        arch=FeatNetArch(man.height, man.width, man.channels, classes, width, f.feat_dim).to_dict(),
        n_rows=n_rows,
        meta=meta,
        recipe_={"batch_size": f.batch_size, "lr": f.lr, "weight_decay": 0.0, "warmup_frac": 0.0},
        epochs=epochs,
        label_map=list(label_map or []),
    )


def fault_step() -> int | None:
    """The fault drill's step (FAULT_ENV), validated: rank 0 of the unlearning dies there once."""
    fault = os.environ.get(FAULT_ENV, "").strip()
    if fault and not fault.isdigit():
        raise ConfigError(
            "invalid fault-injection step", where=FAULT_ENV, expected="a step number", seen=fault
        )
    return int(fault) if fault else None


def unlearn_job(
    cfg: RunConfig, kind: str, arch: dict[str, Any], u: Any, n_rows: int, meta: dict[str, Any], **options
) -> TrainJob:
    """An unlearning job (u: the unlearn settings, with tuned alpha / lr when tuning was on)."""
    return train_job(
        cfg,
        kind,
        arch=arch,
        n_rows=n_rows,
        meta=meta,
        recipe_=recipe(u),
        method=cfg.method,
        alpha=u.alpha,
        max_steps=u.max_steps,
        min_steps=u.min_steps,
        grad_clip=u.grad_clip,
        checkpoint_every=u.checkpoint_every,
        **options,
    )
