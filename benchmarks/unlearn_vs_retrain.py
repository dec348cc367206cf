"""Unlearning cost vs retraining, and Ray Train's overhead vs a plain loop, measured in one run.

    python benchmarks/unlearn_vs_retrain.py [--preset demo|smoke] [--workdir DIR] [--out FILE]

Measures, on the same machine and data in one process:
  * oracle retrain wall time (Ray Train) vs unlearning wall time (Ray Train): the ratio the product
    promises to keep under 10%;
  * images/s of the unlearning step;
  * Ray Train vs a plain single-process PyTorch loop, for the same unlearning job and for one
    pretraining epoch (same model, data, batch size and threads).
Prints a table and writes JSON (default benchmarks/results/unlearn_vs_retrain.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from lethe import masks
from lethe.config import build_config
from lethe.data import read_shard_numpy, to_chw_float
from lethe.execution.ray_env import worker_threads
from lethe.methods import get_method
from lethe.models.checkpoint import build_model, load_checkpoint
from lethe.optim import (
    MaskSpec,
    make_optimizer,
    optimizer_step,
    training_loss,
    unlearn_step,
    unlearn_total_steps,
)
from lethe.pipeline.context import make_context
from lethe.pipeline.families import for_config
from lethe.pipeline.jobs import mask_spec, phases
from lethe.pipeline.oracle import step_oracle
from lethe.pipeline.pretrain import step_pretrain
from lethe.pipeline.split import step_split
from lethe.pipeline.state import RunState
from lethe.pipeline.unlearn import step_unlearn


def _tensor(man, name: str) -> torch.Tensor:
    imgs, _, _ = read_shard_numpy(man, name)
    return torch.from_numpy(to_chw_float(imgs))


def plain_unlearn(cfg, man, teacher_path: Path) -> tuple[float, int]:
    """The unlearning job of the Ray Train loop, in one process on in-memory tensors."""
    u = cfg.unlearn
    teacher, _ = load_checkpoint(teacher_path)
    student, _ = load_checkpoint(teacher_path)
    teacher.eval()
    method = get_method(cfg.method, noise=u.noise)
    params = method.trainable_parameters(student)
    total = unlearn_total_steps(man.shards["forget"].count, u.batch_size, 1, u.forget_passes, u.max_steps)
    opt, sched = make_optimizer(params, u.lr, u.weight_decay, total, u.warmup_frac)
    x_f, x_r = _tensor(man, "forget"), _tensor(man, "retain")
    a = teacher.arch
    box = masks.box_mask(a.height, a.width, cfg.eval.box_frac, teacher.mask_cell)
    gen = torch.Generator().manual_seed(cfg.seed)
    bs = u.batch_size
    t0 = time.perf_counter()
    for _step in range(total):
        fi = torch.randint(len(x_f), (bs,), generator=gen)
        ri = torch.randint(len(x_r), (bs,), generator=gen)
        loss, _ = unlearn_step(method, student, teacher, x_r[ri], x_f[fi], box, u.alpha, gen)
        optimizer_step(loss, opt, sched, params, u.grad_clip)
    return time.perf_counter() - t0, total * 2 * bs


def plain_pretrain_epoch(cfg, man, arch: dict) -> tuple[float, int]:
    """One epoch of the first pretraining phase (the only one for single-phase families)."""
    model = build_model(cfg.family, arch)
    phase = phases(cfg)[0]
    params = model.phase_parameters(phase)
    p = cfg.pretrain
    x = _tensor(man, "retain")
    steps_ = -(-len(x) // p.batch_size)
    opt, sched = make_optimizer(params, p.lr, p.weight_decay, steps_, p.warmup_frac)
    spec = MaskSpec(**mask_spec(cfg, arch))
    gen = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(x), generator=gen)
    t0 = time.perf_counter()
    for i in range(0, len(x), p.batch_size):
        xb = x[perm[i : i + p.batch_size]]
        optimizer_step(training_loss(model, xb, spec.sample(len(xb), gen), gen, phase), opt, sched, params)
    return time.perf_counter() - t0, len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo", choices=["demo", "smoke"])
    ap.add_argument("--workdir", default=None, help="default: a fresh temp dir (no cached models)")
    ap.add_argument("--out", default="benchmarks/results/unlearn_vs_retrain.json")
    args = ap.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="lethe-bench-")) / "work"
    cfg = build_config(
        args.preset, overrides={"workdir": str(workdir), "tracking": {"register_model": False}}
    )
    threads = worker_threads(cfg.resources)
    torch.set_num_threads(threads)
    ctx = make_context(cfg)
    ctx.state = RunState()
    with ctx.tracker.pipeline_run("benchmark", {"preset": args.preset}, {"lethe.pipeline": "benchmark"}):
        man = step_split(ctx)
        step_pretrain(ctx)
        step_oracle(ctx)
        step_unlearn(ctx)
    oracle_s = ctx.state.oracle["train_wall_s"]
    unlearn_s = ctx.state.unlearn["train_wall_s"]
    ray_unlearn_ips = ctx.state.unlearn.get("images_per_s")
    plain_unlearn_s, plain_unlearn_imgs = plain_unlearn(cfg, man, ctx.lay.model("original"))
    arch = for_config(cfg).arch(cfg, man)
    plain_epoch_s, epoch_imgs = plain_pretrain_epoch(cfg, man, arch)
    oracle_epochs = cfg.pretrain.epochs

    oracle_loop = ctx.state.oracle.get("final_loop_s")
    unlearn_loop = ctx.state.unlearn.get("loop_s")
    rows = [
        ("oracle retrain, Ray Train wall (s)", oracle_s),
        ("unlearning, Ray Train wall (s)", unlearn_s),
        ("unlearning / oracle, wall", unlearn_s / oracle_s),
        ("oracle retrain, training loop (s)", oracle_loop),
        ("unlearning, training loop (s)", unlearn_loop),
        ("unlearning / oracle, training loop", unlearn_loop / oracle_loop if oracle_loop else None),
        ("unlearning images/s, Ray Train (in-loop)", ray_unlearn_ips),
        ("unlearning, plain loop (s)", plain_unlearn_s),
        ("unlearning images/s, plain loop", plain_unlearn_imgs / plain_unlearn_s),
        ("unlearning: Ray Train wall / plain loop", unlearn_s / plain_unlearn_s),
        ("pretrain epoch on retain, plain loop (s)", plain_epoch_s),
        ("oracle per epoch, Ray Train (s)", oracle_s / oracle_epochs),
        ("pretrain epoch: Ray Train / plain loop", oracle_s / oracle_epochs / plain_epoch_s),
    ]
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch_threads": threads,
            "processor": platform.processor() or platform.machine(),
        },
        "preset": args.preset,
        "config": cfg.model_dump(mode="json"),
        "counts": {n: s.count for n, s in man.shards.items()},
        "results": {name: value for name, value in rows},
        "note": "Ray Train times include starting the worker group and streaming shards from Ray Data.",
    }
    print(f"\nlethe benchmark ({args.preset}) on {os.cpu_count()} CPUs, {threads} torch threads per worker")
    print(f"{'measure':<44} {'value':>12}")
    print("-" * 57)
    for name, value in rows:
        print(f"{name:<44} {value:>12.3f}" if value is not None else f"{name:<44} {'n/a':>12}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
