"""Train a model on Ray Train, or reuse the cached one with the same key.

The original, the oracle, the FD feature net and the feature classifier are cached under
`<cache_dir>/models/<kind>-<key>.pt`; the `.json` beside it is the entry's cache index: the size and
sha256 of the `.pt` and its training numbers (so a reused oracle still has its retraining cost). The
index is written only once the `.pt` is complete, so a `.pt` without a valid index is a half-written
entry. Before reuse the entry is checked (index, size, sha256, the checkpoint loads); a corrupt one
(disk full, a killed copy, a flipped bit) is rebuilt, or refused with `cache.on_corrupt: refuse`.
The step copies the cached file into the work dir.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lethe import storage
from lethe.errors import CheckpointError, LetheError
from lethe.execution.job import TrainJob
from lethe.pipeline.context import Context
from lethe.pipeline.jobs import fit_kwargs
from lethe.pipeline.keys import file_digest

log = logging.getLogger("lethe")

# (number of training rows, checkpoint meta) -> the job that trains the model
JobBuilder = Callable[[int, dict[str, Any]], TrainJob]
INDEX_VERSION = 1


def index_path(cached: Path) -> Path:
    return cached.with_suffix(".json")


def write_index(cached: Path, training: dict[str, Any]) -> dict[str, Any]:
    """Record the complete `.pt` in its index entry (atomically); returns the entry."""
    entry = {
        "version": INDEX_VERSION,
        "file": {"size": cached.stat().st_size, "sha256": file_digest(cached)},
        "training": training,
    }
    storage.write_json(str(index_path(cached)), entry)
    return entry


def _load_error(path: Path) -> str | None:
    from lethe.models.checkpoint import load_checkpoint

    try:
        load_checkpoint(path)
    except CheckpointError as e:
        return f"{e.what}: {e.seen}" if e.seen else e.what
    return None


def corruption(cached: Path) -> str | None:
    """Why the cache entry of `cached` (which exists) cannot be trusted, or None when it verifies.

    Cheapest checks first: the index, the size, the sha256, then that the checkpoint loads.
    """
    index = index_path(cached)
    if not index.is_file():
        return "no cache index entry"
    try:
        entry = storage.read_json(str(index))
        want_size, want_sha = int(entry["file"]["size"]), str(entry["file"]["sha256"])
    except (LetheError, LookupError, TypeError, ValueError):
        # An index from before sizes and digests reads as this too: nothing to check the file against.
        return "cache index entry unreadable or without size and sha256"
    size = cached.stat().st_size
    if size != want_size:
        return f"size {size} bytes, index says {want_size}"
    sha = file_digest(cached)
    if sha != want_sha:
        return f"sha256 {sha[:12]}, index says {want_sha[:12]}"
    return _load_error(cached)


def _cached_entry(ctx: Context, cached: Path, what: str) -> dict[str, Any] | None:
    """The verified index entry of `cached`, or None when there is none to reuse (a corrupt entry is
    removed first, or refused with the command that clears it)."""
    if not cached.is_file():
        return None
    why = corruption(cached)
    if why is None:
        return storage.read_json(str(index_path(cached)))
    index = index_path(cached)
    if ctx.cfg.cache.on_corrupt == "refuse":
        raise CheckpointError(
            f"cached {what} is corrupt ({why})",
            where=str(cached),
            expected="an entry that matches its cache index; "
            f"`rm -f {shlex.quote(str(cached))} {shlex.quote(str(index))}` clears it "
            "(or set cache.on_corrupt: rebuild)",
        )
    log.warning("cached %s is corrupt (%s); rebuilding", what, why)
    # Index first: from here on the entry reads as absent, whatever happens next.
    index.unlink(missing_ok=True)
    cached.unlink(missing_ok=True)
    return None


def _train(
    ctx: Context,
    kind: str,
    shard_names: tuple[str, ...],
    cache_key: str,
    dest_name: str,
    build_job: JobBuilder,
) -> dict[str, Any]:
    """Train the model into the cache (or take the finished Ray Train run's result); its numbers."""
    import ray.data

    from lethe.data import shard_dataset
    from lethe.execution.fit import fit, train_arrays
    from lethe.execution.task import train_in_task
    from lethe.execution.worker import ShardEpochs

    cfg, lay = ctx.cfg, ctx.lay
    cached = lay.cached(kind, cache_key)
    man = ctx.manifest()
    n_rows = sum(man.shards[s].count for s in shard_names)
    job = build_job(n_rows, {"role": dest_name, "cache_key": cache_key, "train_rows": n_rows})

    # Ray and the reads start outside fit, so that the recorded training wall time (the cost ratios'
    # denominator) is the training alone.
    ctx.start_ray()
    datasets: dict[str, Any]
    if ShardEpochs.fits(n_rows, 1, job.arch, job.cache_mb):  # every worker can hold it all
        datasets = train_arrays(man, shard_names)
    else:
        parts = [shard_dataset(man, s) for s in shard_names]
        ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
        assert isinstance(ds, ray.data.Dataset)
        datasets = {"train": ds}
    name = f"{kind}-{cache_key}"
    if job.kind == "featnet":  # a classifier of the evaluation: one Ray task (lethe.execution.task)
        res = train_in_task(
            job, datasets, use_gpu=cfg.resources.use_gpu, cpus_per_worker=cfg.resources.cpus_per_worker,
            name=name, dest=cached,
        )  # fmt: skip
    else:
        res = fit(job, datasets, name=name, dest=cached, **fit_kwargs(cfg, lay))
    if res.reused and (why := _load_error(cached)) is not None:
        # The finished run's own checkpoint is bad too: train from scratch, not resume from it.
        log.warning(
            "%s: its finished training run's checkpoint is unusable (%s); training again", dest_name, why
        )
        storage.delete(storage.join(lay.ray_storage_uri, name))
        res = fit(job, datasets, name=name, dest=cached, **fit_kwargs(cfg, lay))
    trained = {"train_wall_s": res.wall_s, **{f"final_{k}": v for k, v in res.metrics.items()}}
    write_index(cached, trained)
    log.warning("%s: trained in %.1f s (%s)", dest_name, res.wall_s, res.metrics)
    return trained


def train_or_reuse(
    ctx: Context,
    kind: str,
    shard_names: tuple[str, ...],
    cache_key: str,
    dest_name: str,
    build_job: JobBuilder,
    info: dict[str, Any] | None = None,
    reuse: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """The model `dest_name` in the work dir, trained on `shard_names` unless cached (and `reuse`);
    returns its path and what is known of its training (cache key, whether cached, wall and loop times)."""
    lay = ctx.lay
    cached = lay.cached(kind, cache_key)
    dest = lay.model(dest_name)
    entry = _cached_entry(ctx, cached, f"{dest_name} model") if reuse else None
    info = {"cache_key": cache_key, "cached": entry is not None, **(info or {})}
    if entry is not None:
        log.warning("%s: reusing cached model %s", dest_name, cached.name)
        info.update(entry.get("training", {}))
    else:
        info.update(_train(ctx, kind, shard_names, cache_key, dest_name, build_job))
    storage.download_file(str(cached), dest)  # a local copy, atomic: never half a model under dest
    lay.publish(dest)
    return dest, info
