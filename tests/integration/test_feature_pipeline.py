"""Feature unlearning of a generator through the whole pipeline (DESIGN.md 2.3), as a user runs it:
`lethe run --family vae|gan --method latent_feature --forget-feature Trouser` (Fashion-MNIST, class
as feature), down to loading the registered model back from MLflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cli import assert_registered_source_unlearns  # the same check for every family

from lethe.report import FEATURE_METRICS, MODELS, validate_report
from lethe.tracking.model_format import load_lethe_model

FASHION = Path(os.environ.get("LETHE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
# gan's own run is `extended`: the feature pipeline runs end to end with vae; gan's feature units
# are in test_feature_pipeline_units.
@pytest.mark.parametrize("family", ["vae", pytest.param("gan", marks=pytest.mark.extended)])
def test_feature_unlearning_smoke_end_to_end(tmp_path: Path, family: str) -> None:
    work = tmp_path / "work"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    args = [
        "run",
        "--preset",
        "smoke",
        "--family",
        family,
        "--method",
        "latent_feature",
        "--forget-feature",
        "Trouser",
    ]
    r = subprocess.run(
        [sys.executable, "-m", "lethe.cli", *args, "--workdir", str(work)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report_path = Path(r.stdout.strip().splitlines()[-1])
    report = json.loads(report_path.read_text())
    validate_report(report)
    assert report["family"] == family and report["method"] == "latent_feature"
    assert report["request"]["kind"] == "feature" and report["request"]["feature"] == "Trouser"
    for model in MODELS:
        assert set(report["metrics"][model]["samples"]) >= set(FEATURE_METRICS)
    feat = report["feature"]
    assert feat["classes"] == ["Trouser"] and feat["direction"]["n_pos"] > 0
    for step in ("split", "pretrain", "oracle", "unlearn", "evaluate", "promote", "cleanup"):
        assert report["timing_s"][step] > 0
    # the same latents for the three models, and the attack's best samples, embedded in the report
    assert (work / "report" / "grid_samples.png").is_file() and (
        work / "report" / "grid_attack.png"
    ).is_file()
    assert (work / "report" / "report.html").read_text().count("data:image/png;base64") == 2
    assert report["mlflow"]["model_version"] == "1"
    # the registered version loads and generates (the GAN's spectral norm must survive registration)
    generator = load_lethe_model(
        f"models:/{report['mlflow']['model_name']}/1", report["mlflow"]["tracking_uri"]
    )
    with torch.no_grad():
        assert generator(torch.randn(2, generator.latent_dim)).shape == (2, 1, 28, 28)
    assert not (work / "shards" / "forget").exists()
    assert_registered_source_unlearns(tmp_path, report, "--forget-feature", "Trouser")
