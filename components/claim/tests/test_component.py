"""The claim component: a valid, typed KFP v2 component that calls into lethe."""

from components.claim import claim
from components.testing import check_component


def test_interface(tmp_path):
    check_component(
        claim,
        tmp_path,
        inputs={"config_json": "String", "workdir": "String", "model": "String", "kfp_run_id": "String"},
        outputs={"Output": "Integer", "config_json": "String"},
    )
