"""A small training job in one Ray task: the evaluation's classifiers (the FD feature net, a
generator's feature classifier).

They are instruments, not the models lethe unlearns: one process trains one in seconds (a smoke
run's feature net in 0.2 s of loop), while a TorchTrainer run starts a controller and half a dozen
actor processes first (~9-11 s measured on the 2-core development machine; a task on an idle Ray
worker starts in ~3 s, torch's import included). The task runs the workers' own epoch loop
(lethe.execution.loops), on the cluster with the resources of one Ray Train worker; Ray runs it
again from the start if its worker dies (`max_retries`). Nothing is checkpointed on the way: the
weights come back to the driver, which writes the lethe checkpoint, so no copy of a model trained on
the forget set is left in Ray's storage.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from lethe.errors import LetheError, lethe_errors_unwrapped
from lethe.execution.fit import FitResult, plain_metrics, train_config
from lethe.execution.job import TrainJob

RETRIES = 2  # as many times as fit replaces a dead Ray Train worker (max_failures)


def _run_job(config: dict[str, Any], train: Any, use_gpu: bool) -> dict[str, Any]:
    """The task: the job's loop in this process; its last report (metrics, weights)."""
    import torch

    from lethe.execution.loops import train_loop_per_worker
    from lethe.execution.worker import in_task

    device = torch.device("cuda" if use_gpu else "cpu")
    with in_task(device, train) as out:
        train_loop_per_worker(config)
    if "state" not in out:
        raise LetheError("the training task reported no weights", where=config["kind"])
    return out


def train_in_task(
    job: TrainJob,
    datasets: dict[str, Any],
    *,
    use_gpu: bool,
    cpus_per_worker: float,
    name: str,
    dest: Path,
) -> FitResult:
    """Train `job` in one Ray task and write its model to `dest` (atomically) as a lethe checkpoint.

    datasets: the object-store arrays of `train_arrays`, or {"train": a Ray Dataset} read in the task.
    """
    import ray

    from lethe.models.checkpoint import build_model, save_checkpoint

    t0 = time.perf_counter()
    arrays = {k: v for k, v in datasets.items() if isinstance(v, np.ndarray)}
    config = train_config(job, arrays, None, None)
    task = ray.remote(_run_job).options(
        name=name,
        num_cpus=cpus_per_worker,
        num_gpus=1 if use_gpu else 0,
        max_retries=RETRIES,
        retry_exceptions=False,  # a LetheError is the job's answer, not a fault to retry
    )
    with lethe_errors_unwrapped():  # Ray's RayTaskError(LetheError) hybrid prints a whole traceback
        out = ray.get(task.remote(config, datasets.get("train"), use_gpu))
    model = build_model(job.model_kind, job.arch)
    model.load_state_dict(out["state"])
    save_checkpoint(dest, model, job.meta)
    return FitResult(checkpoint=dest, metrics=plain_metrics(out["metrics"]), wall_s=time.perf_counter() - t0)
