"""Pieces of the KFP / registry work that need no server: cron, config fields, certificate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lethe.certificate import build_certificate, render_html, validate_certificate, write_certificate
from lethe.config import build_config, config_from_json, parse_source_model
from lethe.errors import ConfigError
from lethe.orchestration.cron import CronError, to_kfp_cron


# -- cron ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expr", "kfp"),
    [
        ("0 0 2 * * *", "0 0 2 * * *"),
        ("0 2 * * *", "0 0 2 * * *"),  # five fields: seconds = 0
        ("0 30 1 ? * MON-FRI", "0 30 1 ? * MON-FRI"),
        ("*/15 0-5,22 * 1 jan,jul *", "*/15 0-5,22 * 1 jan,jul *"),
        ("  0  0   3 * *  ", "0 0 0 3 * *"),
        ("@daily", "@daily"),
        ("@Hourly", "@hourly"),
    ],
)
def test_cron_accepted(expr: str, kfp: str) -> None:
    assert to_kfp_cron(expr) == kfp


@pytest.mark.parametrize(
    ("expr", "needle"),
    [
        ("", "empty cron"),
        ("0 0 2 * *  * *", "7 fields"),
        ("0 0 25 * * *", "hour value 25 is out of range"),
        ("0 61 * * * *", "minute value 61"),
        ("0 0 2 ? * *", None),
        ("0 ? 2 * * *", "only allowed in the day fields"),
        ("0 0 2 * FOO *", "unknown value 'FOO'"),
        ("0 0 5-2 * * *", "runs backwards"),
        ("0 */0 * * * *", "step must be positive"),
        ("@every-day", "unknown cron descriptor"),
        ("0 0 2 * * 7", "day of week value 7"),
    ],
)
def test_cron_rejected(expr: str, needle: str | None) -> None:
    if needle is None:
        to_kfp_cron(expr)
        return
    with pytest.raises(CronError) as e:
        to_kfp_cron(expr)
    assert needle in e.value.line()
    assert "\n" not in e.value.line()


# -- config -------------------------------------------------------------------------------------------
def test_source_model_and_alias_fields() -> None:
    assert parse_source_model("models:/lethe-mae/3") == ("lethe-mae", "3", None)
    assert parse_source_model("models:/lethe-mae@champion") == ("lethe-mae", None, "champion")
    cfg = build_config("smoke", overrides={"source_model": "models:/faces@champion"})
    assert cfg.model_name == "faces"  # the new version joins the source model's registered model
    assert build_config("smoke").model_name == "lethe-mae"
    assert config_from_json(cfg.model_dump_json()) == cfg
    for bad, needle in [
        (
            {"source_model": "runs:/abc/model"},
            "source_model must be models:/NAME/VERSION, models:/NAME@ALIAS",
        ),
        ({"source_model": "models:/x/latest"}, "source_model"),
        ({"tracking": {"alias": "latest"}}, "tracking.alias"),
        ({"tracking": {"alias": "v3"}}, "tracking.alias"),
        ({"tracking": {"alias": "has space"}}, "tracking.alias"),
        ({"source_model": "models:/a/1", "tracking": {"model_name": "b"}}, "differs from the source model"),
    ]:
        with pytest.raises(ConfigError) as e:
            build_config("smoke", overrides=bad)
        assert needle in e.value.line(), e.value.line()


def test_a_save_pretrained_folder_is_a_source_of_the_families_with_a_folder_format(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{}")
    cfg = build_config("smoke", overrides={"family": "hf-vitmae", "source_model": str(tmp_path)})
    assert cfg.source_model == str(tmp_path) and cfg.model_name == "lethe-hf-vitmae"
    assert build_config("smoke", overrides={"family": "hf-vitmae", "source_model": "s3://b/m"}).source_model
    for bad, needle in [
        (
            {"family": "mae", "source_model": str(tmp_path)},
            "needs family hf-vitmae or diffusers-inpaint, got 'mae'",
        ),
        ({"family": "hf-vitmae", "source_model": str(tmp_path / "x")}, "is not a save_pretrained folder"),
        ({"family": "hf-vitmae", "source_model": "gs://b/m"}, "s3://bucket/prefix, got 'gs://b/m'"),
    ]:
        with pytest.raises(ConfigError) as e:
            build_config("smoke", overrides=bad)
        assert needle in e.value.line(), e.value.line()


# -- certificate ------------------------------------------------------------------------------------
def _report() -> dict:
    m = {
        model: {
            "forget": {"fd": f, "psnr": 15.0, "ssim": 0.5, "embed_cos": 0.9, "mia_auc": 0.52},
            "retain": {"fd": 1.0, "psnr": 20.0, "ssim": 0.6, "embed_cos": 0.95},
        }
        for model, f in (("original", 1.0), ("unlearned", 3.0), ("oracle", 3.5))
    }
    return {
        "run_id": "r1",
        "dataset": "fashion-mnist",
        "family": "mae",
        "method": "encoder_noise",
        "request": {"kind": "classes", "forget_count": 6, "retain_count": 54, "forget_digest": "sha256:ab"},
        "metrics": m,
        "oracle_gaps": {"unlearned": {"forget": {"fd": {"diff": -0.5, "ratio": 0.857}}}},
        "evaluation": {"mia": "loss-based"},
        "code_version": "0.1.0+abc",
    }


def test_certificate_proves_cleanup_with_files_really_absent(tmp_path: Path) -> None:
    gone = tmp_path / "shards" / "forget"
    still_there = tmp_path / "shards" / "heldout_forget"
    still_there.mkdir(parents=True)
    state = {
        "run_id": "r1",
        "started_at": "2026-01-01T00:00:00+00:00",
        "cleanup": {
            "deleted": [
                {"shard": "forget", "uri": str(gone), "absent_after": True},
                # recorded as deleted, but someone restored it since: the certificate must notice
                {"shard": "heldout_forget", "uri": str(still_there), "absent_after": True},
            ]
        },
        "promote": {"model_name": "lethe-mae", "model_version": "2", "alias": "champion", "promoted": True},
    }
    cert = build_certificate(
        _report(), state, hyperparameters={"alpha": 0.2}, tracking={"tracking_uri": "x"}, orchestrator="kfp"
    )
    by_shard = {d["shard"]: d for d in cert["cleanup"]["deleted"]}
    assert by_shard["forget"]["absent_at_issue"] is True
    assert by_shard["heldout_forget"]["absent_at_issue"] is False
    assert cert["cleanup"]["all_absent"] is False
    assert cert["result_model"]["uri"] == "models:/lethe-mae/2"
    assert cert["vs_source"]["forget"]["fd_ratio"] == pytest.approx(3.0)

    still_there.rmdir()
    cert = build_certificate(
        _report(), state, hyperparameters={"alpha": 0.2}, tracking={"tracking_uri": "x"}, orchestrator="kfp"
    )
    assert cert["cleanup"]["all_absent"] is True
    j, h = write_certificate(cert, tmp_path / "certificate")
    assert json.loads(j.read_text())["kind"] == "lethe.unlearning-certificate"
    html = h.read_text()
    assert "Cleanup proof" in html and str(gone) in html


def test_certificate_states_the_keyed_digest_from_the_report(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from lethe.data.shards import Manifest, ShardInfo
    from lethe.digests import key_id
    from lethe.pipeline.report import request_section
    from lethe.report.schema import validate_report

    kid = key_id(b"k" * 32)
    shards = {n: ShardInfo(n, str(tmp_path / n), 3, n[0] * 64) for n in ("forget", "retain")}
    man = Manifest("d", "/d", ["a"], 4, 4, 1, {"kind": "ids"}, shards, "q" * 64, "t" * 64, "hmac-sha256", kid)
    ctx = SimpleNamespace(cfg=SimpleNamespace(request=SimpleNamespace(kind="ids", refs=[])))
    rep = _report()
    rep["request"] = request_section(ctx, man)
    assert rep["request"]["digest_key_id"] == kid and rep["request"]["digest_algorithm"] == "hmac-sha256"
    validate_report(
        {
            **rep,
            "timing_s": {},
            "mlflow": {"tracking_uri": "x", "run_id": "r", "model_name": "m", "model_version": None},
        }
    )
    cert = build_certificate(rep, {}, hyperparameters={}, tracking={}, orchestrator="lethe run")
    assert cert["request"]["digest"] == {"algorithm": "hmac-sha256", "key_id": kid}
    assert cert["request"]["forget_digest"] == "f" * 64
    html = render_html(cert)
    assert f"HMAC-SHA256 under the key with id {kid}" in html and "SHA-256 digest" not in html
    # A report from before keyed digests: the certificate says its digests are unkeyed.
    cert = build_certificate(_report(), {}, hyperparameters={}, tracking={}, orchestrator="lethe run")
    assert cert["request"]["digest"] == {"algorithm": "sha256", "key_id": None}
    assert "unkeyed SHA-256" in render_html(cert)


def test_certificate_refuses_ids_and_escapes_html() -> None:
    rep = _report()
    rep["request"]["classes"] = ["<script>alert(1)</script>"]
    cert = build_certificate(rep, {}, hyperparameters={}, tracking={}, orchestrator="lethe run")
    assert "<script>" not in render_html(cert)
    cert["request"]["ids"] = ["person-1"]
    with pytest.raises(ValueError, match="forbidden key"):
        validate_certificate(cert)


def test_certificate_says_which_checkpoint_became_the_result() -> None:
    rep = _report()
    rep["unlearn"] = {
        "checkpoint": {
            "kept": "best",
            "step": 10,
            "last_step": 47,
            "objective": 0.33,
            "last_objective": 0.41,
            "source_objective": 1.07,
            "history": [{"step": 10, "objective": 0.33}],
        }  # fmt: skip
    }
    cert = build_certificate(rep, {}, hyperparameters={}, tracking={}, orchestrator="lethe run")
    assert cert["method"]["checkpoint"]["step"] == 10 and "history" not in cert["method"]["checkpoint"]
    assert "step 10 of 47: the lowest validation objective (0.33; last step 0.41)" in render_html(cert)
    rep["unlearn"] = {"checkpoint": {"kept": "last", "reason": "unlearn.keep_best is off"}}
    cert = build_certificate(rep, {}, hyperparameters={}, tracking={}, orchestrator="lethe run")
    assert "the last step (unlearn.keep_best is off)" in render_html(cert)
    assert (
        build_certificate(_report(), {}, hyperparameters={}, tracking={}, orchestrator="lethe run")["method"][
            "checkpoint"
        ]
        is None
    )
