"""The begin component: a valid, typed KFP v2 component that calls into lethe."""

from components.begin import begin
from components.testing import check_component


def test_interface(tmp_path):
    check_component(
        begin,
        tmp_path,
        inputs={"config_json": "String", "workdir": "String", "kfp_run_id": "String"},
        outputs={"parent_run_id": "String", "source_model": "String"},
    )
