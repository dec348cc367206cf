"""The unlearn component: a valid, typed KFP v2 component that calls into lethe."""

from components.testing import check_component
from components.unlearn import unlearn


def test_interface(tmp_path):
    check_component(
        unlearn,
        tmp_path,
        inputs={
            "config_json": "String",
            "workdir": "String",
            "parent_run_id": "String",
            "alpha": "Float",
            "original": "system.Model@0.0.1",
            "featnet": "system.Model@0.0.1",
            "oracle": "system.Model@0.0.1",
        },
        outputs={"unlearned": "system.Model@0.0.1", "metrics": "system.Metrics@0.0.1"},
    )
