"""The run configuration is validated at the edge with one clear line."""

from __future__ import annotations

import pytest

from lethe.config import build_config
from lethe.errors import ConfigError


def test_defaults_and_presets_validate() -> None:
    demo, smoke = build_config("demo"), build_config("smoke")
    assert demo.family == "mae" and demo.method == "encoder_noise" and demo.request.classes == ["Trouser"]
    assert smoke.pretrain.epochs == 1 and smoke.data.max_train is not None
    assert demo.tracking_uri.startswith("sqlite:///") and demo.tracking_uri.endswith("mlflow.db")


def test_yaml_then_overrides(tmp_path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("unlearn:\n  alpha: 0.7\nmethod: max_loss\n")
    cfg = build_config("smoke", f, {"unlearn": {"lr": 0.01}})
    assert (cfg.unlearn.alpha, cfg.unlearn.lr, cfg.method) == (0.7, 0.01, "max_loss")
    assert cfg.model.dim == 32  # preset values survive the merge


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
