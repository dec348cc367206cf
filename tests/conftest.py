"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One small local Ray instance for the whole test session."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    ray.init(
        num_cpus=4,
        object_store_memory=256 * 1024**2,
        include_dashboard=False,
        log_to_driver=False,
        ignore_reinit_error=True,
    )
    yield
    ray.shutdown()


# Tiny model sections per family: seconds-fast on CPU, still exercising every code path
# (the VQ-GAN's discriminator is on from step 0, diffusion has a down/up level and attention).
# A third-party family defined only in the tests (tests/plugins), found by its dotted path; the local
# Ray workers of the end-to-end tests inherit PYTHONPATH.
PLUGINS = Path(__file__).with_name("plugins")
sys.path.insert(0, str(PLUGINS))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGINS), os.environ.get("PYTHONPATH")) if p)
from lethe_tiny_family import PLUGIN_FAMILY  # noqa: E402 - found through the path set just above

TINY_SECTIONS: dict[str, dict] = {
    PLUGIN_FAMILY: {"ch": 4},
    "mae": {"dim": 16, "depth": 1, "heads": 2, "dec_dim": 8, "dec_depth": 1, "dec_heads": 2},
    "vqgan": {
        "ch": 4,
        "codebook_size": 16,
        "code_dim": 4,
        "disc_ch": 4,
        "adv_start_step": 0,
        "dim": 16,
        "depth": 1,
        "heads": 2,
        "dec_dim": 8,
        "dec_depth": 1,
        "dec_heads": 2,
        "decode_steps": 3,
    },
    "diffusion": {"ch": 4, "mults": [1, 2], "sample_steps": 3},
    "diffusers-inpaint": {
        "block_out_channels": [8, 16],
        "norm_num_groups": 4,
        "attention_head_dim": 4,
        "sample_steps": 3,
    },
    "hf-vitmae": {
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "decoder_hidden_size": 8,
        "decoder_num_hidden_layers": 1,
        "decoder_num_attention_heads": 2,
        "decoder_intermediate_size": 16,
    },
}


@pytest.fixture()
def tiny_model():
    """make(family, h=16, w=16, c=1, **section overrides) -> a seeded tiny model of that family."""
    import torch

    from lethe.models import build_model, get_family

    def make(family: str, h: int = 16, w: int = 16, c: int = 1, **over):
        torch.manual_seed(0)
        arch = get_family(family).build_arch({**TINY_SECTIONS[family], **over}, h, w, c)
        return build_model(family, arch)

    return make


@pytest.fixture(scope="session")
def postgres():
    """One real PostgreSQL server per test session (started on first use, stopped after);
    its password reaches clients through PGPASSWORD, as in production."""
    from lethe.testing.postgres import postgres_server

    with postgres_server() as pg:
        old = os.environ.get("PGPASSWORD")
        os.environ["PGPASSWORD"] = pg.password
        try:
            yield pg
        finally:
            if old is None:
                os.environ.pop("PGPASSWORD", None)
            else:
                os.environ["PGPASSWORD"] = old


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """A fresh, empty request store URL on each backend: the same tests run on both."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'requests.db'}"
    pg = request.getfixturevalue("postgres")
    import uuid

    return pg.create_database(f"t_{uuid.uuid4().hex[:12]}")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--extended",
        action="store_true",
        help="also run the `extended` end-to-end variants (each family's and method's own smoke run ...)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`extended` tests are left out unless --extended: end-to-end variants whose parts other tests
    cover (the default suite must fit CI's time on 2 cores); `make test-extended` runs them all."""
    if config.getoption("--extended"):
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("extended") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
