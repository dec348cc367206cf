"""Every model lethe unlearns or compares against (original, oracle, unlearned) is trained in a Ray
Train TorchTrainer run; the evaluation's small classifiers train in one Ray task (lethe.execution.task).

The driver builds a `TrainJob`, hands Ray Data shards to the trainer, and gets back a lethe
checkpoint file. Workers report a checkpoint (model + optimiser state) every epoch / every
`checkpoint_every` steps to `storage_path`, and resume from the last one after a failure.
This module is the driver side: `fit` starts the run (workers run lethe.execution.loops),
`unlearn_inputs` reads what an unlearning run needs, and FINISHED_FILE marks a finished run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lethe.errors import LetheError, lethe_errors_unwrapped
from lethe.execution.job import FINISHED_FILE, MODEL_FILE, STATE_FILE, TrainJob, stage_budgets
from lethe.execution.loops import train_loop_per_worker
from lethe.execution.worker import TRAIN_IMAGES, TRAIN_LABELS, progress

log = logging.getLogger("lethe.train")


def retain_rows(job: TrainJob, world: int) -> int:
    """How many retain rows an unlearning run's steps can draw, all workers together."""
    return sum(stage_budgets(job.to_config(), world).values()) * job.batch_size * world


def unlearn_inputs(
    manifest: Any, job: TrainJob, world: int, retain: np.ndarray | None = None
) -> dict[str, Any]:
    """What an unlearning run reads: the whole forget shard and as many retain rows as its steps can
    draw, as uint8 (N, H, W, C) arrays in the shards' hash order, for `fit` to put in the object store.

    Read once by the driver instead of streamed by Ray Data: unlearning needs a few thousand rows,
    and starting two Ray Data executions (split coordinator, read tasks) cost ~13 s on 2 cores,
    as long as the unlearning's compute itself. Each worker takes rows rank::world. `retain`, when
    given, stands in for the retain shard (a proxy retain set, lethe.data.proxy).
    """
    from lethe.data import read_shard_numpy

    forget = read_shard_numpy(manifest, "forget")[0]
    if retain is None:
        retain = read_shard_numpy(manifest, "retain", limit=retain_rows(job, world))[0]
    for name, rows in (("forget", forget), ("retain", retain)):
        if len(rows) < world:
            raise LetheError(
                f"the {name} shard has fewer rows than Ray Train workers",
                where=name,
                expected=f"at least {world} rows",
                seen=str(len(rows)),
            )
    return {"forget": forget, "retain": retain}


def train_arrays(manifest: Any, shard_names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """A pretraining run's whole data, read by the driver for `fit` to put in the object store:
    uint8 images (N, H, W, C) and int64 labels of the shards, concatenated.

    For data that fits a worker's cache (ShardEpochs.fits), where every worker would read its Ray
    Data shard into memory once anyway: a Ray Data execution costs ~10 s to start on 2 cores, longer
    than a smoke run's whole training. Larger data streams from Ray Data. Workers order the rows by
    content and take rank::world (ShardEpochs.for_job): the same rows, in the same order, as from a
    preloaded Ray Data shard.
    """
    from lethe.data import read_shard_numpy

    parts = [read_shard_numpy(manifest, name) for name in shard_names]
    return {
        TRAIN_IMAGES: np.concatenate([p[0] for p in parts]),
        TRAIN_LABELS: np.concatenate([p[1] for p in parts]),
    }


@dataclass
class FitResult:
    checkpoint: Path | None
    metrics: dict[str, Any]  # of the checkpoint handed on (the best one when a run selects)
    wall_s: float
    reused: bool = False  # the run had finished before: its result was returned, nothing trained
    # Best-checkpoint keeping: every scored step, the kept one and the last (None: no selection)
    selection: dict[str, Any] | None = None


def _finished(storage_path: str, name: str) -> dict[str, Any] | None:
    from lethe import storage

    marker = storage.join(storage_path, name, FINISHED_FILE)
    if not storage.is_file(marker):
        return None
    done = storage.read_json(marker)
    ckpt = done.get("checkpoint")
    if not ckpt or not storage.is_file(storage.join(ckpt, MODEL_FILE)):
        log.warning("run %s is marked finished but its checkpoint is gone; training again", name)
        return None
    return done


def _reuse_finished(done: dict[str, Any], name: str, dest: Path | None) -> FitResult:
    from lethe import storage

    progress("run %s finished before: returning its result", name)
    if dest is not None:
        storage.download_file(storage.join(done["checkpoint"], MODEL_FILE), dest)
    return FitResult(
        checkpoint=dest,
        metrics=dict(done["metrics"]),
        wall_s=float(done["wall_s"]),
        reused=True,
        selection=done.get("selection"),
    )


def plain_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in dict(metrics or {}).items() if isinstance(v, (int, float, str, bool))}


def _mark_finished(
    storage_path: str,
    name: str,
    checkpoint: Any,
    metrics: dict[str, Any],
    wall: float,
    remote: bool,
    selection: dict[str, Any] | None,
) -> None:
    """Write FINISHED_FILE for a run whose handed-on checkpoint is `checkpoint`."""
    from lethe import storage

    storage.write_json(
        storage.join(storage_path, name, FINISHED_FILE),
        {
            "name": name,
            "checkpoint": storage.to_uri(checkpoint.path, remote),
            "metrics": metrics,
            "wall_s": wall,
            "selection": selection,
        },
    )


def _selected(result: Any, metric: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The scored checkpoint with the lowest `metric`, its metrics, and the selection record: every
    scored step (from the last checkpoint's training state: Ray keeps only the best few checkpoints)."""
    best = min(
        ((c, m) for c, m in (result.best_checkpoints or []) if _finite(m.get(metric))),
        key=lambda cm: float(cm[1][metric]),
        default=None,
    )
    if best is None:
        raise LetheError(
            "no checkpoint of the run was scored", where=metric, expected="a validation objective"
        )
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    history = list(state.get("history") or [])
    last = dict(result.metrics or {})
    selection = {
        "rule": f"lowest validation {metric} among the scored steps",
        "metric": metric,
        "step": int(best[1]["step"]),
        "last_step": int(last.get("step", 0)),
        metric: float(best[1][metric]),
        f"last_{metric}": float(last[metric]) if _finite(last.get(metric)) else None,
        "history": history,
    }
    return best[0], plain_metrics(best[1]), selection


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and v == v and abs(v) != float("inf")


def train_config(
    job: TrainJob,
    arrays: dict[str, np.ndarray],
    teacher_state: dict[str, torch.Tensor] | None,
    eval_payload: dict[str, Any] | None,
) -> dict[str, Any]:
    """The workers' job dict: the TrainJob plus object-store refs of what travels beside it."""
    import ray

    config = job.to_config()
    if arrays:
        config["arrays"] = {k: ray.put(v) for k, v in arrays.items()}
    if teacher_state is not None:
        # Through the object store, so workers on other nodes get it without a shared file system.
        config["teacher_ref"] = ray.put(teacher_state)
    if eval_payload is not None:
        config["eval_ref"] = ray.put(eval_payload)
    return config


def _storage_kwargs(storage_path: str) -> dict[str, Any]:
    """RunConfig's storage arguments: a local folder, or an s3:// URI through pyarrow.fs."""
    from lethe import storage

    remote = storage.is_s3(storage_path)
    where: dict[str, Any] = {"storage_path": storage.fs_path(storage_path) if remote else storage_path}
    if remote:
        where["storage_filesystem"] = storage.s3_filesystem()
    return where


def _trainer_class(torch_trainer: type) -> type:
    """Ray Train's TorchTrainer; on a Ray the run started for itself, one without the placement-group
    cleaner. That helper actor asks Ray's State API every second whether the run's controller is
    alive, to remove the worker group's placement group if it died. A run's own Ray serves no State
    API (it has no dashboard), so the cleaner only logged a warning a second, and starting its
    process cost every fit 1.6 s (a one-report fit took 8.4 s with it, 6.7 s without, 2-core dev
    machine, 2026-12-07). Nothing leaks without it: Ray removes a job's placement groups when its
    driver exits, and that Ray goes with the run."""
    from lethe.execution.ray_env import own_local_ray

    if not own_local_ray():
        return torch_trainer

    class OwnRayTorchTrainer(torch_trainer):  # type: ignore[misc, valid-type]
        def _create_default_callbacks(self) -> list[Any]:  # Ray 2.60's hook for its default callbacks
            return [c for c in super()._create_default_callbacks() if type(c).__name__ != PG_CLEANER]

    return OwnRayTorchTrainer


PG_CLEANER = "PlacementGroupCleanerCallback"


def _run(trainer: Any) -> Any:
    """trainer.fit(), raising the LetheError a worker raised (not Ray's wrapper of it) when there is one."""
    with lethe_errors_unwrapped():
        return trainer.fit()


def _copy_model(checkpoint: Any, dest: Path) -> None:
    """Copy a checkpoint's model file to `dest`, atomically (a temp file of its own, then a
    rename): a killed copy or a full disk leaves no half model under `dest`, which the model cache
    would otherwise take for a whole one."""
    from lethe import storage

    with checkpoint.as_directory() as d:
        storage.download_file(str(Path(d) / MODEL_FILE), dest)


def fit(
    job: TrainJob,
    datasets: dict[str, Any] | Callable[[], dict[str, Any]],
    *,
    num_workers: int,
    use_gpu: bool,
    cpus_per_worker: float,
    storage_path: str,
    name: str,
    dest: Path | None,
    teacher_state: dict[str, torch.Tensor] | None = None,
    max_failures: int = 2,
    callbacks: list[Any] | None = None,
    eval_payload: dict[str, Any] | None = None,
    reuse_finished: bool = True,
    select_metric: str | None = None,
) -> FitResult:
    """Run one TorchTrainer; copy its last checkpoint's model file to `dest` (atomically), or with
    `select_metric` (best-checkpoint keeping) the checkpoint that reported the lowest value of it.

    storage_path is a local folder or an s3:// URI (checkpoints go there through pyarrow.fs).
    datasets maps a name to a Ray Dataset (streamed to the workers: get_dataset_shard) or to a numpy
    array (put in the object store once; workers find its ref in config["arrays"]). It may be a
    function that builds them: it is not called when the run had finished (its inputs, e.g. forget
    shards deleted by cleanup, may be gone by then); the time it takes counts in the wall time.
    A worker that dies is replaced up to `max_failures` times and the run resumes from the last
    reported checkpoint. Re-running a run that crashed (same name and storage_path) resumes from
    its last checkpoint (Ray Train v2 restores its checkpoint-manager snapshot); re-running one that
    finished returns its result without starting workers (lethe's FINISHED_FILE marker: Ray would
    start a worker group, restore the last checkpoint and run the loop for zero steps).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from lethe import storage

    done = _finished(storage_path, name) if reuse_finished else None
    if done is not None:
        return _reuse_finished(done, name, dest)

    t0 = time.perf_counter()  # reading inputs counts: an unlearning run's come from the driver
    if callable(datasets):
        datasets = datasets()
    # numpy arrays (unlearn_inputs) travel through the object store; Ray Datasets are streamed.
    arrays = {k: v for k, v in datasets.items() if isinstance(v, np.ndarray)}
    datasets = {k: v for k, v in datasets.items() if k not in arrays}
    config = train_config(job, arrays, teacher_state, eval_payload)
    remote = storage.is_s3(storage_path)
    trainer = _trainer_class(TorchTrainer)(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name,
            failure_config=FailureConfig(max_failures=max_failures),
            # Ray keeps the best scored checkpoints and always the latest (the one a restart resumes).
            checkpoint_config=CheckpointConfig(
                num_to_keep=2,
                checkpoint_score_attribute=select_metric,
                checkpoint_score_order="min",
            ),
            callbacks=callbacks,
            **_storage_kwargs(storage_path),
        ),
        datasets=datasets,
    )
    result = _run(trainer)
    wall = time.perf_counter() - t0
    if result.checkpoint is None:
        raise LetheError(f"training {name!r} reported no checkpoint", where=storage_path)
    checkpoint, metrics, selection = result.checkpoint, plain_metrics(result.metrics), None
    if select_metric is not None:
        checkpoint, metrics, selection = _selected(result, select_metric)
    if dest is not None:
        _copy_model(checkpoint, dest)
    _mark_finished(storage_path, name, checkpoint, metrics, wall, remote, selection)
    return FitResult(checkpoint=dest, metrics=metrics, wall_s=wall, selection=selection)
