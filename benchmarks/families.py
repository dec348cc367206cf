"""Cost of each model family through the real pipeline: pretrain, oracle, unlearning (and evaluation).

    python benchmarks/families.py [--preset demo|smoke] [--families mae,vqgan,diffusion]
                                  [--evaluate] [--workdir DIR] [--out FILE]

One split is shared by all families; each family then trains its original model and its oracle
(Ray Train, fresh cache: nothing reused) and runs its default unlearning method. Wall times are
Ray Train fit() times (worker start-up and data loading included); images/s is images processed
over that wall time, and "in-loop" images/s is what the training loop itself measured in its last
epoch / at its last report. With --evaluate, the evaluate step (each family's own sampler on held-out
data, two masks) is timed too. Prints one table and writes JSON (default
benchmarks/results/families.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from lethe.catalogue import I2I_FAMILIES
from lethe.config import build_config
from lethe.execution.ray_env import worker_threads
from lethe.pipeline.context import make_context
from lethe.pipeline.evaluate import step_evaluate
from lethe.pipeline.oracle import step_oracle
from lethe.pipeline.pretrain import step_pretrain
from lethe.pipeline.split import step_split
from lethe.pipeline.state import RunState
from lethe.pipeline.unlearn import step_unlearn


def _per_s(images: float, seconds: float | None) -> float | None:
    return images / seconds if seconds else None


def bench_family(family: str, preset: str, root: Path, evaluate: bool) -> dict[str, Any]:
    cfg = build_config(
        preset,
        overrides={
            "family": family,
            "workdir": str(root / "work"),
            # a cache per family and per benchmark run: every model is trained, never reused
            "cache_dir": str(root / f"cache-{family}"),
            "tracking": {"register_model": False},
        },
    )
    ctx = make_context(cfg)
    ctx.state = RunState()
    with ctx.tracker.pipeline_run(f"benchmark-{family}", {"preset": preset}, {"lethe.pipeline": "benchmark"}):
        man = step_split(ctx) if not ctx.lay.manifest.is_file() else ctx.manifest()
        step_pretrain(ctx)
        step_oracle(ctx)
        step_unlearn(ctx)
        eval_s = None
        if evaluate:
            t0 = time.perf_counter()
            step_evaluate(ctx)
            eval_s = time.perf_counter() - t0
    counts = {n: s.count for n, s in man.shards.items()}
    epochs = cfg.pretrain.epochs
    orig, oracle, unl = ctx.state.pretrain["original"], ctx.state.oracle, ctx.state.unlearn
    unl_images = float(unl.get("step", 0)) * 2 * cfg.unlearn.batch_size
    n_eval = min(cfg.eval.n_forget, counts["heldout_forget"]) + min(
        cfg.eval.n_retain, counts["heldout_retain"]
    )
    return {
        "family": family,
        "phases": orig.get("phases"),
        "pretrain_s": orig.get("train_wall_s"),
        "pretrain_images_per_s": _per_s(
            (counts["forget"] + counts["retain"]) * epochs, orig.get("train_wall_s")
        ),
        "pretrain_in_loop_images_per_s": orig.get("final_images_per_s"),
        "oracle_s": oracle.get("train_wall_s"),
        "oracle_images_per_s": _per_s(counts["retain"] * epochs, oracle.get("train_wall_s")),
        "unlearn_s": unl.get("train_wall_s"),
        "unlearn_steps": unl.get("step"),
        "unlearn_images_per_s": _per_s(unl_images, unl.get("train_wall_s")),
        "unlearn_in_loop_images_per_s": unl.get("images_per_s"),
        "unlearn_vs_oracle": (unl["train_wall_s"] / oracle["train_wall_s"])
        if oracle.get("train_wall_s")
        else None,
        "evaluate_s": eval_s,
        # 3 models x 2 masks x (forget + retain held-out images), each through the family's sampler
        "evaluate_images_per_s": _per_s(3 * 2 * n_eval, eval_s),
        "sampler": _sampler(cfg),
        "counts": counts,
        "config": {"model": cfg.model.section(family), "pretrain": cfg.pretrain.model_dump()},
    }


def _sampler(cfg) -> dict[str, Any]:
    from lethe.models import build_model, get_family

    man = make_context(cfg).manifest()
    arch = get_family(cfg.family).build_arch(
        cfg.model.section(cfg.family), man.height, man.width, man.channels
    )
    return build_model(cfg.family, arch).sampler_info()


COLUMNS = [
    ("family", "family", "{}"),
    ("pretrain_s", "pretrain s", "{:.1f}"),
    ("pretrain_images_per_s", "img/s", "{:.0f}"),
    ("oracle_s", "oracle s", "{:.1f}"),
    ("oracle_images_per_s", "img/s", "{:.0f}"),
    ("unlearn_s", "unlearn s", "{:.1f}"),
    ("unlearn_images_per_s", "img/s", "{:.0f}"),
    ("unlearn_vs_oracle", "unl/oracle", "{:.3f}"),
    ("evaluate_s", "eval s", "{:.1f}"),
]


def table(rows: list[dict[str, Any]]) -> str:
    head = " ".join(f"{title:>11}" for _, title, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = [fmt.format(r[k]) if r.get(k) is not None else "n/a" for k, _, fmt in COLUMNS]
        lines.append(" ".join(f"{c:>11}" for c in cells))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo", choices=["demo", "smoke"])
    ap.add_argument("--families", default=",".join(I2I_FAMILIES))
    ap.add_argument("--evaluate", action="store_true", help="also time the evaluate step (samplers)")
    ap.add_argument("--workdir", default=None, help="default: a fresh temp dir")
    ap.add_argument("--out", default="benchmarks/results/families.json")
    args = ap.parse_args()

    root = Path(args.workdir or tempfile.mkdtemp(prefix="lethe-families-"))
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    rows = []
    for family in families:
        t0 = time.perf_counter()
        rows.append(bench_family(family, args.preset, root, args.evaluate))
        print(f"{family}: {time.perf_counter() - t0:.0f} s", flush=True)
    cfg = build_config(args.preset)
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average_at_end": os.getloadavg(),
            "torch_threads": worker_threads(cfg.resources),
        },
        "preset": args.preset,
        "families": rows,
        "note": "Ray Train fit() wall times (worker start and data loading included). A shared machine's "
        "load inflates every number; compare families within one run.",
    }
    print(f"\nlethe families benchmark ({args.preset}) on {os.cpu_count()} CPUs")
    print(table(rows))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
