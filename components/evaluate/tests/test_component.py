"""The evaluate component: a valid, typed KFP v2 component that calls into lethe."""

from components.evaluate import evaluate
from components.testing import check_component


def test_interface(tmp_path):
    check_component(
        evaluate,
        tmp_path,
        inputs={
            "config_json": "String",
            "workdir": "String",
            "parent_run_id": "String",
            "original": "system.Model@0.0.1",
            "featnet": "system.Model@0.0.1",
            "oracle": "system.Model@0.0.1",
            "unlearned": "system.Model@0.0.1",
        },
        outputs={
            "metrics": "system.Metrics@0.0.1",
            "report": "system.HTML@0.0.1",
            "report_json": "system.Artifact@0.0.1",
        },
    )
