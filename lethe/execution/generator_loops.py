"""Ray Train worker loops of the generator families (GAN / VAE): pretraining and feature unlearning.

Same contract as lethe/execution/loops.py (a TrainJob dict in, a checkpoint reported per epoch / per
`checkpoint_every` steps, resume from the last one). Differences, and why:

* Pretraining steps several parameter groups per batch (GAN: discriminator then generator), each with
  its own optimiser, so the model is not wrapped in DDP (DDP expects one forward per backward over a
  fixed parameter set); with more than one worker the gradients are averaged by an explicit
  all-reduce before every optimiser step, which is what DDP would do.
* Feature unlearning reads no data set: latents are drawn per step from a generator seeded by the
  step number (and rank), so a resumed run sees the latents an uninterrupted one would have.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from lethe.execution.worker import (
    ShardEpochs,
    all_reduce_grads,
    epoch_progress,
    frozen_teacher,
    maybe_fail,
    progress,
    report,
    report_due,
    restore,
)


def _optimisers(model, job: dict[str, Any], total: int) -> dict[str, tuple[Any, Any, list]]:
    from lethe.optim import warmup_cosine

    out = {}
    for name, params in model.train_groups().items():
        opt = torch.optim.Adam(params, lr=job["lr"], betas=model.betas, weight_decay=job["weight_decay"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, job["warmup_frac"]))
        out[name] = (opt, sched, params)
    return out


class _Multi:
    """Several optimisers / schedulers behind the state_dict interface the checkpoint code uses."""

    def __init__(self, parts: dict[str, Any]) -> None:
        self.parts = parts

    def state_dict(self) -> dict[str, Any]:
        return {k: v.state_dict() for k, v in self.parts.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in self.parts.items():
            v.load_state_dict(state[k])


def _losses(totals: dict[str, float], seen: int) -> str:
    """Each optimiser group's mean loss so far, for the progress line."""
    return ", ".join(f"{k} {v / max(1, seen):.4f}" for k, v in totals.items())


def generator_pretrain_loop(job: dict[str, Any], model) -> None:
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    device = ray.train.torch.get_device()
    steps_per_epoch = max(1, -(-job["n_rows"] // (job["batch_size"] * world)))
    groups = _optimisers(model, job, steps_per_epoch * job["epochs"])
    opts = _Multi({k: v[0] for k, v in groups.items()})
    scheds = _Multi({k: v[1] for k, v in groups.items()})
    state = restore(model, opts, scheds)
    start_epoch = state["epoch"] + 1 if state else 0
    loop_s = state.get("loop_s", 0.0) if state else 0.0
    model = model.to(device).train()
    source = ShardEpochs.for_job(job, rank, world, device)
    local_rows = -(-job["n_rows"] // world)  # this worker's share of an epoch (equal split)
    label = f"pretrain {model.family}"
    last_report = time.monotonic()
    for epoch in range(start_epoch, job["epochs"]):
        gen = torch.Generator().manual_seed(job["seed"] * 1000 + rank * 7 + epoch)
        t0, seen, totals = time.perf_counter(), 0, {k: 0.0 for k in groups}
        for n_batches, (x, _y) in enumerate(source.epoch(epoch), start=1):
            for name, (opt, sched, params) in groups.items():
                loss = model.group_loss(name, x, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                all_reduce_grads(params, world)
                opt.step()
                sched.step()
                totals[name] += loss.item() * len(x)
            seen += len(x)
            if rank == 0 and n_batches % 50 == 0:
                epoch_progress(label, epoch + 1, job["epochs"], seen, local_rows, _losses(totals, seen), t0)
        if rank == 0:  # the epoch's last line: its bar ends complete
            epoch_progress(label, epoch + 1, job["epochs"], seen, seen, _losses(totals, seen), t0)
        dt = time.perf_counter() - t0
        loop_s += dt
        metrics = {
            "epoch": epoch,
            "loss": sum(totals.values()) / max(1, seen),
            **{f"loss_{k}": v / max(1, seen) for k, v in totals.items()},
            "images_per_s": seen * world / max(dt, 1e-9),
            "loop_s": loop_s,
        }
        if report_due(job, None, epoch, time.monotonic() - last_report, device):
            report(metrics, model, opts, scheds, {"epoch": epoch, "loop_s": loop_s}, job["meta"])
            last_report = time.monotonic()


def feature_unlearn_loop(job: dict[str, Any], student) -> None:
    """Latent feature unlearning (lethe.methods.latent_feature): g = student, f = frozen teacher."""
    import ray
    import ray.train
    import ray.train.torch

    from lethe.methods.latent_feature import FeatureDirection, latent_feature_loss
    from lethe.optim import make_optimizer

    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    device = ray.train.torch.get_device()
    teacher = frozen_teacher(job, student, device)
    # Only the generator is fine-tuned; the discriminator / encoder stay bit-identical.
    params = student.generator_parameters()
    ids = {id(p) for p in params}
    for p in student.parameters():
        p.requires_grad_(id(p) in ids)
    total = int(job["max_steps"])
    # Adam as in the paper: the project's AdamW with weight decay 0 (the unlearn config's) is Adam.
    opt, sched = make_optimizer(params, job["lr"], job["weight_decay"], total, job["warmup_frac"])
    state = restore(student, opt, sched)
    start = state["step"] if state else 0
    direction = FeatureDirection.from_dict(job["direction"])
    direction = FeatureDirection(
        direction.z_e.to(device), direction.threshold, direction.n_pos, direction.n_neg
    )
    student = student.to(device).train()
    loop_start = time.perf_counter() - (state.get("loop_s", 0.0) if state else 0.0)
    t0, sums, n = time.perf_counter(), {}, 0
    for step in range(start, total):
        maybe_fail(job, step, state is not None)
        gen = torch.Generator().manual_seed(job["seed"] * 7919 + rank * 1_000_003 + step)
        z = torch.randn(job["batch_size"], student.latent_dim, generator=gen).to(device)
        parts = latent_feature_loss(student.sample, teacher.sample, z, direction, job["alpha"])
        opt.zero_grad(set_to_none=True)
        parts.total.backward()
        all_reduce_grads(params, world)
        if job.get("grad_clip"):
            torch.nn.utils.clip_grad_norm_(params, job["grad_clip"])
        opt.step()
        sched.step()
        for k, v in parts.as_dict().items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        done = step + 1
        if done % job["checkpoint_every"] == 0 or done == total:
            dt = time.perf_counter() - t0
            metrics = {
                "step": done,
                "loss": parts.total.item(),
                **{f"loss_{k}": v / n for k, v in sums.items()},
                "latents_per_s": n * job["batch_size"] * world / max(dt, 1e-9),
                "loop_s": time.perf_counter() - loop_start,
            }
            if rank == 0:
                progress("feature unlearn step %d/%d: loss %.5f", done, total, metrics["loss"])
            t0, sums, n = time.perf_counter(), {}, 0
            report(metrics, student, opt, sched, {"step": done, "loop_s": metrics["loop_s"]}, job["meta"])
