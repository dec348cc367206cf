"""Helpers every Ray Train worker loop uses (lethe.execution.loops, lethe.execution.generator_loops).

Progress lines, checkpoints (write, report, restore), the fault drill, a worker's data (dataset-shard
epochs, its rows of an object-store array), the frozen teacher and the gradient all-reduce. Workers
report a checkpoint (model + optimiser state) every `checkpoint_every` steps, and at the end of an
epoch once `checkpoint_interval_s` has passed (`report_due`), to `storage_path`, and resume from the
last one after a failure.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from lethe.errors import LetheError
from lethe.execution.job import MODEL_FILE, STATE_FILE

# Set while a loop runs in one process of its own rather than in a Ray Train worker group: a
# one-worker tuning trial in its Tune actor (lethe.execution.tune: reports go to Tune, there is no
# checkpoint to write or restore), or a small classifier in one Ray task (lethe.execution.task: the
# last report's weights are the result). Then the loop is rank 0 of 1.
_LOCAL: dict[str, Any] = {}


@contextmanager
def _alone(**state: Any) -> Iterator[None]:
    _LOCAL.update(state)
    try:
        yield
    finally:
        _LOCAL.clear()


def in_tune_actor() -> AbstractContextManager[None]:
    return _alone(mode="tune", device=torch.device("cpu"))


@contextmanager
def in_task(device: torch.device, train: Any = None) -> Iterator[dict[str, Any]]:
    """Run a loop in this process; yields the dict that holds its last report ("metrics", "state":
    a copy of the model's weights). `train` is the Ray Dataset of the epochs when the rows did not
    travel as object-store arrays."""
    out: dict[str, Any] = {}
    with _alone(mode="task", device=device, train=train, out=out):
        yield out


def placement() -> tuple[int, int, torch.device]:
    """(world size, rank, device) of the loop running here."""
    if _LOCAL:
        return 1, 0, _LOCAL["device"]
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    return ctx.get_world_size(), ctx.get_world_rank(), ray.train.torch.get_device()


def prepare_model(model, **kwargs: Any):
    """Ray Train's DDP wrapping (and device placement); only placed when the loop runs alone."""
    if _LOCAL:
        return model.to(_LOCAL["device"])
    import ray.train.torch

    return ray.train.torch.prepare_model(model, **kwargs)


def progress(msg: str, *args: Any) -> None:
    # Ray Train v2 routes worker `logging` to its own files; stderr is what reaches the driver. Not
    # print(): Train patches it in its workers to print *and* log, so every line arrived twice.
    sys.stderr.write("lethe: " + (msg % args) + "\n")
    sys.stderr.flush()


def epoch_progress(job: str, epoch: int, epochs: int, done: int, total: int, figures: str, t0: float) -> None:
    """One epoch's progress, in the form lethe.execution.progress turns into a bar on the driver."""
    rate = done / max(time.perf_counter() - t0, 1e-9)
    progress("%s epoch %d/%d: %d/%d images, %s, %.0f img/s", job, epoch, epochs, done, total, figures, rate)


CKPT_TEMP_PREFIX = "lethe-ckpt-"


def checkpoint_temp_dirs(run_name: str) -> list[Path]:
    """This node's staging dirs of a Ray Train run's checkpoints that outlived their worker (one
    killed between writing and handing them to Ray): cleanup deletes those of forget-trained models."""
    return sorted(Path(tempfile.gettempdir()).glob(f"{CKPT_TEMP_PREFIX}{run_name}-*"))


def save_checkpoint_dir(model, opt, sched, progress_state: dict[str, Any], meta: dict[str, Any]) -> str:
    import ray.train

    from lethe.models.checkpoint import save_checkpoint

    # Named after the run, so that cleanup can find what a killed worker left behind.
    run_name = ray.train.get_context().get_experiment_name()
    d = tempfile.mkdtemp(prefix=f"{CKPT_TEMP_PREFIX}{run_name}-")
    save_checkpoint(Path(d) / MODEL_FILE, model, meta)
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict(), **progress_state}, Path(d) / STATE_FILE)
    return d


def restore_model(model) -> dict[str, Any] | None:
    """Load the last reported checkpoint's weights; return its training state (optimiser, progress)."""
    if _LOCAL:
        return None
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        payload = torch.load(Path(d) / MODEL_FILE, map_location="cpu", weights_only=True)
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    getattr(model, "module", model).load_state_dict(payload["state_dict"])
    return state


def restore(model, opt, sched) -> dict[str, Any] | None:
    state = restore_model(model)
    if state is not None:
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
    return state


def report(metrics: dict[str, Any], model, opt, sched, progress_state, meta) -> None:
    if _LOCAL.get("mode") == "tune":  # ASHA needs the figures; a trial's checkpoints are never used
        import ray.tune

        ray.tune.report(metrics)
        return
    if _LOCAL:  # a task: its result is the last report (weights copied: training goes on)
        weights = getattr(model, "module", model).state_dict()
        _LOCAL["out"].update(
            metrics=dict(metrics), state={k: v.detach().cpu().clone() for k, v in weights.items()}
        )
        return
    import ray.train

    if ray.train.get_context().get_world_rank() == 0:
        d = save_checkpoint_dir(model, opt, sched, progress_state, meta)
        try:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        finally:
            shutil.rmtree(d, ignore_errors=True)
    else:
        ray.train.report(metrics, checkpoint=None)


def report_due(job: dict[str, Any], phases: list[str] | None, epoch: int, since_s: float, device) -> bool:
    """Checkpoint at the end of this epoch? The last epoch and a phase's last (`phases`: the phase of
    each epoch, None for one phase) always; otherwise once `checkpoint_interval_s` has passed since
    the last checkpoint (0: every epoch). A Ray Train report cost ~0.5 s here, which many short epochs
    paid more than their training."""
    interval = float(job.get("checkpoint_interval_s") or 0.0)
    if interval <= 0 or epoch == job["epochs"] - 1:
        return True
    if phases is not None and phases[epoch + 1] != phases[epoch]:
        return True
    due = since_s >= interval
    # A report is collective and the workers' clocks differ: rank 0 decides for all of them.
    if dist.is_available() and dist.is_initialized():
        flag = torch.tensor([1 if due else 0], device=device)
        dist.broadcast(flag, src=0)
        due = bool(flag.item())
    return due


def maybe_fail(job: dict[str, Any], step: int, resumed: bool) -> None:
    # Only the first attempt fails, so the restarted worker group can finish from the checkpoint.
    if job.get("fail_at_step") is not None and step == job["fail_at_step"] and not resumed:
        import ray.train

        ctx = ray.train.get_context()
        if ctx.get_world_rank() == 0:
            # A report reaches the controller when it next polls the workers: a worker that dies
            # right after reporting can take its newest checkpoint with it (the run then resumes
            # from the one before, or from scratch). The drill should test resuming, so die only
            # once the controller has recorded a checkpoint in the run's snapshot.
            st = ctx.get_storage()
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                info = st.storage_filesystem.get_file_info(st.checkpoint_manager_snapshot_path)
                if info.size:
                    break
                time.sleep(0.2)
            progress("fault drill: rank 0 exits at step %d", step)
            os._exit(1)  # a hard worker death, as a lost node would look


class ShardEpochs:
    """Epochs over a worker's dataset shard.

    When the worker's share fits under `cache_mb`, it is read once from Ray Data at full speed and
    every epoch shuffles it in memory. Streaming while training on a small machine makes the data
    pipeline and the train worker fight for the same cores: measured here, 248 img/s
    streaming vs 636 img/s from memory for the demo MAE. Larger shards stream every epoch with a
    local shuffle buffer. Every worker holds an equal share (streaming_split(equal=True)), so all
    make the same choice and DDP stays in step.
    """

    def __init__(self, shard, batch_size: int, seed: int, device, preload: bool) -> None:
        self.shard, self.bs, self.seed, self.device, self.preload = shard, batch_size, seed, device, preload
        self.cached: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def for_job(cls, job: dict[str, Any], rank: int, world: int, device) -> ShardEpochs:
        """This worker's training epochs: from the rows the driver put in the object store when the
        whole data set fits the worker cache (`train_arrays`), else from its Ray Data shard."""
        import ray
        import ray.train

        arrays = job.get("arrays", {})
        if TRAIN_IMAGES in arrays:
            source = cls(None, job["batch_size"], job["seed"], device, preload=True)
            source.cached = array_share(
                ray.get(arrays[TRAIN_IMAGES]), ray.get(arrays[TRAIN_LABELS]), rank, world
            )
            return source

        preload = cls.fits(job["n_rows"], world, job["arch"], job["cache_mb"])
        shard = _LOCAL["train"] if _LOCAL.get("mode") == "task" else ray.train.get_dataset_shard("train")
        return cls(shard, job["batch_size"], job["seed"], device, preload)

    @staticmethod
    def fits(n_rows: int, world: int, arch: dict[str, Any], cache_mb: float) -> bool:
        per_worker = -(-n_rows // world) * arch["channels"] * arch["height"] * arch["width"] * 4  # float32
        return per_worker <= cache_mb * 2**20

    def load(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for batch in self.shard.iter_torch_batches(batch_size=4096):
            xs.append(batch["image"])
            ys.append(batch["label"])
        if not xs:
            raise LetheError("a Ray Train worker received no rows", expected="at least one row per worker")
        x, y = torch.cat(xs), torch.cat(ys)
        order = content_order(x, y)
        return x[order], y[order]

    def epoch(self, epoch: int):
        if self.preload:
            if self.cached is None:
                self.cached = self.load()
            x, y = self.cached
            perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed * 9973 + epoch))
            for i in range(0, len(x), self.bs):
                idx = perm[i : i + self.bs]
                yield x[idx].to(self.device), y[idx].to(self.device)
            return
        for batch in self.shard.iter_torch_batches(
            batch_size=self.bs, local_shuffle_buffer_size=4 * self.bs, local_shuffle_seed=self.seed + epoch
        ):
            yield batch["image"].to(self.device), batch["label"].to(self.device)


TRAIN_IMAGES, TRAIN_LABELS = "train_images", "train_labels"  # the object-store arrays of train_arrays


def array_share(
    images: np.ndarray, labels: np.ndarray, rank: int, world: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """One worker's rows of uint8 images (N, H, W, C) and labels (N,): rows rank::world in content
    order, as many on every worker (DDP steps in lockstep), as float (N_local, C, H, W) in [0, 1]
    and int64 (N_local,)."""
    from lethe.data import to_chw_float

    if len(images) < world:  # before content_order, which cannot order zero rows
        raise LetheError("a Ray Train worker received no rows", expected="at least one row per worker")
    x = torch.from_numpy(to_chw_float(images))
    y = torch.from_numpy(np.array(labels, dtype=np.int64))
    mine = content_order(x, y)[rank::world][: len(x) // world]
    return x[mine], y[mine]


def content_order(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A row order that depends only on the rows' content. Ray Data delivers a union of shards in
    whatever order its read tasks finish, so the same seed trained different models from run to run
    (a memorising source's attack AUC 0.703 in one run, 0.691 in the next); sorting by an exact
    integer fingerprint of each image and label first makes training reproducible."""
    pixels = torch.round(x.reshape(len(x), -1).float() * 255).to(torch.int64)  # (N, C*H*W) in [0, 255]
    weights = torch.randint(1, 2**20, (pixels.shape[1],), generator=torch.Generator().manual_seed(0))
    key = (pixels * weights).sum(dim=1) * 1024 + y.to(torch.int64)  # < 2**63 for 64x64x3 images
    return torch.argsort(key, stable=True)


def local_rows(job: dict[str, Any], name: str, rank: int, world: int, device) -> torch.Tensor:
    """This worker's share of an input array from the object store, as float (N, C, H, W) in [0, 1]."""
    import ray

    from lethe.data import to_chw_float

    if name not in job.get("arrays", {}):
        # A Ray Dataset would stream a different subset per epoch and break bit-identical resume.
        raise TypeError(
            f"unlearning input {name!r}: expected a numpy array from unlearn_inputs() passed to fit(), "
            f"seen {sorted(job.get('arrays', {}))} as arrays"
        )
    rows = ray.get(job["arrays"][name])[rank::world]  # (N_local, H, W, C) uint8, read-only view
    return torch.from_numpy(to_chw_float(rows)).to(device)


def frozen_teacher(job: dict[str, Any], student, device):
    """Load the original weights (from the object store) into `student`; return a frozen copy of it."""
    import copy

    import ray

    student.load_state_dict(ray.get(job["teacher_ref"]))
    teacher = copy.deepcopy(student).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def all_reduce_grads(params: list[torch.nn.Parameter], world: int) -> None:
    """Average gradients over the workers, as DDP would, for loops whose model is not DDP-wrapped."""
    if world <= 1:
        return
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world
