"""Ray Train vs a plain single-process PyTorch loop, on the same job and data, in one run.

    python benchmarks/ray_vs_plain.py [--preset demo|smoke] [--rows N] [--out FILE]

Runs lethe's real steps (split, pretrain with one epoch, unlearn: Ray Data shards, Ray Train worker
groups) and then the same work in a plain loop in this process, at the worker's torch thread count:
  * one pretraining epoch of the original model (forget + retain, the pretraining batch size);
  * the unlearning job (its steps, batches of retain + forget, masks, teacher).
Both sides' img/s are measured inside the training loop (start-up excluded); the Ray side's wall
time (worker group start-up, data loading, checkpoints included) is reported beside it. Also: the
machine's fp32 GEMM rate at that thread count, the model's FLOPs per image (torch's flop counter,
forward + backward), and so the share of the GEMM rate the hot step reaches.
With --run it also runs `make run`'s command (`lethe pipeline run --local`, the preset's whole
recipe, under a pseudo-terminal so its screen is what a person sees) and sets its wall time against
the plain loop's time for the same training work (the original's and the oracle's epochs, the feature
net's, and every unlearning step the run trained: method auto's search trials and the unlearn step,
each at the plain loop's time per step of its method), from the plain loops measured here (the
pretraining and feature-net rates once before and once after the run); and against the same work with
the validation scoring the run's loops did at every report (one scoring timed here, times their
count). The screen is saved beside the JSON.
Prints a table and writes JSON (default benchmarks/results/ray_vs_plain.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import ray
import torch
from torch.utils.flop_counter import FlopCounterMode

from lethe import masks
from lethe.config import build_config
from lethe.data import read_shard_numpy, to_chw_float
from lethe.execution.ray_env import worker_threads
from lethe.methods import get_method
from lethe.models.checkpoint import build_model, load_checkpoint
from lethe.models.featnet import FeatNetArch
from lethe.optim import (
    MaskSpec,
    classifier_loss,
    make_optimizer,
    optimizer_step,
    training_loss,
    unlearn_step,
)
from lethe.orchestration.local_screen import ANSI_ESCAPE
from lethe.pipeline.context import make_context
from lethe.pipeline.families import for_config
from lethe.pipeline.jobs import mask_spec, phases
from lethe.pipeline.pretrain import step_pretrain
from lethe.pipeline.split import step_split
from lethe.pipeline.state import RunState
from lethe.pipeline.unlearn import step_unlearn

PLAIN_METHOD = "encoder_noise"
STEP_PROBE = 10  # plain-loop steps that time one step of each searched method


def _tensor(man, *names: str) -> torch.Tensor:
    return torch.cat([torch.from_numpy(to_chw_float(read_shard_numpy(man, n)[0])) for n in names])


def gemm_gflops(threads: int, n: int = 1024, seconds: float = 2.0) -> float:
    """fp32 matrix multiply rate of this machine at `threads` threads (GFLOP/s)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.mm(a, b)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class Pretrain:
    """One pretraining epoch of the original model (first phase), as the Ray worker runs it."""

    def __init__(self, cfg, man, arch: dict, shards: tuple[str, ...] = ("forget", "retain")) -> None:
        p = cfg.pretrain
        self.model = build_model(cfg.family, arch)
        self.phase = phases(cfg)[0]
        self.params = self.model.phase_parameters(self.phase)
        self.x = _tensor(man, *shards)
        self.bs = p.batch_size
        self.opt, self.sched = make_optimizer(
            self.params, p.lr, p.weight_decay, -(-len(self.x) // self.bs), p.warmup_frac
        )
        self.spec = MaskSpec(**mask_spec(cfg, arch))
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def step(self, xb: torch.Tensor) -> None:
        loss = training_loss(self.model, xb, self.spec.sample(len(xb), self.gen), self.gen, self.phase)
        optimizer_step(loss, self.opt, self.sched, self.params)

    def epoch(self) -> tuple[float, int]:
        perm = torch.randperm(len(self.x), generator=self.gen)
        t0 = time.perf_counter()
        for i in range(0, len(self.x), self.bs):
            self.step(self.x[perm[i : i + self.bs]])
        return time.perf_counter() - t0, len(self.x)

    def flops_per_image(self) -> float:
        xb = self.x[: self.bs]
        return _flops(lambda: self.step(xb)) / len(xb)


class Unlearn:
    """The unlearning job of the Ray worker (same steps, batch size, masks, teacher), in memory."""

    def __init__(self, cfg, man, original: Path, steps: int, method: str | None = None) -> None:
        u = cfg.unlearn
        self.teacher, _ = load_checkpoint(original)
        self.student, _ = load_checkpoint(original)
        self.teacher.eval()
        self.method = get_method(method or cfg.method, noise=u.noise)
        self.params = self.method.trainable_parameters(self.student)
        self.steps, self.bs, self.alpha, self.clip = steps, u.batch_size, u.alpha, u.grad_clip
        self.opt, self.sched = make_optimizer(self.params, u.lr, u.weight_decay, steps, u.warmup_frac)
        self.x_f, self.x_r = _tensor(man, "forget"), _tensor(man, "retain")
        a = self.teacher.arch
        self.random_mask = u.mask == "random"
        self.shape = (a.height, a.width, self.teacher.mask_cell)
        self.box = masks.box_mask(a.height, a.width, cfg.eval.box_frac, self.teacher.mask_cell)
        self.ratio = cfg.pretrain.mask_ratio
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def step(self) -> None:
        fi = torch.randint(len(self.x_f), (self.bs,), generator=self.gen)
        ri = torch.randint(len(self.x_r), (self.bs,), generator=self.gen)
        h, w, cell = self.shape
        mask = (
            masks.random_mask(2 * self.bs, h, w, cell, self.ratio, self.gen) if self.random_mask else self.box
        )
        loss, _ = unlearn_step(
            self.method, self.student, self.teacher, self.x_r[ri], self.x_f[fi], mask, self.alpha, self.gen
        )
        optimizer_step(loss, self.opt, self.sched, self.params, self.clip)

    def run(self) -> tuple[float, int]:
        t0 = time.perf_counter()
        for _ in range(self.steps):
            self.step()
        return time.perf_counter() - t0, self.steps * 2 * self.bs

    def flops_per_image(self) -> float:
        return _flops(self.step) / (2 * self.bs)


def plain_featnet_epoch(cfg, man) -> float:
    """img/s of one epoch of the FD feature net (a small classifier) in a plain loop."""
    f = cfg.featnet
    arch = FeatNetArch(man.height, man.width, man.channels, len(man.class_names), f.width, f.feat_dim)
    model = build_model("featnet", arch.to_dict())
    x = _tensor(man, "forget", "retain")
    y = torch.cat([torch.tensor(read_shard_numpy(man, n)[1]).long() for n in ("forget", "retain")])
    params = [q for q in model.parameters() if q.requires_grad]
    opt, sched = make_optimizer(params, f.lr, 0.0, -(-len(x) // f.batch_size), 0.0)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(cfg.seed))
    t0 = time.perf_counter()
    for i in range(0, len(x), f.batch_size):
        idx = perm[i : i + f.batch_size]
        optimizer_step(classifier_loss(model, x[idx], y[idx]), opt, sched, params)
    return len(x) / (time.perf_counter() - t0)


def plain_scoring_s(ctx, man, threads: int, reps: int = 3) -> float:
    """Seconds of one validation scoring in this process: the tune objective of one checkpoint on the
    recipe's validation images under both masks, as a search trial and the unlearn step compute it at
    every report (lethe.evaluation.selection.validation_scores), on the payload the pipeline builds
    (lethe.pipeline.validation.validation_payload). Its cost depends on the image counts and the models'
    shapes, not their weights: the original stands in for the oracle and the student."""
    from lethe.evaluation.selection import validation_scores
    from lethe.pipeline.validation import validation_payload

    torch.set_num_threads(threads)
    model, _ = load_checkpoint(ctx.lay.model("original"))
    featnet, _ = load_checkpoint(ctx.lay.model("featnet"))
    payload, _ = validation_payload(ctx, man, {"original": model, "oracle": model, "featnet": featnet})
    validation_scores(model, featnet, payload)  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        validation_scores(model, featnet, payload)
    return (time.perf_counter() - t0) / reps


def make_run(preset: str, screen: Path) -> dict:
    """`make run`'s command in a fresh work dir under a pseudo-terminal (util-linux `script`): its
    wall time, its step times (state.json) and its screen, as a person sees it."""
    work = Path(tempfile.mkdtemp(prefix="lethe-bench-run-")) / "work"
    cmd = [sys.executable, "-m", "lethe.cli", "pipeline", "run", "--local", "--preset", preset]
    cmd += ["--workdir", str(work)]
    raw = screen.with_suffix(".raw")
    screen.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done = subprocess.run(["script", "-q", "-e", "-c", shlex.join(cmd), str(raw)], stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"the run failed (exit {done.returncode}); its screen: {raw}")
    # What stays on a terminal: a bar's frames (carriage returns, or one line each here) collapse to
    # the last one; lines of terminal escapes alone go.
    text = raw.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
    lines: list[str] = []
    for ln in text.splitlines()[1:-1]:
        ln = ln.split("\r")[-1]
        if not ANSI_ESCAPE.sub("", ln).strip():
            continue
        if lines and "|" in ln and lines[-1].split("|")[0].split(":")[0] == ln.split("|")[0].split(":")[0]:
            lines[-1] = ln  # the same bar, a later frame
        else:
            lines.append(ln)
    screen.write_text("\n".join(lines) + "\n", encoding="utf-8")
    raw.unlink()
    state = json.loads((work / "state.json").read_text())
    tune = work / "tune" / "result.json"
    trials = json.loads(tune.read_text())["trials"] if tune.is_file() else []  # none: no search ran
    return {
        "wall_s": wall,
        "screen_lines": len(lines),
        "steps_s": state.get("timing_s", {}),
        "unlearning_steps": unlearning_steps(trials, state),
        "validation_scorings": validation_scorings(trials, state),
    }


def unlearning_steps(trials: list[dict], state: dict) -> dict[str, int]:
    """Unlearning steps the run trained, per method: every search trial's and the unlearn step's own
    (its whole length, keeping its best checkpoint; up to the kept step when it replayed the chosen
    trial: lethe.pipeline.replay)."""
    steps: dict[str, int] = {}
    for t in trials:
        steps[t["method"]] = steps.get(t["method"], 0) + int(t.get("steps") or 0)
    u = state["unlearn"]
    ck = u.get("checkpoint") or {}
    ran = int((ck.get("replay") or {}).get("trained_steps") or ck.get("last_step") or u["step"])
    steps[u["method"]] = steps.get(u["method"], 0) + ran
    return steps


def validation_scorings(trials: list[dict], state: dict) -> int:
    """How many times the run scored a checkpoint on its validation images: every report of every
    search trial (ASHA reads the objective at each) and every scored step of the unlearn step (one
    when it replayed the chosen trial, whose scores its history shows)."""
    n = sum(int(t.get("iterations") or 0) for t in trials)
    ck = state["unlearn"].get("checkpoint") or {}
    return n + (1 if ck.get("replay") else len(ck.get("history") or []))


def print_and_write(title: str, rows: list, result: dict, out: Path) -> None:
    """The benchmark's table on the terminal, its JSON to `out`."""
    print(f"\n{title}\n{'measure':<44} {'value':>12}\n" + "-" * 57)
    for name, value in rows:
        print(f"{name:<44} {value:>12.3f}" if value is not None else f"{name:<44} {'n/a':>12}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {out}")


def ray_side(cfg, *steps) -> tuple:
    """lethe's real split, then `steps` (e.g. step_pretrain, step_unlearn), in one benchmark run."""
    ctx = make_context(cfg)
    ctx.state = RunState()
    with ctx.tracker.pipeline_run("benchmark", {"preset": cfg.preset}, {"lethe.pipeline": "benchmark"}):
        man = step_split(ctx)
        for step in steps:
            step(ctx)
    return ctx, man


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo", choices=["demo", "smoke"])
    ap.add_argument("--rows", type=int, default=None, help="cap the training rows (default: the preset's)")
    ap.add_argument("--out", default="benchmarks/results/ray_vs_plain.json")
    ap.add_argument("--run", action="store_true", help="also time `make run` against the plain loops")
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="lethe-bench-")) / "work"
    # The Ray side runs one unlearning job of a fixed method (method auto would first search), with no
    # validation scoring (that needs an oracle; the plain loop does not score either).
    over: dict = {
        "workdir": str(workdir),
        "method": PLAIN_METHOD,
        "unlearn": {"keep_best": False},
        "pretrain": {"epochs": 1},
        "tracking": {"register_model": False},
    }
    if args.rows:
        over["data"] = {"max_train": args.rows}
    cfg = build_config(args.preset, overrides=over)
    threads = worker_threads(cfg.resources)

    ctx, man = ray_side(cfg, step_pretrain, step_unlearn)
    # This process's local Ray goes before anything else is timed: left idle, its ~12 processes woke
    # often enough to slow `make run`'s training epochs by 5% (638 against 656 and 682 img/s, one
    # pretraining epoch of `lethe pipeline run --local`, 2-core dev machine, 2026-12-07); a user's
    # `make run` has no second Ray beside it.
    ray.shutdown()
    original = ctx.state.pretrain["original"]
    unlearned = ctx.state.unlearn

    torch.set_num_threads(threads)
    pre = Pretrain(cfg, man, for_config(cfg).arch(cfg, man))
    plain_pre_s, plain_pre_n = pre.epoch()
    unl = Unlearn(cfg, man, ctx.lay.model("original"), int(unlearned["step"]))
    plain_unl_s, plain_unl_n = unl.run()
    gflops = gemm_gflops(threads)
    pre_flops, unl_flops = pre.flops_per_image(), unl.flops_per_image()

    plain_pre_ips, plain_unl_ips = plain_pre_n / plain_pre_s, plain_unl_n / plain_unl_s
    ray_pre_ips, ray_unl_ips = original["final_images_per_s"], unlearned["images_per_s"]
    result = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
        },
        "preset": cfg.preset,
        "family": cfg.family,
        "rows": {"pretrain_epoch": plain_pre_n, "unlearn_images": plain_unl_n},
        "torch_threads": {"ray_worker": threads, "plain": threads, "gemm": threads},
        "ray_workers": cfg.resources.num_workers,
        "gemm_gflops": gflops,
        "flops_per_image": {"pretrain": pre_flops, "unlearn": unl_flops},
        "pretrain": {
            "plain_images_per_s": plain_pre_ips,
            "ray_images_per_s": ray_pre_ips,
            "ray_wall_s": original.get("train_wall_s"),
            "ray_loop_s": original.get("final_loop_s"),
            "plain_loop_s": plain_pre_s,
        },
        "unlearn": {
            "plain_images_per_s": plain_unl_ips,
            "ray_images_per_s": ray_unl_ips,
            "ray_wall_s": unlearned.get("train_wall_s"),
            "ray_loop_s": unlearned.get("loop_s"),
            "plain_loop_s": plain_unl_s,
            "steps": int(unlearned["step"]),
        },
        "pretrain_ray_over_plain": ray_pre_ips / plain_pre_ips,
        "unlearn_ray_over_plain": ray_unl_ips / plain_unl_ips,
        "pretrain_hot_step_share_of_gemm": plain_pre_ips * pre_flops / (gflops * 1e9),
        "unlearn_hot_step_share_of_gemm": plain_unl_ips * unl_flops / (gflops * 1e9),
        "note": "img/s inside the training loop on both sides; the Ray wall time adds the worker group's "
        "start-up, Ray Data's shard loading and checkpoint reports.",
    }
    rows = [
        ("pretrain epoch, plain loop (img/s)", plain_pre_ips),
        ("pretrain epoch, Ray Train worker (img/s)", ray_pre_ips),
        ("pretrain: Ray / plain (img/s)", result["pretrain_ray_over_plain"]),
        ("pretrain: Ray wall incl. start-up (s)", original.get("train_wall_s")),
        ("pretrain: plain loop (s)", plain_pre_s),
        ("unlearning, plain loop (img/s)", plain_unl_ips),
        ("unlearning, Ray Train worker (img/s)", ray_unl_ips),
        ("unlearning: Ray / plain (img/s)", result["unlearn_ray_over_plain"]),
        ("unlearning: Ray wall incl. start-up (s)", unlearned.get("train_wall_s")),
        ("unlearning: plain loop (s)", plain_unl_s),
        (f"fp32 GEMM at {threads} threads (GFLOP/s)", gflops),
        ("pretrain FLOPs per image (MFLOP)", pre_flops / 1e6),
        ("unlearning FLOPs per image (MFLOP)", unl_flops / 1e6),
        ("pretrain hot step, share of GEMM rate", result["pretrain_hot_step_share_of_gemm"]),
        ("unlearning hot step, share of GEMM rate", result["unlearn_hot_step_share_of_gemm"]),
    ]
    if args.run:
        arch = for_config(cfg).arch(cfg, man)
        rows += _make_run_rows(
            args, result, man, plain_pre_ips, lambda: Pretrain(cfg, man, arch).epoch(), ctx, threads
        )
    title = (
        f"Ray Train vs plain loop ({cfg.preset}, {cfg.family}) on {os.cpu_count()} CPUs, {threads} threads"
    )
    print_and_write(title, rows, result, Path(args.out))


def _make_run_rows(args, result: dict, man, plain_pre_ips: float, pretrain_epoch, ctx, threads: int) -> list:
    """`make run` on the preset's own recipe against the plain loops' time for its training work.

    The plain pretraining and feature-net rates are measured before and after the run (this machine's
    speed drifts by 10% within minutes): each plain training time uses the mean of the two per-image
    times."""
    full = build_config(args.preset)  # the recipe `make run` uses (all its epochs)
    original = ctx.lay.model("original")
    n_train = man.shards["forget"].count + man.shards["retain"].count
    n_retain = man.shards["retain"].count
    featnet_before = plain_featnet_epoch(full, man)
    run = make_run(args.preset, Path(args.out).with_name("make_run_screen.txt"))
    after_s, after_n = pretrain_epoch()
    pre_rates = {"before": plain_pre_ips, "after": after_n / after_s}
    featnet_rates = {"before": featnet_before, "after": plain_featnet_epoch(full, man)}
    pre_ips = 2 / sum(1 / r for r in pre_rates.values())  # the mean per-image time, as a rate
    featnet_ips = 2 / sum(1 / r for r in featnet_rates.values())
    # One step of each method the run trained (its search's trials and its unlearn step), timed in the
    # plain loop: the methods' steps differ (a teacher pass or not, a noise draw or not).
    step_s = {}
    for method in run["unlearning_steps"]:
        t, _ = Unlearn(full, man, original, STEP_PROBE, method).run()
        step_s[method] = t / STEP_PROBE
    plain = {
        "original": full.pretrain.epochs * n_train / pre_ips,
        "featnet": full.featnet.epochs * n_train / featnet_ips,
        "oracle": full.pretrain.epochs * n_retain / pre_ips,
        "unlearning": sum(n * step_s[m] for m, n in run["unlearning_steps"].items()),
    }
    plain_s = sum(plain.values())
    scoring_s = plain_scoring_s(ctx, man, threads)
    # The same work with the scoring the training loops do at every report (the search's trials and
    # the unlearn step's checkpoint keeping): what a plain program choosing the same checkpoints runs.
    plain_work_s = plain_s + run["validation_scorings"] * scoring_s
    result["make_run"] = {
        **run,
        "plain_step_s": step_s,
        "plain_training_s": plain,
        "plain_training_total_s": plain_s,
        "wall_over_plain_training": run["wall_s"] / plain_s,
        "plain_scoring_s": scoring_s,
        "plain_training_and_scoring_s": plain_work_s,
        "wall_over_plain_training_and_scoring": run["wall_s"] / plain_work_s,
        "plain_pretrain_images_per_s": {**pre_rates, "used": pre_ips},
        "plain_featnet_images_per_s": {**featnet_rates, "used": featnet_ips},
        "note": "plain time = the recipe's images per training job / the plain loop's img/s measured in "
        "this run, the mean per-image time of a measurement before and one after make run (pretraining epochs "
        "for the original and the oracle, the feature net's own epoch rate) "
        "+ every unlearning step the run trained (method auto's search trials and the unlearn step) x the "
        "plain loop's time per step of that method; the run's wall time also includes split, the search's "
        "and the unlearn step's validation scoring, evaluation, registry and cleanup, process and Ray start-up. "
        "plain_training_and_scoring_s adds the validation scorings the run's loops made (validation_scorings) x "
        "one scoring's time in this process (plain_scoring_s)",
    }
    return [
        ("plain pretraining before / after make run (img/s)", pre_rates["before"]),
        ("", pre_rates["after"]),
        ("plain feature net before / after make run (img/s)", featnet_rates["before"]),
        ("", featnet_rates["after"]),
        ("make run: wall (s)", run["wall_s"]),
        ("make run: its training work, plain loop (s)", plain_s),
        ("make run: wall / plain training", result["make_run"]["wall_over_plain_training"]),
        ("make run: validation scorings (count)", float(run["validation_scorings"])),
        ("make run: one scoring, plain (s)", scoring_s),
        ("make run: training + scoring, plain (s)", plain_work_s),
        (
            "make run: wall / plain training + scoring",
            result["make_run"]["wall_over_plain_training_and_scoring"],
        ),
        ("make run: lines on the screen", float(run["screen_lines"])),
    ]


if __name__ == "__main__":
    main()
