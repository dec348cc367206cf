"""One list of family and method names: the CLI, the config and the model registry accept exactly it."""

from __future__ import annotations

import argparse
import subprocess
import sys
import typing
from collections.abc import Iterator

import pytest

from lethe import catalogue
from lethe.catalogue import (
    FAMILIES,
    FAMILY_KINDS,
    FEATURE_METHODS,
    GENERATOR_FAMILIES,
    I2I_FAMILIES,
    I2I_METHODS,
    METHODS,
    REQUEST_KINDS,
)
from lethe.config import RequestConfig, build_config
from lethe.errors import ConfigError


def _run_config(family: str, method: str) -> dict:
    over: dict = {"family": family, "method": method}
    if catalogue.is_generator(family):
        over["request"] = {"kind": "feature", "feature": "Trouser"}
    return over


def test_names_partition_into_kinds() -> None:
    assert FAMILIES == I2I_FAMILIES + GENERATOR_FAMILIES == tuple(FAMILY_KINDS)
    assert len(set(FAMILIES)) == len(FAMILIES) and len(set(METHODS)) == len(METHODS)
    assert METHODS == I2I_METHODS + FEATURE_METHODS
    assert {catalogue.family_kind(f) for f in I2I_FAMILIES} == {"i2i"}
    assert {catalogue.family_kind(f) for f in GENERATOR_FAMILIES} == {"generator"}
    assert set(FAMILY_KINDS.values()) == set(typing.get_args(catalogue.FamilyKind))
    for f in FAMILIES:
        assert catalogue.is_generator(f) == (f in GENERATOR_FAMILIES)
        assert catalogue.methods_for(f) == (FEATURE_METHODS if f in GENERATOR_FAMILIES else I2I_METHODS)
    with pytest.raises(ValueError, match="unknown family 'gpt'; expected one of mae, "):
        catalogue.family_kind("gpt")
    with pytest.raises(ValueError, match="unknown method 'nope'; expected auto or one of encoder_noise, "):
        catalogue.check_method("nope")
    assert (
        catalogue.check_method(catalogue.AUTO) == "auto" and "auto" not in METHODS
    )  # a search, not a method


def test_request_kinds_are_the_configs() -> None:
    assert REQUEST_KINDS == ("classes", "ids", "feature")
    assert typing.get_args(RequestConfig.model_fields["kind"].annotation) == REQUEST_KINDS


def test_catalogue_imports_nothing_heavy() -> None:
    code = (
        "import sys, lethe.catalogue; bad = {'torch', 'lethe.models'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _choices(p: argparse.ArgumentParser, dest: str) -> Iterator[tuple[str, tuple]]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for path, choices in _choices(sub, dest):
                    yield f"{name} {path}".strip(), choices
        elif action.dest == dest:
            yield (
                "",
                tuple(action.choices or ()) or tuple(n for n in names_of(dest) if n in (action.help or "")),
            )


def names_of(dest: str) -> tuple[str, ...]:
    # --family takes plug-ins too, so it lists the built-in families in its help instead of choices
    return {"family": FAMILIES, "method": METHODS}[dest]


# --method also takes auto: the tune step chooses the method (lethe.pipeline.auto)
@pytest.mark.parametrize(("dest", "names"), [("family", FAMILIES), ("method", (*METHODS, catalogue.AUTO))])
def test_cli_offers_exactly_the_catalogue(dest: str, names: tuple[str, ...]) -> None:
    from lethe.cli import parser

    found = dict(_choices(parser(), dest))
    assert "run" in found, f"lethe run has no --{dest}"
    assert all(choices == names for choices in found.values()), found


@pytest.mark.parametrize("family", FAMILIES)
def test_config_accepts_each_family_with_its_methods_only(family: str) -> None:
    for method in METHODS:
        over = _run_config(family, method)
        if method in catalogue.methods_for(family):
            cfg = build_config("smoke", overrides=over)
            assert (cfg.family, cfg.method) == (family, method)
        else:
            with pytest.raises(ConfigError, match=r"invalid configuration field \(root\)"):
                build_config("smoke", overrides=over)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        (
            {"family": "gpt"},
            "unknown family 'gpt'; expected one of " + ", ".join(FAMILIES) + ", or a plug-in",
        ),
        ({"method": "nope"}, "unknown method 'nope'; expected auto or one of " + ", ".join(METHODS)),
    ],
)
def test_config_refuses_other_names(over: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config("smoke", overrides=over)


def test_model_registry_holds_exactly_the_catalogue() -> None:
    from lethe.models import FAMILY_REGISTRY, GeneratorFamily, I2IFamily, get_family
    from lethe.models.checkpoint import _KINDS

    assert tuple(FAMILY_REGISTRY) == FAMILIES
    assert set(_KINDS) == {*FAMILIES, "featnet"}
    cfg = build_config("smoke")
    for name in FAMILIES:
        fam = get_family(name)
        assert fam.name == name and fam.kind == catalogue.family_kind(name)
        assert isinstance(fam, GeneratorFamily if name in GENERATOR_FAMILIES else I2IFamily)
        arch = fam.build_arch(cfg.model.section(name), 28, 28, 1)
        assert fam.arch_cls(**arch).to_dict() == arch
    with pytest.raises(ValueError, match="unknown family 'gpt'"):
        get_family("gpt")


def test_method_registry_holds_exactly_the_image_to_image_methods() -> None:
    from lethe.methods import method_names

    assert set(method_names()) == set(I2I_METHODS)
