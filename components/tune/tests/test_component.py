"""The tune component: a valid, typed KFP v2 component that calls into lethe."""

from components.testing import check_component
from components.tune import tune


def test_interface(tmp_path):
    check_component(
        tune,
        tmp_path,
        inputs={
            "config_json": "String",
            "workdir": "String",
            "parent_run_id": "String",
            "enabled": "Boolean",
            "original": "system.Model@0.0.1",
            "featnet": "system.Model@0.0.1",
            "oracle": "system.Model@0.0.1",
        },
        outputs={"trials": "system.Metrics@0.0.1", "Output": "Float"},
    )


def test_disabled_returns_the_configured_alpha_without_training(tmp_path):
    from kfp import dsl

    from lethe.config import build_config

    cfg = build_config("smoke", overrides={"unlearn": {"alpha": 0.35}, "workdir": str(tmp_path / "w")})
    trials = dsl.Metrics(name="trials", uri=str(tmp_path / "trials"))
    model = dsl.Model(name="m", uri=str(tmp_path / "missing.pt"))
    alpha = tune.python_func(
        config_json=cfg.model_dump_json(),
        workdir=str(tmp_path / "w"),
        parent_run_id="",
        enabled=False,
        original=model,
        featnet=model,
        oracle=model,
        trials=trials,
    )
    assert alpha == 0.35
    assert trials.metadata == {"alpha": 0.35, "trials": 0.0}
    assert not (tmp_path / "w").exists()  # nothing was run
