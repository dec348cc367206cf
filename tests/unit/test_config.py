"""The run configuration is validated at the edge with one clear line."""

from __future__ import annotations

import pytest

from lethe.catalogue import I2I_FAMILIES
from lethe.config import build_config
from lethe.errors import ConfigError


def test_defaults_and_presets_validate() -> None:
    demo, smoke = build_config("demo"), build_config("smoke")
    assert demo.family == "mae" and demo.method == "auto" and demo.request.classes == ["Trouser"]
    assert smoke.pretrain.epochs == 1 and smoke.data.max_train is not None
    assert demo.tracking_uri.startswith("sqlite:///") and demo.tracking_uri.endswith("mlflow.db")


def test_yaml_then_overrides(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("unlearn:\n  alpha: 0.7\nmethod: max_loss\n")
    cfg = build_config("smoke", f, {"unlearn": {"lr": 0.01}})
    assert (cfg.unlearn.alpha, cfg.unlearn.lr, cfg.method) == (0.7, 0.01, "max_loss")
    assert cfg.model.mae.dim == 32  # preset values survive the merge


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"unlearn": {"alpha": -1}}, "unlearn.alpha"),
        ({"method": "forget_everything"}, "method"),
        ({"family": "gpt"}, "family"),
        ({"unlearn": {"nosie": "gaussian"}}, "unlearn.nosie"),
        ({"model": {"dim": 30, "heads": 4}}, "model"),
        ({"request": {"kind": "ids"}}, "request"),
    ],
)
def test_bad_fields_name_the_field(over, field) -> None:
    with pytest.raises(ConfigError, match=f"invalid configuration field {field}"):
        build_config("smoke", overrides=over)


def test_bad_yaml_file(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        build_config(config_file=f)
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(config_file=tmp_path / "missing.yaml")


@pytest.mark.parametrize("family", I2I_FAMILIES)
@pytest.mark.parametrize("preset", ["smoke", "demo"])
def test_every_family_has_valid_presets(family: str, preset: str) -> None:
    from lethe.models.families import I2IFamily, get_family

    cfg = build_config(preset, overrides={"family": family})
    assert cfg.family == family
    fam = get_family(family)
    assert isinstance(fam, I2IFamily)
    arch = fam.build_arch(cfg.model.section(family), 28, 28, 1)
    assert fam.cell(arch) == 4  # every family evaluates on the same 4x4-cell masks of 28x28 images
    assert len(fam.phases(cfg.model.section(family), cfg.pretrain.epochs)) == cfg.pretrain.epochs


def test_family_preset_sits_under_the_yaml_file_and_flags(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("family: diffusion\nmodel:\n  diffusion:\n    sample_steps: 7\n")
    cfg = build_config("smoke", f)
    assert cfg.model.diffusion.sample_steps == 7 and cfg.model.diffusion.ch == 8  # file over smoke preset
    assert cfg.unlearn.alpha == 0.1  # the diffusion preset (authors' alpha) applied
    assert build_config("smoke", f, {"unlearn": {"alpha": 0.3}}).unlearn.alpha == 0.3


def test_legacy_flat_mae_model_keys_still_work() -> None:
    cfg = build_config("smoke", overrides={"model": {"dim": 64, "heads": 4}})
    assert cfg.model.mae.dim == 64 and cfg.model.mae.depth == 1


def test_cache_digest_covers_only_the_active_family() -> None:
    a = build_config("smoke", overrides={"family": "vqgan"})
    b = build_config("smoke", overrides={"family": "vqgan", "model": {"diffusion": {"ch": 32}}})
    c = build_config("smoke", overrides={"family": "vqgan", "model": {"vqgan": {"ch": 32}}})
    assert a.digest("family", "model") == b.digest("family", "model") != c.digest("family", "model")


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"family": "vqgan", "pretrain": {"epochs": 1}}, r"\(root\): .*pretrain.epochs >= 2"),
        ({"model": {"vqgan": {"dim": 30, "heads": 4}}}, "model.vqgan"),
        ({"model": {"diffusion": {"sample_steps": 2000}}}, "model.diffusion"),
        ({"model": {"diffusion": {"schedule": "quad"}}}, "model.diffusion.schedule"),
        ({"family": "dalle"}, "family"),
        # its default method is latent_feature; a class request does not fit a generator
        ({"family": "gan"}, r"\(root\): .*request.kind 'classes' does not fit family 'gan'"),
        ({"model": {"gan": {"loss": "wasserstein"}}}, "model.gan.loss"),
    ],
)
def test_bad_family_fields_name_the_field(over, field) -> None:
    with pytest.raises(ConfigError, match=f"invalid configuration field ({field})"):
        build_config("smoke", overrides=over)


# -- credentials never travel in a URI ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("over", "field", "hint"),
    [
        ({"tracking": {"tracking_uri": "http://u:p4ssw0rd@host:5000"}}, "tracking.tracking_uri", "MLFLOW_TRACKING_PASSWORD"),
        ({"tracking": {"tracking_uri": "https://t0ken-p4ssw0rd@host"}}, "tracking.tracking_uri", "MLFLOW_TRACKING_USERNAME"),
        ({"tracking": {"tracking_uri": "postgresql://u:p4ssw0rd@db/mlflow"}}, "tracking.tracking_uri", "PGPASSWORD"),
        ({"storage": {"uri": "s3://AKIA:p4ssw0rd@bucket/run"}}, "storage.uri", "AWS_"),
        ({"resources": {"ray_address": "http://u:p4ssw0rd@head:8265"}}, "resources.ray_address", "environment"),
        ({"data": {"dataset": "s3://k:p4ssw0rd@bucket/data/"}}, "data.dataset", "AWS_"),
        ({"request": {"kind": "ids", "ids_file": "s3://k:p4ssw0rd@b/ids.txt"}}, "request.ids_file", "AWS_"),
    ],
)  # fmt: skip
def test_uri_with_credentials_is_refused_in_one_line_without_them(over, field, hint) -> None:
    with pytest.raises(ConfigError) as e:
        build_config("smoke", overrides=over)
    line = e.value.line()
    assert line.startswith(f"invalid configuration field {field}: ") and "must not embed credentials" in line
    assert hint in line and "\n" not in line
    assert "p4ssw0rd" not in line and "p4ssw0rd" not in str(e.value)


def test_the_cli_example_is_refused(tmp_path) -> None:
    from lethe.cli import config_from_args, parser

    args = parser().parse_args(["run", "--preset", "smoke", "--tracking-uri", "http://u:p@host:5000"])
    with pytest.raises(ConfigError) as e:
        config_from_args(args)
    assert "must not embed credentials" in e.value.line() and "u:p@" not in e.value.line()
    assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in e.value.line()


@pytest.mark.parametrize(
    "uri",
    [
        "http://mlflow.example:5000",
        "postgresql://lethe@db/mlflow",
        "sqlite:////tmp/a@b/mlflow.db",
        "sqlite:////m.db",
    ],
)
def test_uris_without_a_secret_are_accepted(uri) -> None:
    assert build_config("smoke", overrides={"tracking": {"tracking_uri": uri}}).tracking_uri == uri


def test_a_later_assignment_is_refused_too() -> None:
    from pydantic import ValidationError

    cfg = build_config("smoke")
    with pytest.raises(ValidationError):
        cfg.tracking.tracking_uri = "http://u:p@host:5000"
    assert cfg.tracking.tracking_uri is None


def test_error_lines_and_reports_drop_userinfo() -> None:
    from lethe.errors import LetheError, redact_userinfo
    from lethe.pipeline.provenance import redact

    e = LetheError(
        "cannot reach", where="http://u:p4ss@host:5000/api", seen="'s3://k:s@ss@bucket/x' and ftp://a@b"
    )
    assert e.line() == "cannot reach; at http://host:5000/api; got 's3://bucket/x' and ftp://b"
    assert "p4ss" not in str(e)
    assert redact("http://u:p@host:5000") == "http://host:5000" == redact_userinfo("http://host:5000")
    assert redact("sqlite:////tmp/a@b/mlflow.db") == "sqlite:////tmp/a@b/mlflow.db"
