"""The split component: a valid, typed KFP v2 component that calls into lethe."""

from components.split import split
from components.testing import check_component


def test_interface(tmp_path):
    check_component(
        split,
        tmp_path,
        inputs={"config_json": "String", "workdir": "String", "parent_run_id": "String"},
        outputs={
            "shards": "system.Dataset@0.0.1",
            "data_digest": "String",
            "retain_digest": "String",
            "request_digest": "String",
        },
    )
