"""The model cache checks itself (lethe/pipeline/model_cache.py): each `.pt` has a cache index entry
(size + sha256, written after the file is complete); truncation, a flipped bit, a missing index or
a file that does not load make the entry corrupt: removed for a rebuild, or refused with the
command that clears it. No Ray: the reuse and refuse paths train nothing (the rebuild is trained
for real in tests/integration/test_cli.py)."""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import Any

import pytest
import torch

from lethe.cli import overrides_from_args, parser
from lethe.config import build_config
from lethe.errors import CheckpointError, ConfigError
from lethe.execution.fit import _copy_model
from lethe.execution.job import MODEL_FILE
from lethe.models.checkpoint import load_checkpoint, save_checkpoint
from lethe.pipeline.context import Context
from lethe.pipeline.keys import file_digest
from lethe.pipeline.layout import check_workdir
from lethe.pipeline.model_cache import corruption, index_path, train_or_reuse, write_index


def _ctx(tmp_path: Path, **over: Any) -> Context:
    cfg = build_config(
        "smoke", overrides={"workdir": str(tmp_path / "work"), "cache_dir": str(tmp_path / "cache"), **over}
    )
    return Context(cfg=cfg, lay=check_workdir(cfg), tracker=None)


@pytest.fixture()
def entry(tmp_path: Path, tiny_model) -> Path:
    """A complete cache entry: the checkpoint, then its index."""
    cached = tmp_path / "cache" / "models" / "mae-k1.pt"
    save_checkpoint(cached, tiny_model("mae"), {"role": "original"})
    write_index(cached, {"train_wall_s": 12.5, "final_loss": 0.25})
    return cached


def _no_training(*_a: Any) -> Any:
    raise AssertionError("a verified entry is reused, not trained")


def test_index_records_the_complete_file(entry: Path) -> None:
    idx = json.loads(index_path(entry).read_text())
    assert idx["file"] == {"size": entry.stat().st_size, "sha256": file_digest(entry)}
    assert idx["training"] == {"train_wall_s": 12.5, "final_loss": 0.25}
    assert corruption(entry) is None


def test_truncation_is_caught_by_size(entry: Path) -> None:
    size = entry.stat().st_size
    entry.write_bytes(entry.read_bytes()[: size // 2])
    assert corruption(entry) == f"size {size // 2} bytes, index says {size}"


def test_a_flipped_bit_is_caught_by_the_digest(entry: Path) -> None:
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0x01
    entry.write_bytes(bytes(data))
    why = corruption(entry)
    assert why is not None and why.startswith("sha256 ") and "index says" in why


def test_a_missing_or_old_index_is_corrupt(entry: Path) -> None:
    idx = index_path(entry)
    idx.write_text(json.dumps({"train_wall_s": 3.0}))  # a sidecar from before the index
    assert corruption(entry) == "cache index entry unreadable or without size and sha256"
    idx.write_text("{not json")
    assert corruption(entry) == "cache index entry unreadable or without size and sha256"
    idx.unlink()
    assert corruption(entry) == "no cache index entry"


def test_a_file_that_does_not_load_is_corrupt_even_when_its_index_matches(entry: Path) -> None:
    torch.save({"format": "something else"}, entry)
    write_index(entry, {})
    why = corruption(entry)
    assert why is not None and "not a lethe checkpoint" in why


def test_a_verified_entry_is_reused_and_copied(tmp_path: Path, entry: Path) -> None:
    ctx = _ctx(tmp_path)
    dest, info = train_or_reuse(ctx, "mae", ("retain",), "k1", "original", _no_training)
    assert dest == ctx.lay.model("original") and dest.read_bytes() == entry.read_bytes()
    assert info["cached"] is True and info["train_wall_s"] == 12.5 and info["final_loss"] == 0.25
    assert "file" not in info  # the index's own fields are no training numbers (MLflow metrics)
    assert not list(dest.parent.glob(".original.pt.*"))  # the atomic copy left no temp file


def test_refuse_names_the_command_that_clears_the_entry(tmp_path: Path, entry: Path) -> None:
    ctx = _ctx(tmp_path, cache={"on_corrupt": "refuse"})
    size = entry.stat().st_size
    entry.write_bytes(entry.read_bytes()[:100])
    with pytest.raises(CheckpointError) as e:
        train_or_reuse(ctx, "mae", ("retain",), "k1", "original", _no_training)
    line = e.value.line()
    assert line.startswith(
        f"cached original model is corrupt (size 100 bytes, index says {size}); at {entry}"
    )
    assert f"`rm -f {shlex.quote(str(entry))} {shlex.quote(str(index_path(entry)))}` clears it" in line
    assert "\n" not in line
    assert entry.is_file() and index_path(entry).is_file()  # refused: nothing touched
    assert not ctx.lay.model("original").exists()


def test_rebuild_removes_the_corrupt_entry_before_training(
    tmp_path: Path, entry: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = _ctx(tmp_path)
    size = entry.stat().st_size
    entry.write_bytes(entry.read_bytes()[:100])

    class Stop(Exception):
        pass

    def no_shards() -> None:  # where training starts: stop there, the rebuild itself needs Ray
        assert not entry.exists() and not index_path(entry).exists()
        raise Stop

    ctx.manifest = no_shards  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, "lethe"), pytest.raises(Stop):
        train_or_reuse(ctx, "mae", ("retain",), "k1", "original", _no_training)
    assert f"cached original model is corrupt (size 100 bytes, index says {size}); rebuilding" in caplog.text


def test_oracle_policy_retrain_trains_even_with_a_verified_entry(tmp_path: Path, entry: Path) -> None:
    ctx = _ctx(tmp_path, cache={"oracle": "retrain"})
    assert _ctx(tmp_path).cfg.cache.oracle == "reuse"  # the default reuses the same yardstick

    class Trains(Exception):
        pass

    def training_starts() -> None:
        raise Trains

    ctx.manifest = training_starts  # type: ignore[method-assign]
    with pytest.raises(Trains):
        train_or_reuse(ctx, "mae", ("retain",), "k1", "oracle", _no_training, reuse=False)
    assert corruption(entry) is None  # the verified entry is left alone until the new one replaces it


def test_on_corrupt_is_validated_and_has_a_cli_flag(tmp_path: Path) -> None:
    assert _ctx(tmp_path).cfg.cache.on_corrupt == "rebuild"
    with pytest.raises((ConfigError, ValueError)):
        _ctx(tmp_path, cache={"on_corrupt": "ignore"})
    a = parser().parse_args(["pretrain", "--cache-on-corrupt", "refuse"])
    assert build_config("smoke", overrides=overrides_from_args(a)).cache.on_corrupt == "refuse"


def test_checkpoint_write_is_atomic_when_the_write_fails(
    tmp_path: Path, tiny_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "m" / "original.pt"
    save_checkpoint(path, tiny_model("mae"))
    before = path.read_bytes()

    def disk_full(obj: Any, f: Any, *a: Any, **k: Any) -> None:
        f.write(b"PK\x03\x04 half a zip")  # a full disk can only be faked: write a part, then fail
        raise RuntimeError("[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(
        CheckpointError, match=r"^cannot write checkpoint; at .*original\.pt; got .*failed writing"
    ):
        save_checkpoint(path, tiny_model("mae"))
    assert path.read_bytes() == before  # the old file is whole, no temp file is left
    assert sorted(p.name for p in path.parent.iterdir()) == ["original.pt"]
    load_checkpoint(path)


def test_fit_copies_the_model_atomically(tmp_path: Path, tiny_model) -> None:
    src = save_checkpoint(tmp_path / "ckpt" / MODEL_FILE, tiny_model("mae"))

    class Checkpoint:  # Ray's Checkpoint.as_directory: the checkpoint folder, locally
        def as_directory(self):
            from contextlib import nullcontext

            return nullcontext(str(src.parent))

    dest = tmp_path / "cache" / "models" / "mae-k.pt"
    _copy_model(Checkpoint(), dest)
    assert dest.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["mae-k.pt"]
