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

from lethe.digests import DigestKey, keyed_digest, keyed_hasher
from lethe.errors import DataError, StorageError

if TYPE_CHECKING:
    import ray.data

    from lethe.config import RunConfig

SHARD_NAMES = ("forget", "retain", "heldout_forget", "heldout_retain")
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 2  # 2: keyed digests (digest_algorithm, digest_key_id)
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
    # How the digests above were made: "hmac-sha256" under the key named by digest_key_id
    # (lethe.digests); a manifest from before keyed digests reads as "sha256" with no key id.
    digest_algorithm: str = ""
    digest_key_id: str = ""

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
                digest_algorithm=str(d.get("digest_algorithm", "sha256")),
                digest_key_id=str(d.get("digest_key_id", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(
                "manifest is malformed", expected="a manifest written by `lethe split`", seen=repr(e)
            ) from e

    def save(self, path: str | os.PathLike[str]) -> Path | str:
        """Write manifest.json (atomically) into a shards folder / prefix, or to a .json path."""
        from lethe import storage

        if storage.is_s3(path):
            target = manifest_uri(str(path))
            text = json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"
            storage.write_bytes(target, text.encode("utf-8"))  # one PUT: atomic
            return target
        target_p = manifest_path(path)
        tmp = target_p.with_name(f".{target_p.name}.tmp")
        try:
            tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")
            os.replace(tmp, target_p)
        except OSError as e:
            raise StorageError("cannot write manifest", where=str(target_p), seen=e.strerror or str(e)) from e
        return target_p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Manifest:
        from lethe import storage

        if storage.is_s3(path):
            target = manifest_uri(str(path))
            # A prefix without a manifest is never trusted: shards are written first, the manifest last.
            if not storage.is_file(target):
                raise DataError(
                    "no shards found; run `lethe split` first", where=target, expected=MANIFEST_FILE
                )
            manifest = cls.from_json(storage.read_json(target))
            for name, shard in manifest.shards.items():
                shard.path = storage.join(storage.parent(target), name)
            return manifest
        target_p = manifest_path(path)
        if not target_p.is_file():
            raise DataError(
                "no shards found; run `lethe split` first", where=str(target_p), expected=MANIFEST_FILE
            )
        try:
            payload = json.loads(target_p.read_text())
        except (OSError, ValueError) as e:
            raise DataError("cannot read manifest", where=str(target_p), seen=str(e).splitlines()[0]) from e
        manifest = cls.from_json(payload)
        # Shards always live next to their manifest, so a moved/copied folder still works.
        for name, shard in manifest.shards.items():
            shard.path = str(target_p.parent / name)
        return manifest


def manifest_path(path: str | os.PathLike[str]) -> Path:
    """A manifest file, or a shards folder holding manifest.json."""
    p = Path(path)
    return p if p.suffix == ".json" else p / MANIFEST_FILE


def manifest_uri(path: str) -> str:
    """manifest_path for local paths and s3:// URIs alike."""
    from lethe import storage

    if storage.is_s3(path):
        return path if path.endswith(".json") else storage.join(path, MANIFEST_FILE)
    return str(manifest_path(path))


# -- digests --------------------------------------------------------------------------------------


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shard_digest(
    ids: Sequence[str], labels: Iterable[int], pixel_hashes: Sequence[str], key: DigestKey | bytes
) -> str:
    """HMAC-SHA256 under `key` over rows sorted by id of (id, label, sha256(pixels)): blind to file
    layout and order, and not to be matched against a public data set's rows without the key."""
    labels = [int(v) for v in labels]
    h = keyed_hasher(key)
    for i in sorted(range(len(ids)), key=ids.__getitem__):
        raw = ids[i].encode()
        # Length prefix: no id content can imitate a row boundary.
        h.update(b"%d:%s|%d|%s\n" % (len(raw), raw, labels[i], pixel_hashes[i].encode()))
    return h.hexdigest()


def ids_digest(ids: Iterable[str], key: DigestKey | bytes) -> str:
    """Keyed digest of a set of ids: no id can be found from it by hashing candidates without the key."""
    return keyed_digest(key, "\n".join(sorted(ids)).encode())


def split_caps(cfg: RunConfig) -> dict[str, Any]:
    """The config fields besides the request that decide which rows go where."""
    return {
        "heldout_fraction": cfg.data.heldout_fraction,
        "max_train": cfg.data.max_train,
        "max_heldout": cfg.data.max_heldout,
    }


def request_digest(
    request: dict[str, Any], dataset_digest: str, caps: dict[str, Any], key: DigestKey | bytes
) -> str:
    """Keyed digest of what was asked of which data: the request record, the data set, the caps."""
    payload = {"request": request, "dataset_digest": dataset_digest, **caps}
    return keyed_digest(key, json.dumps(payload, sort_keys=True).encode())


@dataclass(frozen=True)
class SplitDigests:
    """The manifest's keyed digests (see `split_digests`)."""

    shards: dict[str, str]
    request: dict[str, Any]  # the manifest's request record, an id request's keyed ids_digest included
    dataset_digest: str
    request_digest: str
    data_digest: str


def split_digests(
    rows: pa.Table,
    request: dict[str, Any],
    forget_ids: Iterable[str] | None,
    caps: dict[str, Any],
    key: DigestKey | bytes,
) -> SplitDigests:
    """Every digest of a manifest, keyed (HMAC-SHA256), from rows with columns id, label, part and
    pixhash (as `split.add_parts_batch` gives them). Same rows + request + key: same digests."""
    ids = rows.column("id").to_pylist()
    labels = rows.column("label").to_numpy()
    parts = np.asarray(rows.column("part").to_pylist(), dtype=object)
    pixhash = rows.column("pixhash").to_pylist()

    def digest_of(mask: np.ndarray) -> str:
        idx = np.flatnonzero(mask)
        return shard_digest([ids[i] for i in idx], labels[idx], [pixhash[i] for i in idx], key)

    record = dict(request)
    if forget_ids is not None:
        record["ids_digest"] = ids_digest(forget_ids, key)
    dataset_digest = digest_of(np.ones(len(ids), dtype=bool))
    return SplitDigests(
        shards={name: digest_of(parts == name) for name in SHARD_NAMES},
        request=record,
        dataset_digest=dataset_digest,
        request_digest=request_digest(record, dataset_digest, caps, key),
        # The union, not forget and retain separately: requests that train on the same rows share
        # one original model.
        data_digest=digest_of((parts == "forget") | (parts == "retain")),
    )


# -- reading --------------------------------------------------------------------------------------


def _shard(manifest: Manifest, name: str) -> ShardInfo:
    if name not in manifest.shards:
        raise DataError(
            "unknown shard", where="manifest", expected="one of: " + ", ".join(SHARD_NAMES), seen=name
        )
    return manifest.shards[name]


def _shard_files(shard: ShardInfo) -> list[str]:
    from lethe import storage

    files = storage.list_files(shard.path, ".parquet")
    if not files:
        raise DataError(
            "shard is missing; run `lethe split` again", where=str(shard.path), expected="Parquet files"
        )
    return files


def _read_table(files: list[str]) -> pa.Table:
    from lethe import storage

    if not storage.is_s3(files[0]):
        return pq.read_table(files, schema=SHARD_SCHEMA)
    fs, _ = storage.filesystem(files[0])
    paths = [storage.fs_path(f) for f in files]
    return storage.with_retries(
        "reading shard",
        storage.parent(files[0]),
        lambda: pq.read_table(paths, schema=SHARD_SCHEMA, filesystem=fs),
    )


def read_shard_numpy(
    manifest: Manifest, name: str, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Driver-side read: uint8 images (N,H,W,C), int64 labels, ids; ordered by sha256(id).

    The hash order makes `limit` a fixed subset that does not depend on how Ray laid out the files.
    """
    shard = _shard(manifest, name)
    table = _read_table(_shard_files(shard))
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
    from lethe import storage
    from lethe.data.loaders import surface_udf_errors

    files = _shard_files(shard)
    if storage.is_s3(files[0]):
        # The filesystem pickles without credentials: Ray tasks read them from their own AWS_* env.
        fs, _ = storage.filesystem(files[0])
        read = ray.data.read_parquet(
            [storage.fs_path(f) for f in files], columns=["label", "pixels"], filesystem=fs
        )
    else:
        read = ray.data.read_parquet(files, columns=["label", "pixels"])
    ds = surface_udf_errors(read)
    return ds.map_batches(
        pixels_to_chw, batch_format="numpy", fn_kwargs={"shape": manifest.shape}
    ).select_columns(["image", "label"])
