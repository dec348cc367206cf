"""A third-party family, defined only in tests/plugins and named by its dotted path, through the
whole `lethe run` as a user runs it: pretrained, oracle, unlearned, evaluated, registered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from lethe_tiny_family import PLUGIN_FAMILY
from test_cli import lethe

from lethe.report import validate_report


@pytest.mark.slow
def test_a_plugin_family_is_unlearned_end_to_end(tmp_path: Path) -> None:
    from lethe.tracking.model_format import load_lethe_model

    work = tmp_path / "work"
    r = lethe(
        "run", "--preset", "smoke", "--family", PLUGIN_FAMILY, "--dataset", "digits",
        "--forget-classes", "3", "--workdir", str(work), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    validate_report(report)
    assert report["family"] == PLUGIN_FAMILY and report["method"] == "encoder_noise"
    assert set(report["metrics_by_mask"]["outpaint"]) == {"original", "unlearned", "oracle"}
    models = {
        n: torch.load(work / "models" / f"{n}.pt", weights_only=True) for n in ("original", "unlearned")
    }
    assert {m["kind"] for m in models.values()} == {PLUGIN_FAMILY}
    # encoder re-targeting moved the plug-in's encoder and left its decoder bit-identical
    before, after = models["original"]["state_dict"], models["unlearned"]["state_dict"]
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("enc."))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("dec."))
    name, uri = report["mlflow"]["model_name"], report["mlflow"]["tracking_uri"]
    assert load_lethe_model(f"models:/{name}/1", uri).family == PLUGIN_FAMILY
