"""The resolve-or-pretrain component: a valid, typed KFP v2 component that calls into lethe."""

from components.source_model import resolve_or_pretrain
from components.testing import check_component


def test_interface(tmp_path):
    check_component(
        resolve_or_pretrain,
        tmp_path,
        inputs={
            "config_json": "String",
            "workdir": "String",
            "data_digest": "String",
            "source_model": "String",
        },
        outputs={"original": "system.Model@0.0.1", "featnet": "system.Model@0.0.1"},
    )
