"""The split's output: four Parquet shards (id, label, pixels) and a manifest that describes them."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lethe.errors import DataError, StorageError

if TYPE_CHECKING:
    import ray.data

SHARD_NAMES = ("forget", "retain", "heldout_forget", "heldout_retain")
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
SHARD_SCHEMA = pa.schema([("id", pa.string()), ("label", pa.int64()), ("pixels", pa.binary())])


@dataclass
class ShardInfo:
    name: str
    path: str
    count: int
    digest: str


@dataclass
class Manifest:
    dataset: str
    source_uri: str
    class_names: list[str]
    height: int
    width: int
    channels: int
    request: dict[str, Any]
    shards: dict[str, ShardInfo] = field(default_factory=dict)
    request_digest: str = ""
    data_digest: str = ""

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shards"] = {k: asdict(v) for k, v in self.shards.items()}
        d["version"] = MANIFEST_VERSION
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Manifest:
        try:
            return cls(
                dataset=str(d["dataset"]),
                source_uri=str(d["source_uri"]),
                class_names=[str(c) for c in d["class_names"]],
                height=int(d["height"]),
                width=int(d["width"]),
                channels=int(d["channels"]),
                request=dict(d["request"]),
                shards={k: ShardInfo(**v) for k, v in d["shards"].items()},
                request_digest=str(d["request_digest"]),
                data_digest=str(d["data_digest"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(
                "manifest is malformed", expected="a manifest written by `lethe split`", seen=repr(e)
            ) from e

    def save(self, path: str | os.PathLike[str]) -> Path:
        target = manifest_path(path)
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")
            os.replace(tmp, target)
        except OSError as e:
            raise StorageError("cannot write manifest", where=str(target), seen=e.strerror or str(e)) from e
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        target = manifest_path(path)
        if not target.is_file():
            raise DataError(
                "no shards found; run `lethe split` first", where=str(target), expected=MANIFEST_FILE
            )
        try:
            payload = json.loads(target.read_text())
        except (OSError, ValueError) as e:
            raise DataError("cannot read manifest", where=str(target), seen=str(e).splitlines()[0]) from e
        manifest = cls.from_json(payload)
        # Shards always live next to their manifest, so a moved/copied folder still works.
        for name, shard in manifest.shards.items():
            shard.path = str(target.parent / name)
        return manifest


def manifest_path(path: str | os.PathLike[str]) -> Path:
    """A manifest file, or a shards folder holding manifest.json."""
    p = Path(path)
    return p if p.suffix == ".json" else p / MANIFEST_FILE


# -- digests --------------------------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shard_digest(ids: Sequence[str], labels: Iterable[int], pixel_hashes: Sequence[str]) -> str:
    """sha256 over rows sorted by id of (id, label, sha256(pixels)): blind to file layout and order."""
    labels = [int(v) for v in labels]
    h = hashlib.sha256()
    for i in sorted(range(len(ids)), key=ids.__getitem__):
        key = ids[i].encode()
        # Length prefix: no id content can imitate a row boundary.
        h.update(b"%d:%s|%d|%s\n" % (len(key), key, labels[i], pixel_hashes[i].encode()))
    return h.hexdigest()


# -- reading --------------------------------------------------------------------------------------


def _shard(manifest: Manifest, name: str) -> ShardInfo:
    if name not in manifest.shards:
        raise DataError(
            "unknown shard", where="manifest", expected="one of: " + ", ".join(SHARD_NAMES), seen=name
        )
    return manifest.shards[name]


def _shard_files(shard: ShardInfo) -> list[Path]:
    folder = Path(shard.path)
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        raise DataError(
            "shard is missing; run `lethe split` again", where=str(folder), expected="Parquet files"
        )
    return files


def read_shard_numpy(
    manifest: Manifest, name: str, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Driver-side read: uint8 images (N,H,W,C), int64 labels, ids; ordered by sha256(id).

    The hash order makes `limit` a fixed subset that does not depend on how Ray laid out the files.
    """
    shard = _shard(manifest, name)
    table = pq.read_table([str(f) for f in _shard_files(shard)], schema=SHARD_SCHEMA)
    ids = table.column("id").to_pylist()
    order = sorted(range(len(ids)), key=lambda i: sha256_hex(ids[i].encode()))
    if limit is not None:
        order = order[: max(limit, 0)]
    h, w, c = manifest.shape
    if not order:
        return np.zeros((0, h, w, c), np.uint8), np.zeros((0,), np.int64), []
    table = table.take(pa.array(order, pa.int64()))
    pixels = table.column("pixels").to_pylist()
    images = np.frombuffer(b"".join(pixels), dtype=np.uint8)
    if images.size != len(pixels) * h * w * c:
        raise DataError(
            "shard pixels do not match the manifest shape", where=shard.path, expected=f"{h}x{w}x{c}"
        )
    labels = np.asarray(table.column("label").to_numpy(), dtype=np.int64)
    return images.reshape(len(pixels), h, w, c).copy(), labels, table.column("id").to_pylist()


def to_chw_float(images_uint8: np.ndarray) -> np.ndarray:
    """(N,H,W,C) uint8 -> (N,C,H,W) float32 in [0, 1]."""
    if images_uint8.ndim != 4:
        raise ValueError(f"expected (N,H,W,C) images, got shape {images_uint8.shape}")
    return np.ascontiguousarray(images_uint8.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def pixels_to_chw(batch: dict[str, np.ndarray], shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Ray Data UDF: raw pixel bytes -> float32 image (C,H,W) in [0,1] plus the int64 label."""
    h, w, c = shape
    pixels = batch["pixels"]
    raw = np.frombuffer(b"".join(bytes(p) for p in pixels), dtype=np.uint8).reshape(len(pixels), h, w, c)
    return {"image": to_chw_float(raw), "label": np.asarray(batch["label"], dtype=np.int64)}


def shard_dataset(manifest: Manifest, name: str) -> ray.data.Dataset:
    """A Ray Dataset of the shard with columns image (float32 C,H,W) and label (int64)."""
    import ray.data

    shard = _shard(manifest, name)
    files = [str(f) for f in _shard_files(shard)]
    from lethe.data.loaders import surface_udf_errors

    ds = surface_udf_errors(ray.data.read_parquet(files, columns=["label", "pixels"]))
    return ds.map_batches(
        pixels_to_chw, batch_format="numpy", fn_kwargs={"shape": manifest.shape}
    ).select_columns(["image", "label"])
