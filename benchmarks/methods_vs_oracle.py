"""Unlearning methods side by side against the oracle, on one split, one original and one oracle.

    python benchmarks/methods_vs_oracle.py [--preset demo|smoke] [--family mae]
                                           [--methods encoder_noise,decouple_retain]
                                           [--dataset fashion-mnist] [--forget-classes Trouser]
                                           [--workdir DIR] [--out FILE]

Runs the real CLI: `lethe split`, `pretrain` and `oracle` once, then `lethe unlearn` and
`lethe evaluate` once per method in the same work dir, so every method starts from the same
original model and is compared with the same oracle (the work dir's model cache makes the second
method reuse them). After each evaluation the method's report.json is kept. Prints one table
(held-out data, centre-box mask): forget / retain metrics of the original, each method and the
oracle, the distance to the oracle on forget (report.json `distance_to_oracle`: fd_rel =
|FD - FD_oracle| / FD_oracle, psnr_abs = |PSNR - PSNR_oracle|) and retain quality relative to the
original. Writes JSON (default benchmarks/results/methods_vs_oracle.json).
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


def lethe(step: str, common: list[str], *extra: str) -> float:
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "lethe.cli", step, *common, *extra], env=env, text=True)
    if r.returncode != 0:
        raise SystemExit(f"lethe {step} failed with exit code {r.returncode}")
    return time.perf_counter() - t0


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarise(reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row per model: original and oracle (from the first report; all share them) and each method."""
    first = next(iter(reports.values()))
    rows: dict[str, dict[str, Any]] = {}

    def row(metrics: dict, dist: dict, original: dict) -> dict[str, Any]:
        f, r = metrics["forget"], metrics["retain"]
        return {
            "forget_fd": f["fd"],
            "forget_psnr": f["psnr"],
            "forget_ssim": f["ssim"],
            "forget_mia_auc": f.get("mia_auc"),
            "retain_fd": r["fd"],
            "retain_psnr": r["psnr"],
            "retain_ssim": r["ssim"],
            "fd_to_oracle_rel": dist.get("fd_rel"),
            "psnr_to_oracle_db": dist.get("psnr_abs"),
            "retain_fd_vs_original": _ratio(r["fd"], original["retain"]["fd"]),
            "retain_psnr_vs_original": _ratio(r["psnr"], original["retain"]["psnr"]),
        }

    orig = first["metrics"]["original"]
    rows["original"] = row(orig, first["distance_to_oracle"].get("original", {}), orig)
    for method, rep in reports.items():
        rows[method] = row(rep["metrics"]["unlearned"], rep["distance_to_oracle"].get("unlearned", {}), orig)
        if rep.get("decouple"):
            rows[method]["decouple"] = rep["decouple"]
    rows["oracle"] = row(first["metrics"]["oracle"], first["distance_to_oracle"].get("oracle", {}), orig)
    return rows


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    cols = [
        ("forget_fd", "fgt FD"),
        ("forget_psnr", "fgt PSNR"),
        ("forget_mia_auc", "fgt MIA"),
        ("fd_to_oracle_rel", "FD->oracle"),
        ("psnr_to_oracle_db", "PSNR->oracle"),
        ("retain_fd", "ret FD"),
        ("retain_psnr", "ret PSNR"),
        ("retain_fd_vs_original", "retFD/orig"),
        ("retain_psnr_vs_original", "retPSNR/orig"),
    ]
    print(f"{'model':<18}" + "".join(f"{h:>13}" for _, h in cols))
    for name, r in rows.items():
        cells = "".join(f"{r[k]:>13.4g}" if isinstance(r.get(k), float) else f"{'-':>13}" for k, _ in cols)
        print(f"{name:<18}{cells}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="demo", choices=("demo", "smoke"))
    ap.add_argument("--family", default="mae")
    ap.add_argument("--methods", default="encoder_noise,decouple_retain")
    ap.add_argument("--dataset", default=None)
    ap.add_argument("--forget-classes", default=None)
    ap.add_argument("--workdir", default=str(REPO / "runs" / "methods_vs_oracle"))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "methods_vs_oracle.json"))
    a = ap.parse_args(argv)
    work = Path(a.workdir).resolve()
    common = ["--preset", a.preset, "--family", a.family, "--workdir", str(work)]
    if a.dataset:
        common += ["--dataset", a.dataset]
    if a.forget_classes:
        common += ["--forget-classes", a.forget_classes]
    timing: dict[str, float] = {}
    for step in ("split", "pretrain", "oracle"):
        timing[step] = lethe(step, common)
    reports: dict[str, dict[str, Any]] = {}
    for method in a.methods.split(","):
        timing[f"unlearn.{method}"] = lethe("unlearn", common, "--method", method)
        timing[f"evaluate.{method}"] = lethe("evaluate", common, "--method", method)
        keep = work / f"report-{method}"
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(work / "report", keep)
        reports[method] = json.loads((keep / "report.json").read_text())
    rows = summarise(reports)
    print_table(rows)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    first = next(iter(reports.values()))
    result = {
        "preset": a.preset,
        "family": a.family,
        "dataset": first["dataset"],
        "request": {k: v for k, v in first["request"].items() if k in ("kind", "classes", "forget_count")},
        "rows": rows,
        "timing_s": timing,
        "reports": {m: str(work / f"report-{m}" / "report.json") for m in reports},
    }
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
