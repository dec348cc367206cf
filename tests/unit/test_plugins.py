"""Plug-in families: found by dotted path or entry point, checked part by part, saved as lethe saves
its own, and never imported because a checkpoint names them."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from lethe_tiny_family import PLUGIN_FAMILY

from lethe import catalogue
from lethe.config import build_config
from lethe.errors import CheckpointError, ConfigError
from lethe.models import build_model, get_family, load_checkpoint, save_checkpoint
from lethe.models.plugins import PluginError, plugin_class


def test_a_plugin_named_by_dotted_path_is_an_image_to_image_family(tmp_path: Path) -> None:
    cfg = build_config("smoke", overrides={"family": PLUGIN_FAMILY, "model": {"plugin": {"ch": 6}}})
    assert catalogue.family_kind(cfg.family) == "i2i" and cfg.model.section(cfg.family) == {"ch": 6}
    assert cfg.method in catalogue.methods_for(cfg.family)
    fam = get_family(cfg.family)
    arch = fam.build_arch(cfg.model.section(cfg.family), 16, 16, 1)
    assert arch == {"height": 16, "width": 16, "channels": 1, "cell": 2, "ch": 6}
    assert fam.phases({}, 2) == ["main", "main"] and fam.cell(arch) == 2
    model = build_model(cfg.family, arch)
    path = save_checkpoint(tmp_path / "m.pt", model)
    assert torch.load(path, weights_only=True)["kind"] == PLUGIN_FAMILY
    back, _ = load_checkpoint(path, expected_kind=PLUGIN_FAMILY)
    assert all(
        torch.equal(a, b)
        for a, b in zip(back.state_dict().values(), model.state_dict().values(), strict=True)
    )


def test_a_plugin_registered_by_entry_point_is_found_by_its_name(tmp_path: Path, monkeypatch) -> None:
    # A real installed distribution's metadata, as `pip install` of the user's package leaves it.
    dist = tmp_path / "my_lethe_models-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-lethe-models\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[lethe.families]\ntiny-ae = lethe_tiny_family:TinyAE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert catalogue.is_plugin("tiny-ae") and not catalogue.is_plugin("mae")
    cfg = build_config("smoke", overrides={"family": "tiny-ae"})
    assert get_family("tiny-ae").model_cls.__name__ == "TinyAE" and cfg.model.section("tiny-ae") == {}


@pytest.mark.parametrize(
    ("family", "line"),
    [
        (
            "lethe_tiny_family:NoEncoder",
            "plug-in family 'lethe_tiny_family:NoEncoder' lacks encoder_parameters: ",
        ),
        ("lethe_tiny_family:TinyArch", "plug-in family 'lethe_tiny_family:TinyArch' is not a subclass of "),
        (
            "lethe_tiny_family:Missing",
            "plug-in family 'lethe_tiny_family:Missing': 'lethe_tiny_family' has no",
        ),
        ("no_such_module:X", "plug-in family 'no_such_module:X': cannot import 'no_such_module'"),
        ("no-such-family", "unknown family 'no-such-family'; expected one of mae, "),
    ],
)
def test_a_plugin_that_cannot_be_used_fails_in_one_line_naming_it(family: str, line: str) -> None:
    with pytest.raises(ConfigError) as e:
        build_config("smoke", overrides={"family": family})
    assert line in e.value.line() and "\n" not in e.value.line()
    if ":" in family:
        with pytest.raises(PluginError, match=line.split(":")[0]):
            plugin_class(family)


def test_a_checkpoint_never_makes_lethe_import_the_module_it_names(tmp_path: Path) -> None:
    model = build_model(PLUGIN_FAMILY, get_family(PLUGIN_FAMILY).build_arch({}, 16, 16, 1))
    payload = torch.load(save_checkpoint(tmp_path / "m.pt", model), weights_only=True)
    payload["kind"] = "lethe_untrusted_module:Anything"
    torch.save(payload, tmp_path / "forged.pt")
    with pytest.raises(CheckpointError, match="unknown model kind"):
        load_checkpoint(tmp_path / "forged.pt")
    with pytest.raises(CheckpointError, match="checkpoint is of another architecture"):
        load_checkpoint(tmp_path / "forged.pt", expected_kind=PLUGIN_FAMILY)
    assert "lethe_untrusted_module" not in sys.modules
