"""What a deletion request costs: queue 1, 10 and 100 one-image requests and run `lethe nightly` for
each batch, on one model's lineage (each night starts from the champion the night before promoted).

    python benchmarks/cost_per_request.py [--preset smoke|demo] [--dataset digits] [--batches 1,10,100]
                                          [--workdir DIR] [--out FILE]

Runs the real CLI in subprocesses (`lethe requests submit`, `lethe nightly`); the first night (one
request, not in the table) pretrains the original and makes the champion. Per night it reads
state.json's step times and prints one table: wall time of the night, per request, the oracle's
share (the oracle is a full retrain on the new retain set, so "night - oracle" is what unlearning
adds over retraining) and the night against a plain retrain. Gates are loosened so every night
promotes: this measures cost, not evidence. Writes JSON (default benchmarks/results/cost_per_request.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LOOSE = {
    "gates": {"forget_oracle_tol": 1e6, "retain_fd_tol": 1e6, "retain_psnr_drop_db": 1e6, "mia_auc_tol": 0.5}
}


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "LETHE_DIGEST_KEY": os.environ.get("LETHE_DIGEST_KEY", "cost-per-request-benchmark"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }


def lethe(*argv: str, quiet: bool = False) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "lethe.cli", *argv], env=_env(), text=True, capture_output=quiet
    )
    if r.returncode != 0:
        raise SystemExit(f"lethe {argv[0]} failed with exit code {r.returncode}: {(r.stderr or '')[-500:]}")
    return r


def training_ids(dataset: str, preset: str) -> list[str]:
    from lethe.config import build_config
    from lethe.store.check import DataView

    view = DataView(build_config(preset, overrides={"data": {"dataset": dataset}}))
    return [i for i, t in zip(view.ids, view.is_train, strict=True) if t]


def night(common: list[str], model: str, ids: list[str], folder: Path) -> dict[str, Any]:
    from lethe.cli import main as cli

    os.environ.update(_env())
    for n, i in enumerate(ids):  # in this process: 100 interpreter starts would dwarf the submits
        f = folder / f"request-{n}.txt"
        f.write_text(i + "\n")
        if cli(["requests", "submit", *common, "--model", model, "--ids", str(f)]) != 0:
            raise SystemExit("lethe requests submit failed")
    t0 = time.perf_counter()
    lethe("nightly", *common, "--model", model)
    wall = time.perf_counter() - t0
    state = json.loads((Path(common[common.index("--workdir") + 1]) / "state.json").read_text())
    steps = {k: v for k, v in state["timing_s"].items() if k != "total"}
    return {"requests": len(ids), "wall_s": round(wall, 1), "steps_s": steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="smoke")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--batches", default="1,10,100")
    p.add_argument("--workdir", default=str(REPO / "runs" / "bench-cost-per-request"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cost_per_request.json"))
    a = p.parse_args()
    work = Path(a.workdir)
    shutil.rmtree(work.parent / "bench-cost-per-request-cache", ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg = work.parent / "bench-cost-per-request.yaml"
    cfg.write_text(json.dumps(LOOSE))
    common = ["--dataset", a.dataset, "--workdir", str(work / "w"), "--preset", a.preset]
    common += ["--config", str(cfg), "--cache-dir", str(work.parent / "bench-cost-per-request-cache")]
    batches = [int(b) for b in a.batches.split(",")]
    pool = training_ids(a.dataset, a.preset)[::7]  # spread over the data set, one id per request
    if len(pool) < 1 + sum(batches):
        raise SystemExit(f"{a.dataset} has too few training images for batches {batches}")
    model = "cost-bench"
    first = night(common, model, pool[:1], work)  # pretrains the original; makes the champion
    used, rows = 1, []
    for n in batches:
        row = night(common, model, pool[used : used + n], work)
        used += n
        oracle = row["steps_s"].get("oracle", 0.0)
        row |= {
            "wall_per_request_s": round(row["wall_s"] / n, 2),
            "oracle_s": oracle,
            "oracle_share": round(oracle / row["wall_s"], 3) if row["wall_s"] else None,
            "night_over_retrain": round(row["wall_s"] / oracle, 2) if oracle else None,
            "cumulative_forget": used,
        }
        rows.append(row)
    out = {"preset": a.preset, "dataset": a.dataset, "machine": os.uname().nodename, "cores": os.cpu_count()}
    out |= {"first_night": first, "nights": rows}
    print(
        f"\n{'requests':>8} {'forget':>7} {'night s':>8} {'per req s':>9} {'oracle s':>8} {'oracle %':>8} {'x retrain':>9}"
    )
    for r in rows:
        print(
            f"{r['requests']:>8} {r['cumulative_forget']:>7} {r['wall_s']:>8.1f} {r['wall_per_request_s']:>9.2f} "
            f"{r['oracle_s']:>8.1f} {100 * (r['oracle_share'] or 0):>7.0f}% {r['night_over_retrain'] or 0:>9.2f}"
        )
    dominated = [r for r in rows if (r["oracle_share"] or 0) > 0.5]
    if dominated:
        print("the oracle (a full retrain on the new retain set) is more than half of every such night: "
              "its cost, not the unlearning, sets the price of a request")  # fmt: skip
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
