"""Every training in lethe (pretrain, oracle, feature net, unlearning) is a Ray Train TorchTrainer run.

The driver builds a `TrainJob`, hands Ray Data shards to the trainer, and gets back a lethe
checkpoint file. Workers report a checkpoint (model + optimiser state) every epoch / every
`checkpoint_every` steps to `storage_path`, and resume from the last one after a failure.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lethe.errors import LetheError, find_lethe_error

log = logging.getLogger("lethe.train")


def _progress(msg: str, *args: Any) -> None:
    # Ray Train v2 routes worker `logging` to its own files; stderr is what reaches the driver.
    print("lethe: " + (msg % args), file=sys.stderr, flush=True)


MODEL_FILE = "model.pt"
STATE_FILE = "train_state.pt"
# Written by lethe next to Ray Train's run folder once a run has finished: re-running the same run
# (same name and storage_path) returns this result instead of starting worker groups again.
FINISHED_FILE = "lethe_finished.json"
# Fault injection for tests and drills: rank 0 of an unlearning run dies (os._exit) at this step on
# the first attempt. An environment variable, not a config field, so it never changes run names.
FAULT_ENV = "LETHE_FAULT_UNLEARN_STEP"


@dataclass
class TrainJob:
    kind: str  # "pretrain" | "featnet" | "unlearn" | "gen_pretrain" | "feature_unlearn"
    model_kind: str  # a family of lethe.models.families, or "featnet"
    arch: dict[str, Any]
    batch_size: int
    lr: float
    weight_decay: float
    warmup_frac: float
    n_rows: int  # global rows of the main dataset ("train" or "forget")
    seed: int = 0
    threads: int = 1
    epochs: int = 1
    mask: dict[str, Any] = field(default_factory=dict)  # MaskSpec fields
    # pretraining: the family's phase of each epoch (VQ-GAN: tokenizer..., transformer...); empty = one
    phases: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # stored in the final checkpoint
    # unlearning only
    method: str = ""
    alpha: float = 0.0
    noise: str = "gaussian"
    # constructor settings of a method that has them (decouple_retain: lam, max_ascent_steps, ...)
    method_options: dict[str, Any] = field(default_factory=dict)
    stage_lr: dict[str, float] = field(default_factory=dict)  # per-stage lr overriding `lr`
    unlearn_mask: str = "box"
    passes: float = 1.0
    max_steps: int | None = None
    grad_clip: float | None = None
    checkpoint_every: int = 50
    cache_mb: float = 1024.0  # keep a worker's shard in memory after one pass when it fits
    fail_at_step: int | None = None  # fault injection for tests: rank 0 exits once at this step
    # classifiers: class index -> training label (the binary feature classifier: 1 = has the feature)
    label_map: list[int] = field(default_factory=list)
    # feature unlearning: lethe.methods.latent_feature.FeatureDirection.to_dict()
    direction: dict[str, Any] = field(default_factory=dict)

    def to_config(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# worker side
# ----------------------------------------------------------------------------------------------
def _save_ckpt_dir(model, opt, sched, progress: dict[str, Any], meta: dict[str, Any]) -> str:
    from lethe.models.checkpoint import save_checkpoint

    d = tempfile.mkdtemp(prefix="lethe-ckpt-")
    save_checkpoint(Path(d) / MODEL_FILE, model, meta)
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict(), **progress}, Path(d) / STATE_FILE)
    return d


def _restore_model(model) -> dict[str, Any] | None:
    """Load the last reported checkpoint's weights; return its training state (optimiser, progress)."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    with ckpt.as_directory() as d:
        payload = torch.load(Path(d) / MODEL_FILE, map_location="cpu", weights_only=True)
        state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=True)
    getattr(model, "module", model).load_state_dict(payload["state_dict"])
    return state


def _restore(model, opt, sched) -> dict[str, Any] | None:
    state = _restore_model(model)
    if state is not None:
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
    return state


def _report(metrics: dict[str, Any], model, opt, sched, progress, meta) -> None:
    import ray.train

    if ray.train.get_context().get_world_rank() == 0:
        d = _save_ckpt_dir(model, opt, sched, progress, meta)
        try:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        finally:
            shutil.rmtree(d, ignore_errors=True)
    else:
        ray.train.report(metrics, checkpoint=None)


def _maybe_fail(job: dict[str, Any], step: int, resumed: bool) -> None:
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
            _progress("fault drill: rank 0 exits at step %d", step)
            os._exit(1)  # a hard worker death, as a lost node would look


def train_loop_per_worker(job: dict[str, Any]) -> None:

    from lethe.models.checkpoint import build_model

    torch.set_num_threads(int(job["threads"]))
    torch.manual_seed(job["seed"])
    model = build_model(job["model_kind"], job["arch"])
    if job["kind"] in ("gen_pretrain", "feature_unlearn"):
        # Generator families (GAN / VAE) have their own loops: no masks, several optimisers, latents.
        from lethe.execution.train_generative import feature_unlearn_loop, generator_pretrain_loop

        loop = generator_pretrain_loop if job["kind"] == "gen_pretrain" else feature_unlearn_loop
        loop(job, model)
    elif job["kind"] == "unlearn":
        _unlearn_loop(job, model)
    else:
        _epoch_loop(job, model)


def _phase_segment(phases: list[str], epoch: int) -> tuple[int, int]:
    """First epoch and length of the run of equal phases that contains `epoch`."""
    start = epoch
    while start > 0 and phases[start - 1] == phases[epoch]:
        start -= 1
    end = epoch
    while end + 1 < len(phases) and phases[end + 1] == phases[epoch]:
        end += 1
    return start, end - start + 1


def _epoch_loop(job: dict[str, Any], model) -> None:
    import ray.train
    import ray.train.torch

    from lethe.training import MaskSpec, classifier_loss, make_optimizer, optimizer_step, training_loss

    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    steps_per_epoch = max(1, -(-job["n_rows"] // (job["batch_size"] * world)))
    phases = list(job.get("phases") or []) or ["main"] * job["epochs"]
    base = model

    def optimiser_for(epoch: int):
        # Each phase trains its own parameters with its own warm-up + cosine schedule (a VQ-GAN's
        # transformer starts fresh once its tokenizer is done).
        start, length = _phase_segment(phases, epoch)
        params = (
            base.phase_parameters(phases[epoch]) if job["kind"] == "pretrain" else list(base.parameters())
        )
        opt, sched = make_optimizer(
            params, job["lr"], job["weight_decay"], steps_per_epoch * length, job["warmup_frac"]
        )
        return params, opt, sched

    state = _restore_model(model)
    start_epoch = state["epoch"] + 1 if state else 0
    if start_epoch >= job["epochs"]:
        return
    params, opt, sched = optimiser_for(start_epoch)
    if state and phases[state["epoch"]] == phases[start_epoch]:
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
    # Multi-phase families leave whole sub-networks without gradients in a phase; DDP must expect it.
    ddp_kwargs = {"find_unused_parameters": True} if len(set(phases)) > 1 else {}
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=ddp_kwargs or None)
    device = ray.train.torch.get_device()
    spec = MaskSpec(**job["mask"]) if job["kind"] == "pretrain" else None
    gen = torch.Generator().manual_seed(job["seed"] * 1000 + rank)
    shard = ray.train.get_dataset_shard("train")
    # Time inside the training loop (data loading included, worker start-up excluded), carried
    # across restarts: with the wall time it separates algorithmic cost from Ray's fixed cost.
    loop_s = state.get("loop_s", 0.0) if state else 0.0
    preload = ShardEpochs.fits(job["n_rows"], world, job["arch"], job["cache_mb"])
    source = ShardEpochs(shard, job["batch_size"], job["seed"], device, preload)
    label_map = torch.tensor(job["label_map"], device=device) if job.get("label_map") else None
    for epoch in range(start_epoch, job["epochs"]):
        phase = phases[epoch]
        if epoch > start_epoch and phase != phases[epoch - 1]:
            params, opt, sched = optimiser_for(epoch)
        t0, seen, total = time.perf_counter(), 0, 0.0
        for n_batches, (x, y) in enumerate(source.epoch(epoch), start=1):
            if job["kind"] == "pretrain":
                loss = training_loss(model, x, spec.sample(x.shape[0], gen), gen, phase)
            else:
                loss = classifier_loss(model, x, y if label_map is None else label_map[y])
            optimizer_step(loss, opt, sched, params)
            seen += x.shape[0]
            total += loss.item() * x.shape[0]
            if rank == 0 and n_batches % 50 == 0:
                _progress(
                    "%s %s epoch %d/%d: %d images, loss %.4f, %.0f img/s",
                    job["kind"],
                    phase,
                    epoch + 1,
                    job["epochs"],
                    seen,
                    total / seen,
                    seen / (time.perf_counter() - t0),
                )
        dt = time.perf_counter() - t0
        loop_s += dt
        metrics = {
            "epoch": epoch,
            "loss": total / max(1, seen),
            "images_per_s": seen * world / max(dt, 1e-9),
            "loop_s": loop_s,
        }
        _report(metrics, model, opt, sched, {"epoch": epoch, "phase": phase, "loop_s": loop_s}, job["meta"])


class ShardEpochs:
    """Epochs over a worker's dataset shard.

    When the worker's share fits under `cache_mb`, it is read once from Ray Data at full speed and
    every epoch shuffles it in memory. Streaming while training on a small machine makes the data
    pipeline and the (niced) train worker fight for the same cores: measured here, 248 img/s
    streaming vs 636 img/s from memory for the demo MAE. Larger shards stream every epoch with a
    local shuffle buffer. Every worker holds an equal share (streaming_split(equal=True)), so all
    make the same choice and DDP stays in step.
    """

    def __init__(self, shard, batch_size: int, seed: int, device, preload: bool) -> None:
        self.shard, self.bs, self.seed, self.device, self.preload = shard, batch_size, seed, device, preload
        self.cached: tuple[torch.Tensor, torch.Tensor] | None = None

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
        return torch.cat(xs), torch.cat(ys)

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


def frozen_teacher(job: dict[str, Any], student, device):
    """Load the original weights (from the object store) into `student`; return a frozen copy of it."""
    import copy

    import ray

    student.load_state_dict(ray.get(job["teacher_ref"]))
    teacher = copy.deepcopy(student).to(device).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def _unlearn_loop(job: dict[str, Any], student) -> None:
    import ray.train
    import ray.train.torch

    from lethe import masks
    from lethe.training import MaskSpec, make_optimizer, optimizer_step, unlearn_step

    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    device = ray.train.torch.get_device()
    teacher = frozen_teacher(job, student, device)
    method = _method(job)
    params = method.trainable_parameters(student)
    budgets = stage_budgets(job, world, method)
    total = sum(budgets.values())  # an upper bound: a multi-stage method may finish earlier
    state = _restore_model(student)
    if state is not None:
        method.load_state(state.get("method") or {})

    def optimiser_for(stage: str):
        # Each stage starts its own AdamW + warm-up/cosine over its budget: moments built while
        # ascending (decouple_retain) must not steer the retention stage.
        lr = job["lr"] if stage not in (job.get("stage_lr") or {}) else job["stage_lr"][stage]
        return make_optimizer(params, lr, job["weight_decay"], budgets[stage], job["warmup_frac"])

    opt, sched = optimiser_for(method.stage)
    if state is not None:
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
    start = state["step"] if state else 0
    student = ray.train.torch.prepare_model(student)
    spec = MaskSpec(**job["mask"])
    box = masks.box_mask(spec.height, spec.width, spec.box_frac, spec.cell)
    loop_start = time.perf_counter() - (state.get("loop_s", 0.0) if state else 0.0)
    bs = job["batch_size"]
    x_forget = _local_rows(job, "forget", rank, world, device)  # (N_f_local, C, H, W): small, kept whole
    x_retain = _local_rows(job, "retain", rank, world, device)  # just the rows the run's steps draw

    def batch_at(x: torch.Tensor, step: int, salt: int) -> torch.Tensor:
        # A fresh permutation per pass over the local rows, derived from the step alone, so a run
        # resumed from a checkpoint sees exactly the batches an uninterrupted run would have seen.
        per_pass = max(1, -(-len(x) // bs))
        g = torch.Generator().manual_seed(job["seed"] * 104729 + rank * 31 + salt * 7 + step // per_pass)
        perm = torch.randperm(len(x), generator=g)
        i = (step % per_pass) * bs
        return x[perm[i : i + bs]]

    evaluate = _evaluator(job, device) if rank == 0 else None
    student.train()
    t0, seen, parts = time.perf_counter(), 0, {}
    for step in range(start, total):
        if method.finished():
            break
        _maybe_fail(job, step, state is not None)
        x_r, x_f = batch_at(x_retain, step, 1), batch_at(x_forget, step, 0)
        # Noise and random masks from a per-step generator: same reason (bit-identical resume).
        gen = torch.Generator().manual_seed(job["seed"] * 7919 + rank * 1_000_003 + step)
        if job["unlearn_mask"] == "box":
            mask = box
        else:
            mask = masks.random_mask(len(x_r) + len(x_f), spec.height, spec.width, spec.cell, spec.ratio, gen)
        stage = method.stage
        loss, parts = unlearn_step(method, student, teacher, x_r, x_f, mask, job["alpha"], gen)
        if method.stage != stage:
            # The stage switched on this step's measurement: backward only (DDP expects one per
            # forward), no update, and a fresh optimiser for the new stage.
            loss.backward()
            opt, sched = optimiser_for(method.stage)
            opt.zero_grad(set_to_none=True)
            if rank == 0:
                _progress(
                    "unlearn step %d: stage %s -> %s (%s)", step + 1, stage, method.stage, method.state()
                )
        else:
            optimizer_step(loss, opt, sched, params, job["grad_clip"])
        seen += len(x_r) + len(x_f)
        done = step + 1
        last = done == total or method.finished()
        if done % job["checkpoint_every"] == 0 or last:
            dt = time.perf_counter() - t0
            metrics = {
                "step": done,
                "loss": loss.item(),
                **{f"loss_{k}": v for k, v in parts.items()},
                **{f"method_{k}": v for k, v in method.state().items() if k != "stage"},
                "images_per_s": seen * world / max(dt, 1e-9),
                "loop_s": time.perf_counter() - loop_start,
            }
            if evaluate is not None:
                metrics.update(evaluate(student))
            if rank == 0:
                _progress(
                    "unlearn step %d/%d: loss %.5f, %.0f img/s",
                    done,
                    total,
                    metrics["loss"],
                    metrics["images_per_s"],
                )
            progress = {"step": done, "loop_s": metrics["loop_s"], "method": method.state()}
            _report(metrics, student, opt, sched, progress, job["meta"])


def _method(job: dict[str, Any]):
    from lethe.methods import get_method

    return get_method(job["method"], noise=job["noise"], options=job.get("method_options") or None)


def stage_budgets(job: dict[str, Any], world: int, method=None) -> dict[str, int]:
    """Step budget of each stage of an unlearning job on `world` workers (their sum is the most
    steps it runs: a multi-stage method may finish earlier). Driver and workers use this one rule."""
    from lethe.training import unlearn_total_steps

    base = unlearn_total_steps(job["n_rows"], job["batch_size"], world, job["passes"], job["max_steps"])
    return dict((method or _method(job)).stages(base))


def unlearn_inputs(manifest: Any, job: TrainJob, world: int) -> dict[str, Any]:
    """What an unlearning run reads: the whole forget shard and as many retain rows as its steps can
    draw, as uint8 (N, H, W, C) arrays in the shards' hash order, for `fit` to put in the object store.

    Read once by the driver instead of streamed by Ray Data: unlearning needs a few thousand rows,
    and starting two Ray Data executions (split coordinator, read tasks) cost ~13 s on 2 cores,
    as long as the unlearning's compute itself. Each worker takes rows rank::world.
    """
    from lethe.data import read_shard_numpy

    steps = sum(stage_budgets(job.to_config(), world).values())
    forget = read_shard_numpy(manifest, "forget")[0]
    retain = read_shard_numpy(manifest, "retain", limit=steps * job.batch_size * world)[0]
    for name, rows in (("forget", forget), ("retain", retain)):
        if len(rows) < world:
            raise LetheError(
                f"the {name} shard has fewer rows than Ray Train workers",
                where=name,
                expected=f"at least {world} rows",
                seen=str(len(rows)),
            )
    return {"forget": forget, "retain": retain}


def _local_rows(job: dict[str, Any], name: str, rank: int, world: int, device) -> torch.Tensor:
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


def _evaluator(job: dict[str, Any], device):
    """Tuning only: the objective on validation images, computed by rank 0 at every report (ASHA
    needs it at every rung). Plain lethe.evaluate / lethe.metrics code, run inside the trial."""
    if "eval_ref" not in job:
        return None
    import ray

    from lethe.evaluate import model_fd
    from lethe.metrics import unlearning_objective
    from lethe.models.checkpoint import build_model

    p = ray.get(job["eval_ref"])
    featnet = build_model("featnet", p["featnet_arch"])
    featnet.load_state_dict(p["featnet_state"])
    featnet = featnet.to(device).eval()

    def run(student) -> dict[str, float]:
        model = getattr(student, "module", student)
        bs = p["batch_size"]
        fd_f = model_fd(model, featnet, p["x_forget"], p["box_frac"], p["forget_feats"], bs)
        fd_r = model_fd(model, featnet, p["x_retain"], p["box_frac"], p["retain_feats"], bs)
        return {
            "objective": unlearning_objective(
                fd_f, p["fd_forget_oracle"], fd_r, p["fd_retain_original"], p["retain_weight"]
            ),
            "fd_forget": fd_f,
            "fd_retain": fd_r,
            "fd_forget_vs_oracle": fd_f / max(p["fd_forget_oracle"], 1e-12),
            "fd_retain_vs_original": fd_r / max(p["fd_retain_original"], 1e-12),
        }

    return run


# ----------------------------------------------------------------------------------------------
# driver side
# ----------------------------------------------------------------------------------------------
@dataclass
class FitResult:
    checkpoint: Path | None
    metrics: dict[str, Any]
    wall_s: float
    reused: bool = False  # the run had finished before: its result was returned, nothing trained


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
) -> FitResult:
    """Run one TorchTrainer; copy its last checkpoint's model file to `dest` (atomically).

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
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from lethe import storage

    done = _finished(storage_path, name) if reuse_finished else None
    if done is not None:
        _progress("run %s finished before: returning its result", name)
        if dest is not None:
            storage.download_file(storage.join(done["checkpoint"], MODEL_FILE), dest)
        return FitResult(
            checkpoint=dest, metrics=dict(done["metrics"]), wall_s=float(done["wall_s"]), reused=True
        )

    t0 = time.perf_counter()  # reading inputs counts: an unlearning run's come from the driver
    if callable(datasets):
        datasets = datasets()
    # numpy arrays (unlearn_inputs) travel through the object store; Ray Datasets are streamed.
    arrays = {k: v for k, v in datasets.items() if isinstance(v, np.ndarray)}
    datasets = {k: v for k, v in datasets.items() if k not in arrays}
    config = job.to_config()
    if arrays:
        config["arrays"] = {k: ray.put(v) for k, v in arrays.items()}
    if teacher_state is not None:
        # Through the object store, so workers on other nodes get it without a shared file system.
        config["teacher_ref"] = ray.put(teacher_state)
    if eval_payload is not None:
        config["eval_ref"] = ray.put(eval_payload)
    remote = storage.is_s3(storage_path)
    where: dict[str, Any] = {"storage_path": storage.fs_path(storage_path) if remote else storage_path}
    if remote:
        where["storage_filesystem"] = storage.s3_filesystem()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_worker}
        ),
        run_config=RunConfig(
            name=name,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
            **where,
        ),
        datasets=datasets,
    )
    try:
        result = trainer.fit()
    except Exception as e:
        ours = find_lethe_error(e)
        if ours is not None:
            raise ours from None
        raise
    wall = time.perf_counter() - t0
    if result.checkpoint is None:
        raise LetheError(f"training {name!r} reported no checkpoint", where=storage_path)
    if dest is not None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with result.checkpoint.as_directory() as d:
            tmp = dest.with_name(f".{dest.name}.tmp")
            shutil.copyfile(Path(d) / MODEL_FILE, tmp)
            os.replace(tmp, dest)
    metrics = {k: v for k, v in dict(result.metrics or {}).items() if isinstance(v, (int, float, str, bool))}
    storage.write_json(
        storage.join(storage_path, name, FINISHED_FILE),
        {
            "name": name,
            "checkpoint": storage.to_uri(result.checkpoint.path, remote),
            "metrics": metrics,
            "wall_s": wall,
        },
    )
    return FitResult(checkpoint=dest, metrics=metrics, wall_s=wall)
