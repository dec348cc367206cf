"""Shared checks for the components' own tests (components/*/tests)."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler, components

from components import LETHE_IMAGE


def check_component(component, tmp_path: Path, inputs: dict[str, str], outputs: dict[str, str]) -> dict:
    """Compile `component` alone, load it back with kfp and check its typed interface.

    `inputs` / `outputs` map names to KFP types (e.g. "String", "system.Model"). Returns the
    loaded component's spec for further checks.
    """
    path = tmp_path / f"{component.name}.yaml"
    compiler.Compiler().compile(component, str(path))
    loaded = components.load_component_from_file(str(path))
    spec = loaded.component_spec
    assert spec.name == component.name
    got_in = {n: _type(s) for n, s in (spec.inputs or {}).items()}
    got_out = {n: _type(s) for n, s in (spec.outputs or {}).items()}
    assert got_in == inputs, got_in
    assert got_out == outputs, got_out
    container = spec.implementation.container
    assert container.image == LETHE_IMAGE
    # The image has lethe and kfp installed: nothing may be pip-installed at run time.
    assert not any("pip install" in part for part in [*container.command, *(container.args or [])])
    # Thin: the body is one call into the package.
    assert "from lethe.orchestration import kfp_steps" in "\n".join(
        [*container.command, *(container.args or [])]
    )
    return spec


def _type(spec) -> str:
    return str(spec.type)


__all__ = ["check_component"]
