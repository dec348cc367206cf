"""Shard files check themselves (lethe/data/shards.py): the manifest records each Parquet file's size
and sha256 when it is saved; the first read of a shard through a loaded manifest checks them, so a
truncated, altered, missing or stray file is one line that says to split again."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lethe.data.shards import SHARD_NAMES, SHARD_SCHEMA, Manifest, ShardInfo, read_shard_numpy
from lethe.errors import DataError


def _split(root: Path, n: int = 6) -> Path:
    rng = np.random.default_rng(0)
    shards = {}
    for name in SHARD_NAMES:
        folder = root / name
        folder.mkdir(parents=True)
        pixels = [rng.integers(0, 256, 4, dtype=np.uint8).tobytes() for _ in range(n)]
        table = pa.table(
            {
                "id": [f"{name}-{i}" for i in range(n)],
                "label": pa.array([0] * n, pa.int64()),
                "pixels": pixels,
            },
            schema=SHARD_SCHEMA,
        )
        pq.write_table(table.slice(0, n // 2), folder / "a.parquet")
        pq.write_table(table.slice(n // 2), folder / "b.parquet")
        shards[name] = ShardInfo(name, str(folder), n, "d")
    Manifest("toy", "/toy", ["0"], 2, 2, 1, {"kind": "classes"}, shards, "r", "t").save(root)
    return root


def test_save_records_every_file(tmp_path: Path) -> None:
    root = _split(tmp_path)
    rec = json.loads((root / "manifest.json").read_text())["shards"]["retain"]["files"]
    assert set(rec) == {"a.parquet", "b.parquet"}
    assert rec["a.parquet"]["size"] == (root / "retain" / "a.parquet").stat().st_size
    assert "verified" not in json.loads((root / "manifest.json").read_text())
    assert read_shard_numpy(Manifest.load(root), "retain")[0].shape == (6, 2, 2, 1)


def test_truncated_file(tmp_path: Path) -> None:
    root = _split(tmp_path)
    f = root / "retain" / "b.parquet"
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[:10])
    with pytest.raises(DataError) as e:
        read_shard_numpy(Manifest.load(root), "retain")
    assert e.value.line() == (
        f"shard retain is corrupt (b.parquet: size 10 bytes, manifest says {size}); "
        f"run `lethe split` again; at {root / 'retain'}"
    )


def test_altered_file_of_the_same_size(tmp_path: Path) -> None:
    root = _split(tmp_path)
    f = root / "forget" / "a.parquet"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(
        DataError, match=r"^shard forget is corrupt \(a\.parquet: sha256 \w{12}, manifest says"
    ):
        read_shard_numpy(Manifest.load(root), "forget")


def test_missing_and_stray_files(tmp_path: Path) -> None:
    root = _split(tmp_path)
    (root / "heldout_retain" / "a.parquet").unlink()
    with pytest.raises(DataError, match=r"shard heldout_retain is corrupt \(file a\.parquet is missing\)"):
        read_shard_numpy(Manifest.load(root), "heldout_retain")
    # a leftover file would be read as rows of the shard
    (root / "retain" / "c.parquet").write_bytes((root / "retain" / "b.parquet").read_bytes())
    with pytest.raises(
        DataError, match=r"shard retain is corrupt \(file c\.parquet is not in the manifest\)"
    ):
        read_shard_numpy(Manifest.load(root), "retain")


def test_checked_once_per_loaded_manifest(tmp_path: Path) -> None:
    root = _split(tmp_path)
    man = Manifest.load(root)
    read_shard_numpy(man, "retain")
    assert man.verified == {"retain"}
    # Changed after the check: the next step loads the manifest again, and its first read looks again.
    f = root / "retain" / "a.parquet"
    f.write_bytes(f.read_bytes()[:-1] + b"!")
    with pytest.raises(DataError, match="corrupt"):
        read_shard_numpy(Manifest.load(root), "retain")


def test_manifest_from_before_file_digests_still_reads(tmp_path: Path) -> None:
    root = _split(tmp_path)
    raw = json.loads((root / "manifest.json").read_text())
    for shard in raw["shards"].values():
        del shard["files"]
    raw["version"] = 2
    (root / "manifest.json").write_text(json.dumps(raw))
    assert read_shard_numpy(Manifest.load(root), "retain")[0].shape == (6, 2, 2, 1)
