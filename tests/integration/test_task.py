"""The evaluation's classifiers train in one Ray task (lethe.execution.task): the same weights as a
one-worker Ray Train run of the same job, a job's own error as one line, and a killed task trained
again from the start."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lethe.config import build_config
from lethe.data import split_dataset
from lethe.errors import LetheError
from lethe.execution.fit import fit, train_arrays
from lethe.execution.job import TrainJob
from lethe.execution.task import train_in_task
from lethe.execution.worker import TRAIN_IMAGES, TRAIN_LABELS
from lethe.models import load_checkpoint
from lethe.models.featnet import FeatNetArch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits(tmp_path_factory, ray_session):
    cfg = build_config("smoke", overrides={"data": {"dataset": "digits"}, "request": {"classes": ["3"]}})
    man = split_dataset(cfg, tmp_path_factory.mktemp("split") / "shards")
    return man, train_arrays(man, ("forget", "retain"))


def _job(man, n_rows: int, epochs: int = 2) -> TrainJob:
    arch = FeatNetArch(man.height, man.width, man.channels, 10, 8, 16).to_dict()
    return TrainJob(
        kind="featnet", model_kind="featnet", arch=arch, batch_size=64, lr=3e-3, weight_decay=0.0,
        warmup_frac=0.0, n_rows=n_rows, epochs=epochs, threads=1, meta={"role": "featnet"},
    )  # fmt: skip


def _task(job: TrainJob, arrays: dict, dest: Path, name: str = "featnet-test"):
    return train_in_task(job, arrays, use_gpu=False, cpus_per_worker=1.0, name=name, dest=dest)


def test_a_task_trains_the_weights_a_one_worker_ray_train_run_trains(digits, tmp_path: Path) -> None:
    man, arrays = digits
    job = _job(man, len(arrays[TRAIN_IMAGES]))
    ray_dir = tmp_path / "ray"
    run = fit(
        job, dict(arrays), num_workers=1, use_gpu=False, cpus_per_worker=1.0,
        storage_path=str(ray_dir), name="featnet-run", dest=tmp_path / "run.pt",
    )  # fmt: skip
    res = _task(job, dict(arrays), tmp_path / "task.pt")
    assert res.metrics["epoch"] == 1 and res.metrics["loss"] == pytest.approx(run.metrics["loss"], rel=1e-6)
    # a lethe checkpoint, loaded without pickle, with the job's meta and the Ray Train run's weights
    model, meta = load_checkpoint(tmp_path / "task.pt", expected_kind="featnet")
    reference, _ = load_checkpoint(tmp_path / "run.pt", expected_kind="featnet")
    assert meta["role"] == "featnet"
    for (k, v), (_, w) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(v, w), k
    # the task writes nothing to Ray's storage: no copy of a forget-trained model is left there
    assert [p.name for p in ray_dir.iterdir()] == ["featnet-run"]


def test_a_job_error_in_the_task_is_one_lethe_error_and_no_model(digits, tmp_path: Path) -> None:
    man, arrays = digits
    empty = {TRAIN_IMAGES: arrays[TRAIN_IMAGES][:0], TRAIN_LABELS: arrays[TRAIN_LABELS][:0]}
    with pytest.raises(LetheError, match="received no rows") as caught:
        _task(_job(man, 1), empty, tmp_path / "none.pt")
    assert type(caught.value) is LetheError and "\n" not in str(caught.value)  # not Ray's traceback hybrid
    assert not list(tmp_path.iterdir())


def _busy_worker(task_name: str) -> int | None:
    """The pid of the Ray worker process running `task_name` (Ray titles it "ray::<name>" meanwhile)."""
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes().split(b"\0")[0].decode()
        except (OSError, UnicodeDecodeError):
            continue
        if proc.name.isdigit() and title == f"ray::{task_name}":
            return int(proc.name)
    return None


def test_a_task_whose_worker_is_killed_trains_again_from_the_start(digits, tmp_path: Path) -> None:
    man, arrays = digits
    job = _job(man, len(arrays[TRAIN_IMAGES]), epochs=60)
    killed: list[int] = []

    def kill_once() -> None:
        # SIGKILL the task's worker once it has trained a while: a lost worker, as a node failure looks
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            pid = _busy_worker("featnet-killed")
            if pid is not None:
                time.sleep(1.0)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.1)

    killer = threading.Thread(target=kill_once)
    killer.start()
    res = _task(job, dict(arrays), tmp_path / "killed.pt", name="featnet-killed")
    killer.join()
    assert killed, "the task finished before it could be killed"
    assert not Path(f"/proc/{killed[0]}").exists()
    # trained again from scratch: the same weights as a task that was never interrupted
    again = _task(job, dict(arrays), tmp_path / "whole.pt", name="featnet-whole")
    assert res.metrics["epoch"] == 59 and res.metrics["loss"] == again.metrics["loss"]
    a = load_checkpoint(tmp_path / "killed.pt")[0].state_dict()
    b = load_checkpoint(tmp_path / "whole.pt")[0].state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
