"""Where the evaluate step's time goes, on the preset's real evaluation sets, in one run.

    python benchmarks/evaluation.py [--preset demo|smoke] [--family mae] [--out FILE]

Runs lethe's real split (Ray Data) into a temporary work dir, then the evaluation
(lethe.evaluation.reconstruction.evaluate_models) of three models of the family on the held-out
shards, under a profiler, and splits its wall time into inpainting, measuring (features, per-image
figures, FD) with its bootstrap FDs, the membership attack and the pictures. The models are untrained:
the cost of a forward pass does not depend on the weights. It also times the bootstrap FD series
(`evidence.fd_series`) on features of the evaluation's shape against the form it replaced (the
eigenvalues of the non-symmetric Sa St, both moments per model), and checks they agree.
Prints a table and writes JSON (default benchmarks/results/evaluation.json).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from ray_vs_plain import print_and_write, ray_side  # benchmarks/ is this script's sys.path[0]

from lethe.config import build_config
from lethe.evaluation import evidence
from lethe.evaluation.reconstruction import MODEL_NAMES, evaluate_models
from lethe.models import build_model
from lethe.models.featnet import FeatNetArch
from lethe.pipeline.families import for_config
from lethe.pipeline.i2i import eval_data, eval_settings

# The phases of evaluate_models, by the function that does each (cumulative profiler time).
PHASES = {
    "inpainting": "_inpaint_all",
    "measuring": "measure",
    "bootstrap_fds": "fd_series",  # inside measuring
    "membership_attack": "_membership",
    "pictures": "_grids",
}


def replaced_fd_series(out: np.ndarray, truth: np.ndarray, rs: evidence.Resamples) -> np.ndarray:
    """The bootstrap FD series as it was computed before: both moments per model, eigenvalues of Sa St."""
    series = np.empty(len(rs.idx))
    for b, idx in enumerate(rs.idx):
        xa, xt = out[idx], truth[idx]
        sa, st = np.cov(xa, rowvar=False), np.cov(xt, rowvar=False)
        ev = np.linalg.eigvals(sa @ st).real
        diff = xa.mean(0) - xt.mean(0)
        series[b] = max(
            float(diff @ diff + np.trace(sa) + np.trace(st) - 2 * np.sqrt(np.clip(ev, 0, None)).sum()), 0
        )
    return series


def bootstrap_rows(n: int, dim: int, resamples: int, models: int) -> dict[str, float]:
    """Seconds for `models` FD series against one truth, the replaced form and the shipped one."""
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(n, dim))
    outs = [truth @ rng.normal(0, 0.3, (dim, dim)) + rng.normal(0.1, 0.5, truth.shape) for _ in range(models)]
    rs = evidence.Resamples.draw(n, resamples, seed=1)
    t0 = time.perf_counter()
    before = [replaced_fd_series(o, truth, rs) for o in outs]
    t1 = time.perf_counter()
    shared = evidence.TruthMoments.of(truth, rs)
    after = [evidence.fd_series(o, truth, rs, shared) for o in outs]
    t2 = time.perf_counter()
    diff = max(float(np.max(np.abs(a / b - 1))) for a, b in zip(after, before, strict=True))
    return {"replaced_s": t1 - t0, "shipped_s": t2 - t1, "max_relative_difference": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo", choices=["demo", "smoke"])
    ap.add_argument("--family", default="mae")
    ap.add_argument("--out", default="benchmarks/results/evaluation.json")
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="lethe-bench-")) / "work"
    cfg = build_config(args.preset, overrides={"family": args.family, "workdir": str(workdir)})
    _, man = ray_side(cfg)  # lethe's real split, nothing after it
    arch = for_config(cfg).arch(cfg, man)
    torch.manual_seed(0)
    models = {n: build_model(cfg.family, arch) for n in MODEL_NAMES}
    f = cfg.featnet
    featnet = build_model(
        "featnet", FeatNetArch(man.height, man.width, man.channels, 10, f.width, f.feat_dim).to_dict()
    )
    data = eval_data(cfg, man, str(workdir))
    e = cfg.eval
    threads = max(1, os.cpu_count() or 1)  # as the evaluate step sets
    torch.set_num_threads(threads)
    settings = eval_settings(cfg, workdir / "report")
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    evaluate_models(models, featnet, data, settings)
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}
    phase_s = {
        label: sum(v[3] for (file, _, name), v in stats.items() if name == fn and "lethe" in file)
        for label, fn in PHASES.items()
    }
    sizes = {k: len(getattr(data, k)) for k in ("forget", "retain", "members", "nonmembers")}
    boot = bootstrap_rows(max(sizes["forget"], sizes["retain"]), f.feat_dim, e.bootstrap, len(models))
    result = {
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
        "preset": cfg.preset,
        "family": cfg.family,
        "torch_threads": threads,
        "images": sizes,
        "bootstrap_resamples": e.bootstrap,
        "attack_masks": e.attack_masks,
        "evaluate_models_s": wall,
        "phases_s": phase_s,
        "bootstrap_fd_series": {"rows": max(sizes["forget"], sizes["retain"]), "models": len(models), **boot},
        "note": "wall time under cProfile (its overhead included); phases are cumulative profiler times "
        "of the functions named in benchmarks/evaluation.py PHASES; models untrained",
    }
    rows = [("evaluate_models (s)", wall), *((f"{k.replace('_', ' ')} (s)", v) for k, v in phase_s.items())]
    rows += [
        (f"bootstrap FDs, {len(models)} models, replaced form (s)", boot["replaced_s"]),
        (f"bootstrap FDs, {len(models)} models, shipped form (s)", boot["shipped_s"]),
        ("  largest relative difference", boot["max_relative_difference"]),
    ]
    print_and_write(f"evaluate, {cfg.preset} preset, {cfg.family}", rows, result, Path(args.out))


if __name__ == "__main__":
    main()
