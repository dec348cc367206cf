"""Ray Train worker loops: the dispatch `train_loop_per_worker` hands to every TorchTrainer, the epoch
loop (pretraining, oracle, feature net, classifiers), the unlearning loop and its validation
evaluator (tuning trials, best-checkpoint keeping).

Every model lethe unlearns or compares against (original, oracle, unlearned) is trained in a Ray Train
TorchTrainer run (lethe.execution.fit starts it); the small classifiers of the evaluation run the
same epoch loop in one Ray task (lethe.execution.task). Workers get the `TrainJob` as a dict, report a
checkpoint (model + optimiser state) every epoch / every `checkpoint_every` steps to `storage_path`,
and resume from the last one after a failure. The
generator families (GAN / VAE) have their own loops in lethe.execution.generator_loops.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from lethe.execution.generator_loops import feature_unlearn_loop, generator_pretrain_loop
from lethe.execution.job import job_method, reports_at, stage_budgets
from lethe.execution.worker import (
    ShardEpochs,
    epoch_progress,
    frozen_teacher,
    local_rows,
    maybe_fail,
    placement,
    prepare_model,
    progress,
    report,
    report_due,
    restore_model,
)


def train_loop_per_worker(job: dict[str, Any]) -> None:

    from lethe.models.checkpoint import build_model

    torch.set_num_threads(int(job["threads"]))
    torch.manual_seed(job["seed"])
    model = build_model(job["model_kind"], job["arch"], plugin=True)  # the job's family is the configured one
    if job["kind"] in ("gen_pretrain", "feature_unlearn"):
        # Generator families (GAN / VAE) have their own loops: no masks, several optimisers, latents.
        loop = generator_pretrain_loop if job["kind"] == "gen_pretrain" else feature_unlearn_loop
        loop(job, model)
    elif job["kind"] == "unlearn":
        _unlearn_loop(job, model)
    else:
        _epoch_loop(job, model)


# ----------------------------------------------------------------------------------------------
# epochs: pretraining, oracle, feature net, classifiers
# ----------------------------------------------------------------------------------------------
def _phase_segment(phases: list[str], epoch: int) -> tuple[int, int]:
    """First epoch and length of the run of equal phases that contains `epoch`."""
    start = epoch
    while start > 0 and phases[start - 1] == phases[epoch]:
        start -= 1
    end = epoch
    while end + 1 < len(phases) and phases[end + 1] == phases[epoch]:
        end += 1
    return start, end - start + 1


def _phase_optimiser(job: dict[str, Any], base, phases: list[str], epoch: int, steps_per_epoch: int):
    # Each phase trains its own parameters with its own warm-up + cosine schedule (a VQ-GAN's
    # transformer starts fresh once its tokenizer is done).
    from lethe.optim import make_optimizer

    start, length = _phase_segment(phases, epoch)
    params = base.phase_parameters(phases[epoch]) if job["kind"] == "pretrain" else list(base.parameters())
    opt, sched = make_optimizer(
        params, job["lr"], job["weight_decay"], steps_per_epoch * length, job["warmup_frac"]
    )
    return params, opt, sched


def _epoch_loop(job: dict[str, Any], model) -> None:
    from lethe.optim import MaskSpec, classifier_loss, optimizer_step, training_loss

    world, rank, device = placement()
    steps_per_epoch = max(1, -(-job["n_rows"] // (job["batch_size"] * world)))
    phases = list(job.get("phases") or []) or ["main"] * job["epochs"]
    base = model

    state = restore_model(model)
    start_epoch = state["epoch"] + 1 if state else 0
    if start_epoch >= job["epochs"]:
        return
    params, opt, sched = _phase_optimiser(job, base, phases, start_epoch, steps_per_epoch)
    if state and phases[state["epoch"]] == phases[start_epoch]:
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
    # Multi-phase families leave whole sub-networks without gradients in a phase; DDP must expect it.
    ddp_kwargs = {"find_unused_parameters": True} if len(set(phases)) > 1 else {}
    model = prepare_model(model, parallel_strategy_kwargs=ddp_kwargs or None)
    spec = MaskSpec(**job["mask"]) if job["kind"] == "pretrain" else None
    gen = torch.Generator().manual_seed(job["seed"] * 1000 + rank)
    # Time inside the training loop (data loading included, worker start-up excluded), carried
    # across restarts: with the wall time it separates algorithmic cost from Ray's fixed cost.
    loop_s = state.get("loop_s", 0.0) if state else 0.0
    source = ShardEpochs.for_job(job, rank, world, device)
    label_map = torch.tensor(job["label_map"], device=device) if job.get("label_map") else None
    local_rows = -(-job["n_rows"] // world)  # this worker's share of an epoch (equal split)
    last_report = time.monotonic()
    for epoch in range(start_epoch, job["epochs"]):
        phase = phases[epoch]
        if epoch > start_epoch and phase != phases[epoch - 1]:
            params, opt, sched = _phase_optimiser(job, base, phases, epoch, steps_per_epoch)
        t0, seen, total = time.perf_counter(), 0, 0.0
        label = f"{job['kind']} {phase}"
        for n_batches, (x, y) in enumerate(source.epoch(epoch), start=1):
            if job["kind"] == "pretrain":
                loss = training_loss(model, x, spec.sample(x.shape[0], gen), gen, phase)
            else:
                loss = classifier_loss(model, x, y if label_map is None else label_map[y])
            optimizer_step(loss, opt, sched, params)
            seen += x.shape[0]
            total += loss.item() * x.shape[0]
            if rank == 0 and n_batches % 50 == 0:
                epoch_progress(
                    label, epoch + 1, job["epochs"], seen, local_rows, f"loss {total / seen:.4f}", t0
                )
        if rank == 0:  # the epoch's last line: its bar ends complete
            epoch_progress(
                label, epoch + 1, job["epochs"], seen, seen, f"loss {total / max(1, seen):.4f}", t0
            )
        dt = time.perf_counter() - t0
        loop_s += dt
        metrics = {
            "epoch": epoch,
            "loss": total / max(1, seen),
            "images_per_s": seen * world / max(dt, 1e-9),
            "loop_s": loop_s,
        }
        if report_due(job, phases, epoch, time.monotonic() - last_report, device):
            report(
                metrics, model, opt, sched, {"epoch": epoch, "phase": phase, "loop_s": loop_s}, job["meta"]
            )
            last_report = time.monotonic()


# ----------------------------------------------------------------------------------------------
# unlearning
# ----------------------------------------------------------------------------------------------
def _stage_optimiser(job: dict[str, Any], params, budgets: dict[str, int], stage: str):
    # Each stage starts its own AdamW + warm-up/cosine over its budget: moments built while
    # ascending (decouple_retain) must not steer the retention stage.
    from lethe.optim import make_optimizer

    lr = job["lr"] if stage not in (job.get("stage_lr") or {}) else job["stage_lr"][stage]
    return make_optimizer(params, lr, job["weight_decay"], budgets[stage], job["warmup_frac"])


def _batch_at(job: dict[str, Any], x: torch.Tensor, step: int, rank: int, salt: int) -> torch.Tensor:
    # A fresh permutation per pass over the local rows, derived from the step alone, so a run
    # resumed from a checkpoint sees exactly the batches an uninterrupted run would have seen.
    bs = job["batch_size"]
    per_pass = max(1, -(-len(x) // bs))
    g = torch.Generator().manual_seed(job["seed"] * 104729 + rank * 31 + salt * 7 + step // per_pass)
    perm = torch.randperm(len(x), generator=g)
    i = (step % per_pass) * bs
    return x[perm[i : i + bs]]


def _step_inputs(job: dict[str, Any], x_retain, x_forget, step: int, rank: int, spec, box):
    """One step's retain and forget batches, its mask and its generator (noise, random masks)."""
    from lethe import masks

    x_r, x_f = _batch_at(job, x_retain, step, rank, 1), _batch_at(job, x_forget, step, rank, 0)
    # Noise and random masks from a per-step generator: same reason as _batch_at (bit-identical resume).
    gen = torch.Generator().manual_seed(job["seed"] * 7919 + rank * 1_000_003 + step)
    if job["unlearn_mask"] == "box":
        return x_r, x_f, box, gen
    mask = masks.random_mask(len(x_r) + len(x_f), spec.height, spec.width, spec.cell, spec.ratio, gen)
    return x_r, x_f, mask, gen


def _switch_stage(
    job: dict[str, Any], loss, params, budgets: dict[str, int], method, old: str, step: int, rank: int
):
    # The stage switched on this step's measurement: backward only (DDP expects one per
    # forward), no update, and a fresh optimiser for the new stage.
    loss.backward()
    opt, sched = _stage_optimiser(job, params, budgets, method.stage)
    opt.zero_grad(set_to_none=True)
    if rank == 0:
        progress("unlearn step %d: stage %s -> %s (%s)", step + 1, old, method.stage, method.state())
    return opt, sched


def _unlearn_loop(job: dict[str, Any], student) -> None:
    from lethe import masks
    from lethe.optim import MaskSpec, optimizer_step, unlearn_step

    world, rank, device = placement()
    teacher = frozen_teacher(job, student, device)
    method = job_method(job)
    params = method.trainable_parameters(student)
    budgets = stage_budgets(job, world, method)
    total = sum(budgets.values())  # an upper bound: a multi-stage method may finish earlier
    state = restore_model(student)
    if state is not None:
        method.load_state(state.get("method") or {})
    opt, sched = _stage_optimiser(job, params, budgets, method.stage)
    if state is not None:
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
    start = state["step"] if state else 0
    student = prepare_model(student)
    spec = MaskSpec(**job["mask"])
    box = masks.box_mask(spec.height, spec.width, spec.box_frac, spec.cell)
    loop_start = time.perf_counter() - (state.get("loop_s", 0.0) if state else 0.0)
    x_forget = local_rows(job, "forget", rank, world, device)  # (N_f_local, C, H, W): small, kept whole
    x_retain = local_rows(job, "retain", rank, world, device)  # just the rows the run's steps draw
    evaluate = _evaluator(job, device) if rank == 0 else None
    # Scored checkpoints for best-checkpoint keeping: the same on every rank (reports are collective).
    select_every = job.get("eval_every") if "eval_ref" in job else None
    stop_at = job.get("stop_at")  # a replay: the last step, and the only one scored
    # A search's trials, several at once, would drive one bar by turns: the search shows trials done.
    quiet = job["meta"].get("role") == "tune-trial"
    history = list(state.get("history") or []) if state else []
    student.train()
    t0, seen, parts = time.perf_counter(), 0, {}
    for step in range(start, total):
        if method.finished():
            break
        maybe_fail(job, step, state is not None)
        x_r, x_f, mask, gen = _step_inputs(job, x_retain, x_forget, step, rank, spec, box)
        stage = method.stage
        loss, parts = unlearn_step(method, student, teacher, x_r, x_f, mask, job["alpha"], gen)
        if method.stage != stage:
            opt, sched = _switch_stage(job, loss, params, budgets, method, stage, step, rank)
        else:
            optimizer_step(loss, opt, sched, params, job["grad_clip"])
        seen += len(x_r) + len(x_f)
        done = step + 1
        last = done == total or method.finished()
        stop = done == stop_at
        # a replay scores only its last step: the trial scored the others
        if stop or reports_at(done, last, job["checkpoint_every"], None if stop_at else select_every):
            dt = time.perf_counter() - t0
            metrics = _unlearn_metrics(
                done, loss, parts, method, seen * world / max(dt, 1e-9), time.perf_counter() - loop_start
            )
            # The run's last report: a multi-stage method (decouple_retain) ends before its step budget,
            # and a search must not take such a trial for one that ASHA stopped.
            metrics["ended"] = float(last)
            meta = job["meta"]
            if stop_at and not stop:
                metrics["objective"] = float("nan")  # a checkpoint to resume from, never to keep
            elif evaluate is not None:
                metrics.update(evaluate(student))
                if select_every:
                    history.append({"step": done, **{k: metrics[k] for k in SCORE_KEYS if k in metrics}})
                    # The model file says which step it is and how it scored: the kept one is not the last.
                    meta = {**meta, "step": done, "validation_objective": metrics["objective"]}
            if rank == 0 and not quiet:
                _step_line(done, stop_at or total, metrics)
            progress_state = {
                "step": done,
                "loop_s": metrics["loop_s"],
                "method": method.state(),
                "history": history,
            }
            report(metrics, student, opt, sched, progress_state, meta)
        if stop:
            break


def _step_line(done: int, total: int, metrics: dict[str, Any]) -> None:
    score = metrics.get("objective")  # NaN: a replay's checkpoint that is not scored
    shown = "" if score is None or score != score else f", validation objective {score:.4f}"
    progress(
        "unlearn step %d/%d: loss %.5f, %.0f img/s%s",
        done,
        total,
        metrics["loss"],
        metrics["images_per_s"],
        shown,
    )


def _unlearn_metrics(
    done: int, loss: torch.Tensor, parts: dict[str, Any], method, images_per_s: float, loop_s: float
) -> dict[str, Any]:
    return {
        "step": done,
        "loss": loss.item(),
        **{f"loss_{k}": v for k, v in parts.items()},
        **{f"method_{k}": v for k, v in method.state().items() if k != "stage"},
        "images_per_s": images_per_s,
        "loop_s": loop_s,
    }


# What each scored checkpoint records in the run's selection history (STATE_FILE "history").
SCORE_KEYS = (
    "objective",
    "objective_box",
    "objective_border",
    "fd_forget_vs_oracle",
    "fd_retain_vs_original",
    "psnr_retain_drop",
)


def _evaluator(job: dict[str, Any], device):
    """The objective on validation images, computed by rank 0 at every report: ASHA needs it at every
    rung of a tuning trial, best-checkpoint keeping at every scored step. Plain lethe.evaluate /
    lethe.metrics code, run inside the worker. None when the job has no payload (eval_ref)."""
    if "eval_ref" not in job:
        return None
    import ray

    from lethe.evaluation.selection import validation_scores
    from lethe.models.checkpoint import build_model

    p = ray.get(job["eval_ref"])
    featnet = build_model("featnet", p["featnet_arch"])
    featnet.load_state_dict(p["featnet_state"])
    featnet = featnet.to(device).eval()

    def run(student) -> dict[str, float]:
        return validation_scores(getattr(student, "module", student), featnet, p)

    return run
