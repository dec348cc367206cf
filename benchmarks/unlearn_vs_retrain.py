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
import os
import platform
import tempfile
from pathlib import Path

import torch
from ray_vs_plain import (  # benchmarks/ is this script's sys.path[0]
    Pretrain,
    Unlearn,
    print_and_write,
    ray_side,
)

from lethe.config import build_config
from lethe.execution.ray_env import worker_threads
from lethe.pipeline.families import for_config
from lethe.pipeline.oracle import step_oracle
from lethe.pipeline.pretrain import step_pretrain
from lethe.pipeline.unlearn import step_unlearn


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
    ctx, man = ray_side(cfg, step_pretrain, step_oracle, step_unlearn)
    oracle_s = ctx.state.oracle["train_wall_s"]
    unlearn_s = ctx.state.unlearn["train_wall_s"]
    ray_unlearn_ips = ctx.state.unlearn.get("images_per_s")
    steps = int(ctx.state.unlearn["step"])
    plain_unlearn_s, plain_unlearn_imgs = Unlearn(cfg, man, ctx.lay.model("original"), steps).run()
    arch = for_config(cfg).arch(cfg, man)
    plain_epoch_s, epoch_imgs = Pretrain(cfg, man, arch, ("retain",)).epoch()
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
    title = f"lethe benchmark ({args.preset}) on {os.cpu_count()} CPUs, {threads} torch threads per worker"
    print_and_write(title, rows, result, Path(args.out))


if __name__ == "__main__":
    main()
