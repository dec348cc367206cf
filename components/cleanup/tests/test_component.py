"""The cleanup component: a valid, typed KFP v2 component that calls into lethe."""

from components.cleanup import cleanup
from components.testing import check_component


def test_interface(tmp_path):
    check_component(
        cleanup,
        tmp_path,
        inputs={
            "config_json": "String",
            "workdir": "String",
            "status": "PipelineTaskFinalStatus",
            "model": "String",
        },
        outputs={"certificate": "system.HTML@0.0.1", "certificate_json": "system.Artifact@0.0.1"},
    )
