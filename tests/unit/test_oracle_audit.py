"""lethe.pipeline.oracle_audit: which runs get an oracle under cache.oracle = sample."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from lethe.config import build_config
from lethe.errors import ConfigError
from lethe.pipeline.oracle import NOT_AUDITED_MAGIC
from lethe.pipeline.oracle_audit import oracle_audit, require_oracle


def _man(retain_digest: str) -> SimpleNamespace:
    return SimpleNamespace(shards={"retain": SimpleNamespace(digest=retain_digest, count=900)})


def _cfg(policy: str = "sample", share: float = 0.25, tune: bool = False):
    return build_config(
        "smoke",
        overrides={"cache": {"oracle": policy, "oracle_audit_share": share}, "tune": {"enabled": tune}},
    )


def test_reuse_and_retrain_always_have_an_oracle() -> None:
    for policy in ("reuse", "retrain"):
        audit = oracle_audit(_cfg(policy, share=0.0), _man("ab" * 32))
        assert audit == {
            "policy": policy,
            "audited": True,
            "trained_on": "the retain shard: the training data without the forget set (900 images)",
        }


def test_none_never_has_an_oracle_and_says_why() -> None:
    """A team that no longer keeps its training data cannot retrain an oracle (issue 16)."""
    for digest in (f"{i:064x}" for i in range(20)):
        audit = oracle_audit(_cfg("none", share=1.0), _man(digest))
        assert audit["audited"] is False and "trained_on" not in audit
        assert (
            audit["reason"]
            == "cache.oracle = none: the training data is not kept, so no oracle could be trained"
        )
    # method auto then runs its first method unsearched; a fixed method's tuning is refused at the edge
    cfg = build_config("smoke", overrides={"cache": {"oracle": "none"}, "method": "auto"})
    assert cfg.tune.enabled
    with pytest.raises(ConfigError, match="cache.oracle = none has none"):
        build_config("smoke", overrides={"cache": {"oracle": "none"}, "tune": {"enabled": True}})
    with pytest.raises(ConfigError) as e:
        require_oracle(_cfg("none"), _man("ab" * 32), "tuning")
    assert "got none, cache.oracle = none: the training data is not kept" in str(e.value)


def test_the_draw_is_the_same_for_the_same_retain_set_and_audits_about_the_share() -> None:
    cfg = _cfg(share=0.25)
    man = _man("0f" * 32)
    first = oracle_audit(cfg, man)
    assert oracle_audit(cfg, man) == first  # a night re-run cannot escape (or win) the audit
    assert 0.0 <= first["draw"] < 1.0 and first["audited"] is (first["draw"] < 0.25)
    rng = random.Random(7)
    n = 4000
    audited = sum(oracle_audit(cfg, _man(f"{rng.getrandbits(256):064x}"))["audited"] for _ in range(n))
    # Binomial(4000, 0.25): sd 27.4; five sd either side would be missed once in ~3.5 million runs.
    assert abs(audited - 0.25 * n) < 5 * math.sqrt(n * 0.25 * 0.75), audited


def test_share_zero_never_one_always_and_tuning_forces_an_audit() -> None:
    digests = [f"{i:064x}" for i in range(50)]
    assert not any(oracle_audit(_cfg(share=0.0), _man(d))["audited"] for d in digests)
    assert all(oracle_audit(_cfg(share=1.0), _man(d))["audited"] for d in digests)
    tuned = oracle_audit(_cfg(share=0.0, tune=True), _man(digests[0]))
    assert tuned["audited"] and "tuning needs the oracle" in tuned["reason"]
    skipped = oracle_audit(_cfg(share=0.0), _man(digests[0]))
    assert "not audited" in skipped["reason"] and "not evaluated" in skipped["reason"]


def test_a_step_that_needs_the_oracle_refuses_a_run_without_one_in_one_line() -> None:
    with pytest.raises(ConfigError) as e:
        require_oracle(_cfg(share=0.0), _man("ab" * 32), "tuning")
    assert "tuning needs the oracle" in str(e.value) and "cache.oracle" in str(e.value)
    require_oracle(_cfg(share=1.0), _man("ab" * 32), "tuning")  # audited: no complaint


def test_the_share_is_validated_at_the_edge() -> None:
    for bad in (-0.1, 1.5):
        with pytest.raises(ConfigError, match="cache.oracle_audit_share"):
            _cfg(share=bad)
    with pytest.raises(ConfigError, match="cache.oracle"):
        build_config("smoke", overrides={"cache": {"oracle": "sometimes"}})


def test_the_placeholder_is_never_a_checkpoint(tmp_path: Path) -> None:
    from lethe.errors import CheckpointError
    from lethe.models.checkpoint import load_checkpoint

    path = tmp_path / "oracle.pt"
    path.write_bytes(NOT_AUDITED_MAGIC + b'{"audited": false}\n')
    with pytest.raises(CheckpointError):
        load_checkpoint(path, expected_kind="mae")


def test_best_checkpoint_keeping_needs_the_oracle_and_held_out_forget_images() -> None:
    from lethe.pipeline.validation import selection_unavailable

    def man(heldout_forget: int = 50) -> SimpleNamespace:
        shards = {"retain": SimpleNamespace(digest="ab" * 32, count=900)}
        shards["heldout_forget"] = SimpleNamespace(count=heldout_forget)
        shards["heldout_retain"] = SimpleNamespace(count=400)
        return SimpleNamespace(shards=shards)

    def why(cfg, m=None) -> str | None:
        return selection_unavailable(cfg, m or man())

    assert why(_cfg("reuse")) is None
    assert why(_cfg(share=1.0)) is None
    assert "no oracle to compare with (not audited" in why(_cfg(share=0.0))
    # a small held-out shard: a fifth of it would be fewer than 8 images
    assert "fewer than 8 held-out forget or retain images" in why(_cfg("reuse"), man(heldout_forget=39))
    assert "(7 / 64)" in why(_cfg("reuse"), man(heldout_forget=39))
    assert why(_cfg("reuse"), man(heldout_forget=40)) is None
    off = _cfg("reuse")
    off.unlearn.keep_best = False
    assert why(off) == "unlearn.keep_best is off"
    ids = build_config("smoke", overrides={"request": {"kind": "ids", "ids_file": "ids.txt"}})
    assert "an id request" in why(ids)
