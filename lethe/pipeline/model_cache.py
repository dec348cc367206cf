"""Train a model on Ray Train, or reuse the cached one with the same key.

The original, the oracle, the FD feature net and the feature classifier are cached under
`<cache_dir>/models/<kind>-<key>.pt` with their training numbers beside them (`.json`), so a reused
oracle still has its retraining cost; the step copies the cached file into the work dir.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lethe.execution.job import TrainJob
from lethe.pipeline.context import Context
from lethe.pipeline.jobs import fit_kwargs

log = logging.getLogger("lethe")

# (number of training rows, checkpoint meta) -> the job that trains the model
JobBuilder = Callable[[int, dict[str, Any]], TrainJob]


def train_or_reuse(
    ctx: Context,
    kind: str,
    shard_names: tuple[str, ...],
    cache_key: str,
    dest_name: str,
    build_job: JobBuilder,
    info: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """The model `dest_name` in the work dir, trained on `shard_names` unless cached; returns its
    path and what is known of its training (cache key, whether cached, wall and loop times)."""
    import ray.data

    from lethe.data import shard_dataset
    from lethe.execution.fit import fit

    cfg, lay = ctx.cfg, ctx.lay
    cached = lay.cached(kind, cache_key)
    dest = lay.model(dest_name)
    sidecar = cached.with_suffix(".json")
    info = {"cache_key": cache_key, "cached": cached.is_file(), **(info or {})}
    if cached.is_file():
        log.warning("%s: reusing cached model %s", dest_name, cached.name)
        if sidecar.is_file():
            info.update(json.loads(sidecar.read_text()))
    else:
        man = ctx.manifest()
        ctx.start_ray()
        parts = [shard_dataset(man, s) for s in shard_names]
        ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
        assert isinstance(ds, ray.data.Dataset)
        n_rows = sum(man.shards[s].count for s in shard_names)
        job = build_job(n_rows, {"role": dest_name, "cache_key": cache_key, "train_rows": n_rows})
        res = fit(job, {"train": ds}, name=f"{kind}-{cache_key}", dest=cached, **fit_kwargs(cfg, lay))
        trained = {"train_wall_s": res.wall_s, **{f"final_{k}": v for k, v in res.metrics.items()}}
        sidecar.write_text(json.dumps(trained, indent=2))
        info.update(trained)
        log.warning("%s: trained in %.1f s (%s)", dest_name, res.wall_s, res.metrics)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, dest)
    lay.publish(dest)
    return dest, info
