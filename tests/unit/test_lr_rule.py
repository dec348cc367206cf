"""lethe.pipeline.lr_rule: the unlearning lr relative to how far pretraining moved the original."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from lethe.config import build_config
from lethe.errors import ConfigError
from lethe.pipeline.lr_rule import lr_rule, lr_scaled


def _man(retain: int, forget: int) -> SimpleNamespace:
    return SimpleNamespace(
        shards={"retain": SimpleNamespace(count=retain), "forget": SimpleNamespace(count=forget)}
    )


def test_the_demo_keeps_its_measured_lr() -> None:
    """Fashion-MNIST, forget Trouser: 705 pretraining steps, 47 unlearning steps at 1e-3."""
    rule = lr_rule(build_config("demo"), _man(54000, 6000))
    assert rule["rule"] == "relative" and rule["lr"] == 1e-3 and rule["scale"] == 1.0
    assert rule["pretrain_steps"] == 705 and rule["unlearn_steps"] == 47
    assert "(the configured lr)" in rule["why"]
    assert lr_scaled(build_config("demo"), _man(54000, 6000)) == build_config("demo")


def test_a_small_data_set_gets_a_proportionally_smaller_lr() -> None:
    """MNIST-5k's shape (3767 retained, 400 forgotten): 51 pretraining steps, 30 unlearning steps
    (unlearn.min_steps). At 1e-3 they would add 40% of the pretraining's summed lr."""
    cfg = build_config("demo")
    rule = lr_rule(cfg, _man(3767, 400))
    assert rule["pretrain_steps"] == 51 and rule["unlearn_steps"] == 30
    # summed multipliers: pretraining 51 steps of warm-up + cosine, unlearning 30 steps: about half each
    expected = 0.05 * 1.5e-3 * rule["pretrain_lr_sum"] / 1.5e-3 / 16.0
    assert rule["lr"] == pytest.approx(expected, rel=0.05) and 1e-4 < rule["lr"] < 1.5e-4
    assert rule["scale"] == pytest.approx(rule["lr"] / 1e-3)
    assert "over 30 unlearning steps" in rule["why"] and "x the configured 0.001" in rule["why"]
    # twice the data, twice the pretraining, about twice the lr (until the configured lr caps it)
    assert lr_rule(cfg, _man(2 * 3767 + 400, 400))["lr"] == pytest.approx(2 * rule["lr"], rel=0.1)
    scaled = lr_scaled(cfg, _man(3767, 400))
    assert scaled.unlearn.lr == pytest.approx(rule["lr"])
    lo, hi = cfg.tune.lr_range
    assert scaled.tune.lr_range == pytest.approx((lo * rule["scale"], hi * rule["scale"]))
    assert cfg.unlearn.lr == 1e-3  # the run's own config is untouched
    ascent = build_config("demo", overrides={"unlearn": {"decouple": {"ascent_lr": 2e-3}}})
    assert lr_scaled(ascent, _man(3767, 400)).unlearn.decouple.ascent_lr == pytest.approx(
        2e-3 * rule["scale"]
    )


def test_where_the_recipe_is_unknown_or_the_rule_is_off_the_configured_lr_stands() -> None:
    small = _man(3767, 400)
    for cfg, why in (
        (build_config("demo", overrides={"unlearn": {"lr_rule": "fixed"}}), "lr_rule = fixed"),
        (build_config("smoke"), "lr_rule = fixed"),  # a smoke original trains a dozen steps
        (build_config("demo", overrides={"source_model": "models:/faces@champion"}), "trained elsewhere"),
    ):
        rule = lr_rule(cfg, small)
        assert rule["lr"] == cfg.unlearn.lr and rule["scale"] == 1.0 and why in rule["why"], rule
        assert lr_scaled(cfg, small) is cfg


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_the_share_is_validated_at_the_edge(share: float) -> None:
    with pytest.raises(ConfigError, match="unlearn.lr_share"):
        build_config("demo", overrides={"unlearn": {"lr_share": share}})
