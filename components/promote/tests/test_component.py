"""The register-and-promote component: a valid, typed KFP v2 component that calls into lethe."""

from components.promote import promote
from components.testing import check_component


def test_interface(tmp_path):
    check_component(
        promote,
        tmp_path,
        inputs={
            "config_json": "String",
            "workdir": "String",
            "parent_run_id": "String",
            "unlearned": "system.Model@0.0.1",
            "report_json": "system.Artifact@0.0.1",
        },
        outputs={"gates": "system.Metrics@0.0.1", "model_version": "String", "promoted": "Boolean"},
    )
