"""The default promotion gates, none loosened (issue 13): a method that unlearns is promoted, a run
that does not is refused and the alias stays where it was, on requests where the gates can judge.

Each test starts the real CLI (its own local Ray, MLflow on SQLite) on smoke-sized models.
"""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from test_cli import _gates, all_text_under, lethe

from lethe.report import validate_report


def _alias(db: Path) -> str | None:
    with sqlite3.connect(db) as con:
        row = con.execute("select version from registered_model_aliases where alias = 'champion'").fetchone()
    return None if row is None else str(row[0])


# ----------------------------------------------------------------------------------------------
# a class request: forget-vs-oracle judges, and both papers' methods pass it
# ----------------------------------------------------------------------------------------------
def _bars(root: Path, side: int = 8, per_class: int = 600, seed: int = 0) -> Path:
    """An image folder of three classes of side x side grey pictures on noise: a horizontal bar (h),
    a vertical one (v), a diagonal one (d), each at a random place, width and brightness.

    Forgetting v is measurable at smoke size: a model that never saw a vertical bar inpaints a box
    across one with horizontal and diagonal strokes, so the oracle's forget FD is about five times
    the source's, and the source fails the forget gate by a wide margin (the power the gate needs).
    """
    rng = np.random.default_rng(seed)
    for cls in ("h", "v", "d"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.normal(40, 12, (side, side))
            at, width, value = int(rng.integers(0, side - 1)), int(rng.integers(1, 3)), rng.uniform(170, 255)
            if cls == "h":
                img[at : at + width, :] = value
            elif cls == "v":
                img[:, at : at + width] = value
            else:
                shift = int(rng.integers(-side // 2, side // 2))
                for y in range(side):
                    if 0 <= y + shift < side:
                        img[y, max(y + shift - width + 1, 0) : y + shift + 1] = value
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / cls / f"{cls}{i:04d}.png")
    return root


# Smoke-sized MAE trained to reconstruct the bars (500 training and 90 held-out images of each class;
# the forget FD is fitted on the 91 held-out vertical bars that are not validation images, 18 choose
# the checkpoint, judged by their PSNR gap to the oracle: too few for an FD in 32 dimensions).
# Decoupling gets 60 knowledge-retention steps (smoke's 5 leave retain FD at 1.21-1.28x the source's)
# and half the usual lambda: at the full one, its best-scored checkpoint (step 10) costs retain FD
# 1.19-1.2x.
#
# Measured on the 2-core development machine, 2026-12-06, seed 0 (forget FD as a share of the
# oracle's; the band is [0.5, 2]): encoder re-targeting 0.59 (retain FD 1.03x), decoupling 0.55 (1.00x),
# both promoted; the run that does not unlearn 0.19, refused. The margins above the band's lower edge
# are thin: at this size a recipe passes or not by a few hundredths. Before the objective judged
# such small validation sets by PSNR (an FD of 18 images in 32 dimensions, that is of noise, chose the
# checkpoint), seed 2 passed both as well and seed 1 refused both for under-forgetting (that source
# is farther from its oracle; choosing the recipe per request is what method auto is for). Runs are
# bit-for-bit repeatable on one machine.
CLASS_REQUEST = {
    "data": {"max_train": 1500, "max_heldout": 900},
    "model": {
        "mae": {"dim": 64, "depth": 2, "heads": 2, "dec_dim": 16, "dec_depth": 1, "dec_heads": 2, "patch": 2}
    },
    "pretrain": {"epochs": 20, "batch_size": 64, "lr": 3.0e-3, "weight_decay": 0.0, "warmup_frac": 0.05},
    "unlearn": {
        "max_steps": 100,
        "checkpoint_every": 10,
        "eval_every": 5,
        "forget_passes": 3.0,
        "decouple": {"retain_steps": 60, "lambda_factor": 0.5},
    },
    "featnet": {"epochs": 10, "batch_size": 64},
    "eval": {"n_forget": 128, "n_retain": 400},
    "tune": {"val_forget": 64, "val_retain": 200},
}


def _lethe_run(
    tmp_path: Path, name: str, base: dict, request: list[str], method: str, db: Path, **unlearn
) -> tuple[dict, str]:
    """`lethe run` on the smoke preset with `base` (its unlearn section updated by `unlearn`), one
    model cache and one registry for every run of a test; the validated report and the output."""
    cfg = {**base, "unlearn": {**base["unlearn"], **unlearn}}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    r = lethe(
        "run", "--preset", "smoke", *request, "--config", str(tmp_path / f"{name}.yaml"),
        "--method", method, "--workdir", str(tmp_path / name), "--cache-dir", str(tmp_path / "cache"),
        "--tracking-uri", f"sqlite:///{db}", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    validate_report(report)
    return report, r.stdout + r.stderr


def _class_run(tmp_path: Path, name: str, method: str, data: Path, db: Path, **unlearn) -> dict:
    request = ["--dataset", str(data), "--forget-classes", "v"]
    return _lethe_run(tmp_path, name, CLASS_REQUEST, request, method, db, **unlearn)[0]


@pytest.mark.slow
def test_default_gates_promote_both_papers_methods_and_refuse_a_run_that_changed_nothing(
    tmp_path: Path,
) -> None:
    data = _bars(tmp_path / "bars")
    db = tmp_path / "mlflow" / "mlflow.db"  # one registry for the three runs; artifacts beside it
    db.parent.mkdir()
    for version, method in enumerate(("encoder_noise", "decouple_retain"), start=1):
        rep = _class_run(tmp_path, method, method, data, db)
        gates = _gates(rep)
        assert gates["forget_vs_oracle"]["verdict"] == "passed", gates["forget_vs_oracle"]
        for name in ("retain_fd", "retain_psnr", "retain_fd.outpaint", "retain_psnr.outpaint"):
            assert gates[name]["verdict"] == "passed", gates[name]
        # Nothing failed. What cannot judge says so: the border leaves a bar's middle visible (the
        # source already inpaints it as the oracle does), and a class's held-out pictures are as
        # familiar to the source as its training ones (no membership signal to test).
        assert not [g for g in gates.values() if g["verdict"] == "failed"], gates
        assert {g["verdict"] for g in gates.values()} <= {"passed", "inconclusive"}
        dist = rep["distance_to_oracle"]
        assert dist["unlearned"]["fd_rel"] < dist["original"]["fd_rel"]
        assert rep["unlearn"]["checkpoint"]["kept"] == "best"
        assert rep["promotion"]["promoted"] is True
        assert rep["mlflow"]["model_version"] == str(version) and _alias(db) == str(version)

    # -- the same request, unlearned with a learning rate that moves nothing: the source as it was --
    rep = _class_run(tmp_path, "noop", "finetune_retain", data, db, lr=1e-12)
    gate = _gates(rep)["forget_vs_oracle"]
    assert gate["verdict"] == "failed" and "under-forgetting" in gate["reason"], gate
    dist = rep["distance_to_oracle"]
    assert dist["unlearned"]["fd_rel"] == pytest.approx(dist["original"]["fd_rel"], rel=1e-3)
    assert rep["promotion"]["promoted"] is False
    assert rep["mlflow"]["model_version"] == "3" and _alias(db) == "2"  # registered, alias unmoved
    cert = json.loads((tmp_path / "noop" / "certificate" / "certificate.json").read_text())
    assert cert["result_model"]["promoted"] is False


# ----------------------------------------------------------------------------------------------
# the default gates, on a request the membership test can judge
# ----------------------------------------------------------------------------------------------
# The default promotion gates on a request the membership test can judge (none of them loosened).
#
# A source model that memorised the requested images: 40 digits ids trained 500 epochs among 100
# images (smoke-sized MAE, 8x8 images in 2x2 patches), so the calibrated attack tells members from
# unseen images on the source (AUC 0.69-0.80, 95% interval above 0.5). The same source and oracle serve
# both runs (one cache): decoupling lowers the leak measurably; a run that does not unlearn (a learning
# rate too small to move a weight) fails the membership gate, is registered but not promoted, and the
# alias stays where the first run left it.
#
# Measured while choosing the setting (docs/evidence.md): decoupling was promoted under the default
# gates in one of three runs (the others: retain FD 1.46x; under-forgetting by 2.1 dB), and encoder
# re-targeting at six recipes either kept membership (AUC 0.62-0.69) or cost retain FD 1.18-1.35x:
# refused every time. Getting either promoted reliably is choosing its recipe per request.
MEMORISING = {
    "data": {"max_train": 60, "max_heldout": 400},
    "model": {
        "mae": {"dim": 64, "depth": 2, "heads": 2, "dec_dim": 16, "dec_depth": 1, "dec_heads": 2, "patch": 2}
    },
    "pretrain": {"epochs": 500, "batch_size": 20, "lr": 3.0e-3, "weight_decay": 0.0, "warmup_frac": 0.02},
    "unlearn": {"forget_passes": 40, "alpha": 1.0, "lr": 3.0e-3, "max_steps": 60, "checkpoint_every": 30},
    "eval": {"n_mia": 400, "attack_masks": 8},
    # a feature net that learnt the digits (smoke's one epoch on 100 images stays at chance), so the
    # retain FD gate measures the model, not the noise of random features
    "featnet": {"epochs": 40, "batch_size": 32},
}


def _run(tmp_path: Path, name: str, method: str, ids: Path, db: Path, **unlearn) -> dict:
    request = ["--dataset", "digits", "--forget-ids", str(ids)]
    report, output = _lethe_run(tmp_path, name, MEMORISING, request, method, db, **unlearn)
    written = all_text_under(tmp_path / name) + all_text_under(db.parent) + output.encode()
    assert not [i for i in ids.read_text().split() if i.encode() in written], "forget ids leaked"
    return report


@pytest.mark.slow
def test_default_gates_refuse_an_unlearning_that_changed_nothing_on_a_request_with_power(
    tmp_path: Path,
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join(f"digits-{i:04d}" for i in random.Random(3).sample(range(1797), 40)) + "\n")
    db = tmp_path / "mlflow" / "mlflow.db"  # one registry for both runs; artifacts beside it
    db.parent.mkdir()

    # -- decoupling: the attack has power on the source, and decoupling measurably lowers the leak ---
    rep = _run(tmp_path, "decouple", "decouple_retain", ids, db)
    mem = rep["evidence"]["membership"]
    assert mem["power"] is True and mem["source_auc_ci95"][0] > 0.5, mem  # the test can judge
    assert mem["unlearned_auc"] < mem["source_auc"] - 0.05, mem
    forget = rep["metrics"]["original"]["forget"]
    assert "mia_tpr_at_1pct_fpr" in forget and len(forget["mia_auc_ci95"]) == 2
    # Whether it is also promoted depends on the run (three runs: promoted once; retain FD 1.46x, or
    # under-forgetting by 2.1 dB, the others): the gates decide, and the decision follows them.
    assert rep["promotion"]["promoted"] == (rep["promotion"]["gates"]["verdict"] != "failed")
    alias = _alias(db)
    assert alias == ("1" if rep["promotion"]["promoted"] else None)

    # -- the same request, unlearned with a learning rate that moves nothing: the source as it was --
    rep = _run(tmp_path, "noop", "finetune_retain", ids, db, lr=1e-12)
    mem = rep["evidence"]["membership"]
    assert mem["power"] is True and mem["verdict"] == "failed", mem
    assert "still leaks membership" in mem["reason"]
    assert mem["unlearned_auc"] > mem["band"][1]
    gates = _gates(rep)
    assert gates["mia"]["verdict"] == "failed"
    assert rep["promotion"]["promoted"] is False
    assert rep["mlflow"]["model_version"] == "2" and _alias(db) == alias  # registered, alias unmoved
    cert = json.loads((tmp_path / "noop" / "certificate" / "certificate.json").read_text())
    assert cert["result_model"]["promoted"] is False
