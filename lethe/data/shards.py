"""The split's output: four Parquet shards (id, label, pixels) and a manifest that describes them.

Each shard carries two digests: `digest`, keyed and over its rows (what the data is, blind to file
layout), and `files`, the size and plain sha256 of each Parquet file (what is on disk), recorded when
the manifest is saved. Readers check the files once per loaded manifest before the first read, so a
truncated or altered shard file stops the step with one line instead of failing inside Ray, or
worse, training on fewer rows.
"""

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

from lethe.digests import DigestKey, keyed_digest, keyed_hasher, stream_sha256
from lethe.errors import DataError, StorageError

if TYPE_CHECKING:
    import ray.data

    from lethe.config import RunConfig

SHARD_NAMES = ("forget", "retain", "heldout_forget", "heldout_retain")
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 3  # 2: keyed digests (digest_algorithm, digest_key_id); 3: shard files' sha256
SHARD_SCHEMA = pa.schema([("id", pa.string()), ("label", pa.int64()), ("pixels", pa.binary())])


@dataclass
class ShardInfo:
    name: str
    path: str
    count: int
    digest: str
    # file name relative to `path` -> {"size": bytes, "sha256": hex}; empty in a manifest from
    # before version 3 (nothing to check the files against)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)


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
    # Shards whose files were checked against `files` since this manifest was loaded (not saved).
    verified: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        del d["verified"]
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
        """Write manifest.json (atomically) into a shards folder / prefix, or to a .json path; first
        record the files of each shard beside it that has none recorded yet (see `file_index`)."""
        from lethe import storage

        target = manifest_uri(str(path))
        for name, shard in self.shards.items():
            if not shard.files:
                shard.files = file_index(storage.join(storage.parent(target), name))
        if storage.is_s3(path):
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


def _file_entry(uri: str) -> dict[str, Any]:
    """{"size", "sha256"} of one file or object, streamed (shard files may be large)."""
    from lethe import storage

    fs, path = storage.filesystem(uri)

    def digest() -> dict[str, Any]:
        with fs.open_input_stream(path) as fh:
            size, sha = stream_sha256(fh)
        return {"size": size, "sha256": sha}

    return storage.with_retries("digesting shard file", uri, digest) if storage.is_s3(uri) else digest()


def _relative(folder: str, uri: str) -> str:
    return uri[len(folder.rstrip("/")) + 1 :].replace(os.sep, "/")


def file_index(folder: str) -> dict[str, dict[str, Any]]:
    """The size and sha256 of every Parquet file of a shard folder / prefix, by relative name."""
    from lethe import storage

    return {_relative(folder, f): _file_entry(f) for f in storage.list_files(folder, ".parquet")}


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


def _corrupt(shard: ShardInfo, why: str) -> DataError:
    return DataError(f"shard {shard.name} is corrupt ({why}); run `lethe split` again", where=shard.path)


def verify_shard(shard: ShardInfo, files: list[str]) -> None:
    """The listed files are the ones the manifest recorded, with their sizes and sha256 (sizes of all
    first: a truncated file is found without reading the others)."""
    from lethe import storage

    if not shard.files:
        return  # a manifest from before file digests
    listed = {_relative(shard.path, f): f for f in files}
    missing = sorted(set(shard.files) - set(listed))
    if missing:
        raise _corrupt(shard, f"file {missing[0]} is missing")
    extra = sorted(set(listed) - set(shard.files))
    if extra:
        raise _corrupt(shard, f"file {extra[0]} is not in the manifest")
    fs, _ = storage.filesystem(files[0])
    paths = [storage.fs_path(listed[n]) for n in sorted(listed)]
    infos = storage.with_retries("checking shard", shard.path, lambda: fs.get_file_info(paths))
    for name, info in zip(sorted(listed), infos, strict=True):
        want = int(shard.files[name]["size"])
        if info.size != want:
            raise _corrupt(shard, f"{name}: size {info.size} bytes, manifest says {want}")
    for name in sorted(listed):
        got, want = _file_entry(listed[name])["sha256"], str(shard.files[name]["sha256"])
        if got != want:
            raise _corrupt(shard, f"{name}: sha256 {got[:12]}, manifest says {want[:12]}")


def _shard_files(manifest: Manifest, shard: ShardInfo) -> list[str]:
    """The shard's Parquet files, checked against the manifest the first time they are read."""
    from lethe import storage

    files = storage.list_files(shard.path, ".parquet")
    if not files:
        raise DataError(
            "shard is missing; run `lethe split` again", where=str(shard.path), expected="Parquet files"
        )
    if shard.name not in manifest.verified:
        verify_shard(shard, files)
        manifest.verified.add(shard.name)
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
    table = _read_table(_shard_files(manifest, shard))
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

    files = _shard_files(manifest, shard)
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
