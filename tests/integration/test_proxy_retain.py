"""`lethe run --proxy-retain`: another data set's images stand in for the retain side of the
unlearning loss (a team that no longer keeps the training data); the run says so everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import lethe

from lethe.report import validate_report


def _folder(root: Path, side: int, n: int) -> Path:
    """An image folder of `n` grey side x side pictures (bars at random places), two classes."""
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.zeros((side, side), np.uint8)
        r = int(rng.integers(0, side - 2))
        img[r : r + 2, :] = 255 if i % 2 else 0
        img[:, r : r + 2] = 0 if i % 2 else 255
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / f"c{i % 2}" / f"{i}.png")
    return root


@pytest.mark.slow
def test_a_proxy_retain_set_drives_the_unlearning_and_is_reported(tmp_path: Path) -> None:
    proxy = _folder(tmp_path / "bars", 8, 150)
    work = tmp_path / "work"
    r = lethe(
        "run", "--preset", "smoke", "--dataset", "digits", "--forget-classes", "3",
        "--proxy-retain", str(proxy), "--workdir", str(work), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    validate_report(report)
    # the smoke run's 6 steps x 32 retain rows want 192: the proxy's 150 images are all it gets
    assert report["unlearn"]["proxy_retain"] == {"dataset": "bars", "images": 150}
    assert "proxy retain: the unlearning loss's retain side was 150 images of bars" in r.stderr
    cert = json.loads((work / "certificate" / "certificate.json").read_text())
    assert cert["method"]["proxy_retain"] == {"dataset": "bars", "images": 150}
    assert "retain side was 150 images of bars" in (work / "report" / "report.html").read_text()
    assert (
        "150 images of bars stood in for the retain data"
        in (work / "certificate" / "certificate.html").read_text()
    )
    # the oracle was trained on the real retain shard (report and certificate say so), and the
    # unlearning ran
    assert report["oracle"]["audited"] and report["mlflow"]["model_version"] == "1"
    assert report["oracle"]["trained_on"] == cert["oracle"]["trained_on"]
    assert (
        f"without the forget set ({report['request']['retain_count']} images)" in cert["oracle"]["trained_on"]
    )
    assert "the oracle trained on the training data" in r.stderr
    before = torch.load(work / "models" / "original.pt", weights_only=True)["state_dict"]
    after = torch.load(work / "models" / "unlearned.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(before[k], after[k]) for k in before)

    # -- the training data is gone: no oracle can be trained, and nothing is called passed for it --
    cached = sorted((tmp_path / "cache" / "models").glob("mae-*.pt"))  # the original and the oracle
    work2 = tmp_path / "work2"
    r = lethe(
        "run", "--preset", "smoke", "--dataset", "digits", "--forget-classes", "3",
        "--proxy-retain", str(proxy), "--oracle", "none", "--workdir", str(work2), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    validate_report(report)
    assert sorted((tmp_path / "cache" / "models").glob("mae-*.pt")) == cached  # no oracle trained
    oracle = report["oracle"]
    assert oracle["policy"] == "none" and oracle["audited"] is False and "trained_on" not in oracle
    assert "no oracle could be trained" in oracle["reason"] and "oracle" not in report["metrics"]
    verdicts = {g["name"]: g["verdict"] for g in report["promotion"]["gates"]["results"]}
    for name in ("forget_vs_oracle", "forget_vs_oracle.outpaint", "mia"):
        assert verdicts[name] == "not evaluated", verdicts
    assert verdicts["retain_fd"] in ("passed", "failed") and verdicts["retain_psnr"] in ("passed", "failed")
    assert report["evidence"]["membership"]["verdict"] == "not evaluated"
    assert "no oracle, and every metric uses the data set's held-out images" in r.stderr
    assert "oracle: none in this run (cache.oracle = none: the training data is not kept" in r.stderr
    assert "membership not evaluated: no oracle in this run (cache.oracle = none" in r.stderr
    cert = json.loads((work2 / "certificate" / "certificate.json").read_text())
    assert cert["oracle"]["policy"] == "none" and cert["oracle"]["audited"] is False
    assert cert["oracle"]["retrained_in_this_run"] is None
    html = (work2 / "certificate" / "certificate.html").read_text()
    assert "none: cache.oracle = none: the training data is not kept" in html and "(policy none)" in html


def test_a_proxy_of_another_shape_is_refused_before_any_work(tmp_path: Path) -> None:
    proxy = _folder(tmp_path / "big", 28, 4)
    work = tmp_path / "work"
    r = lethe(
        "run", "--preset", "smoke", "--dataset", "digits", "--forget-classes", "3",
        "--proxy-retain", str(proxy), "--workdir", str(work), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "proxy retain images differ in shape from the data set's" in r.stderr
    assert "expected 8x8x1 images; got 28x28x1" in r.stderr
    assert not (work / "shards" / "forget").exists()
