"""The oracle component: a valid, typed KFP v2 component that calls into lethe."""

from components.oracle import oracle
from components.testing import check_component


def test_interface(tmp_path):
    check_component(
        oracle,
        tmp_path,
        inputs={"config_json": "String", "workdir": "String", "retain_digest": "String"},
        outputs={"oracle": "system.Model@0.0.1"},
    )
