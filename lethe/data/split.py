"""Split a data set into forget / retain / held-out shards for one forget request.

The plan (which row goes where) is computed twice from the same pure function `assign_parts`: once in
the driver on ids and labels only, so a bad request fails before any Ray work starts, and once in the
Ray Data pass that carries the pixels and writes the shards.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lethe.config import RunConfig
from lethe.data.loaders import DatasetInfo, Source, id_hashes, open_source
from lethe.data.shards import (
    SHARD_NAMES,
    SHARD_SCHEMA,
    Manifest,
    ShardInfo,
    sha256_hex,
    split_caps,
    split_digests,
)
from lethe.digests import ALGORITHM, load_key
from lethe.errors import DataError, LetheError, StorageError, lethe_errors_unwrapped

log = logging.getLogger("lethe.data")

DROPPED = ""  # part of rows cut by max_train / max_heldout
T = TypeVar("T")


@dataclass(frozen=True)
class SplitPlan:
    """Everything a Ray task needs to place a row; small enough to ship with each task."""

    has_test: bool
    heldout_fraction: float
    # Keep rows whose sha256(id) hex is <= the cutoff; None keeps all.
    train_cutoff: str | None = None
    heldout_cutoff: str | None = None
    forget_labels: frozenset[int] | None = None
    # repr=False: a logged or printed plan must not spill the requested ids.
    forget_ids: frozenset[str] | None = field(default=None, repr=False)


# -- pure planning --------------------------------------------------------------------------------


def hash_unit(hex_digest: str) -> float:
    """sha256 as an integer / 2**256: a stable uniform draw in [0, 1) per id."""
    return int(hex_digest, 16) / 2**256


def train_mask(
    hashes: Sequence[str], subsets: Sequence[str], has_test: bool, heldout_fraction: float
) -> np.ndarray:
    if has_test:
        return np.asarray([s == "train" for s in subsets], dtype=bool)
    return np.asarray([hash_unit(h) >= heldout_fraction for h in hashes], dtype=bool)


def cutoff(hashes: Sequence[str], keep: int | None) -> str | None:
    """The largest hash among the `keep` smallest; None when nothing has to be cut."""
    if keep is None or len(hashes) <= keep:
        return None
    return sorted(hashes)[keep - 1]


def assign_parts(
    ids: Sequence[str],
    labels: np.ndarray | Sequence[int],
    subsets: Sequence[str],
    plan: SplitPlan,
    hashes: Sequence[str] | None = None,
) -> np.ndarray:
    """Each row's shard name, or "" for rows cut by the size caps."""
    hashes = id_hashes(ids) if hashes is None else hashes
    labels = np.asarray(labels, dtype=np.int64)
    is_train = train_mask(hashes, subsets, plan.has_test, plan.heldout_fraction)
    hash_arr = np.asarray(hashes, dtype=object)
    kept = np.ones(len(ids), dtype=bool)
    if plan.train_cutoff is not None:
        kept &= ~is_train | (hash_arr <= plan.train_cutoff)
    if plan.heldout_cutoff is not None:
        kept &= is_train | (hash_arr <= plan.heldout_cutoff)
    parts = np.full(len(ids), DROPPED, dtype=object)
    if plan.forget_ids is not None:
        requested = np.asarray([i in plan.forget_ids for i in ids], dtype=bool)
        # A requested row is forgotten even if the size caps would have cut it: the caps subsample
        # for speed, the request names exactly what must be forgotten.
        parts[kept & is_train] = "retain"
        parts[kept & ~is_train] = "heldout_retain"
        parts[requested] = "forget"
    elif plan.forget_labels is not None:
        in_class = np.isin(
            labels, np.fromiter(plan.forget_labels, dtype=np.int64, count=len(plan.forget_labels))
        )
        parts[kept & is_train & in_class] = "forget"
        parts[kept & is_train & ~in_class] = "retain"
        parts[kept & ~is_train & in_class] = "heldout_forget"
        parts[kept & ~is_train & ~in_class] = "heldout_retain"
    else:
        raise ValueError("a split plan needs forget_labels or forget_ids")
    return parts


def resolve_classes(requested: Sequence[str], class_names: Sequence[str]) -> list[int]:
    """Class names -> sorted label indices; exact match first, then case-insensitive."""
    labels: set[int] = set()
    lowered: dict[str, list[int]] = {}
    for i, n in enumerate(class_names):
        lowered.setdefault(n.lower(), []).append(i)
    for name in requested:
        if name in class_names:
            labels.add(list(class_names).index(name))
        elif len(lowered.get(name.lower(), [])) == 1:
            labels.add(lowered[name.lower()][0])
        else:
            raise DataError(
                "unknown class name",
                where="request.classes",
                expected="one of: " + ", ".join(class_names),
                seen=repr(name),
            )
    return sorted(labels)


def feature_classes(class_names: Sequence[str], dataset: str, feature: str) -> list[str]:
    """A visual feature -> the names of the classes that carry it.

    Data sets with attributes declare them (avataaars: "glasses" = every eyewear class); any class
    name is also a feature of its own (class-as-feature, e.g. "Trouser" on Fashion-MNIST).
    """
    return [class_names[i] for i in feature_labels(class_names, dataset, feature)]


def feature_labels(class_names: Sequence[str], dataset: str, feature: str) -> list[int]:
    """Like `feature_classes`, as sorted label indices."""
    from lethe.data import avataaars

    declared: dict[str, list[str]] = avataaars.FEATURES if dataset == avataaars.NAME else {}
    if feature.lower() in declared:
        return resolve_classes(declared[feature.lower()], class_names)
    try:
        return resolve_classes([feature], class_names)
    except DataError:
        raise DataError(
            "unknown feature",
            where="request.feature",
            expected="one of: " + ", ".join([*declared, *class_names]),
            seen=repr(feature),
        ) from None


def read_ids_file(path: str | os.PathLike[str]) -> list[str]:
    """One id per line, stripped; blank lines and comment lines (first non-blank character '#') are
    skipped. A '#' anywhere else is part of the id (image-folder ids are file names). Sorted, distinct."""
    from lethe import storage

    if storage.is_s3(path):
        try:
            text = storage.read_text(str(path))
        except UnicodeDecodeError as e:
            raise DataError(
                "cannot read ids file", where=str(path), expected="a UTF-8 text file with one id per line"
            ) from e
        return _parse_ids(text)
    p = Path(path).expanduser()
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise DataError(
            "ids file not found", where=str(p), expected="a text file with one id per line"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(
            "cannot read ids file", where=str(p), expected="a UTF-8 text file with one id per line"
        ) from e
    return _parse_ids(text)


def _parse_ids(text: str) -> list[str]:
    ids = {line.strip() for line in text.splitlines()}
    ids = {i for i in ids if i and not i.startswith("#")}
    return sorted(ids)


def _check_parts(kind: str, parts: np.ndarray) -> None:
    """Refuse a request that leaves nothing to forget, nothing to retain, or (classes) nothing held
    out to compare the models on: one line here, before any training."""
    n_forget = int((parts == "forget").sum())
    n_retain = int((parts == "retain").sum())
    if n_forget == 0:
        raise DataError(
            "empty forget set",
            where="request",
            expected="at least one training row to forget",
            seen="0 matching training rows",
        )
    if n_retain == 0:
        raise DataError(
            "forget request covers all training data",
            where="request",
            expected="some training rows left to retain",
            seen=f"{n_forget} of {n_forget} training rows requested",
        )
    if kind == "classes" and not (parts == "heldout_forget").any():
        # Refused here, not in evaluate after all the training: the models are compared on these.
        raise DataError(
            "no held-out images of the forgotten classes",
            where="request.classes",
            expected="held-out (test) images of those classes to compare the models on",
            seen=f"0 held-out images, {n_forget} training images",
        )


def plan_split(
    cfg: RunConfig, info: DatasetInfo, meta: pa.Table
) -> tuple[SplitPlan, dict[str, Any], np.ndarray]:
    """Validate the request against the data set's ids/labels: the plan, the manifest's request, parts.

    An id request's record is {"kind": "ids"} here: `shards.split_digests` adds its keyed ids_digest.
    """
    ids: list[str] = meta.column("id").to_pylist()
    labels = meta.column("label").to_numpy()
    subsets: list[str] = meta.column("subset").to_pylist()
    hashes = id_hashes(ids)
    has_test = "test" in subsets
    is_train = train_mask(hashes, subsets, has_test, cfg.data.heldout_fraction)
    hash_arr = np.asarray(hashes, dtype=object)
    base = SplitPlan(
        has_test=has_test,
        heldout_fraction=cfg.data.heldout_fraction,
        train_cutoff=cutoff(list(hash_arr[is_train]), cfg.data.max_train),
        heldout_cutoff=cutoff(list(hash_arr[~is_train]), cfg.data.max_heldout),
    )
    req = cfg.request
    if req.kind == "classes":
        forget_labels = resolve_classes(req.classes, info.class_names)
        plan = replace(base, forget_labels=frozenset(forget_labels))
        request: dict[str, Any] = {
            "kind": "classes",
            "classes": [info.class_names[i] for i in forget_labels],
            "forget_labels": forget_labels,
        }
    elif req.kind == "feature":
        assert req.feature is not None  # RequestConfig enforces it
        forget_labels = feature_labels(info.class_names, info.name, req.feature)
        plan = replace(base, forget_labels=frozenset(forget_labels))
        request = {
            "kind": "feature",
            "feature": req.feature,
            "classes": [info.class_names[i] for i in forget_labels],
            "forget_labels": forget_labels,
        }
    elif req.kind == "ids":
        assert req.ids_file is not None  # RequestConfig enforces it
        wanted = read_ids_file(req.ids_file)
        known = set(ids)
        unknown = sum(1 for i in wanted if i not in known)
        if unknown:
            # The count only: requested ids must never reach a log or an error message.
            raise DataError(
                "ids not in the data set",
                where=str(req.ids_file),
                expected="ids of the data set",
                seen=f"{unknown} unknown ids",
            )
        plan = replace(base, forget_ids=frozenset(wanted))
        request = {"kind": "ids"}
    else:
        raise DataError(
            "unsupported request kind",
            where="request.kind",
            expected="classes, ids or feature",
            seen=req.kind,
        )
    parts = assign_parts(ids, labels, subsets, plan, hashes=hashes)
    _check_parts(req.kind, parts)
    return plan, request, parts


# -- Ray pass -------------------------------------------------------------------------------------


def add_parts_batch(batch: pa.Table, plan: SplitPlan) -> pa.Table:
    """Ray Data UDF: append `part` and `pixhash` (sha256 of the pixels, for the digests)."""
    ids = batch.column("id").to_pylist()
    parts = assign_parts(ids, batch.column("label").to_numpy(), batch.column("subset").to_pylist(), plan)
    pixhash = [sha256_hex(p) for p in batch.column("pixels").to_pylist()]
    return batch.append_column("part", pa.array(parts.tolist(), pa.string())).append_column(
        "pixhash", pa.array(pixhash, pa.string())
    )


def _in_ray(what: str, fn: Callable[[], T]) -> T:
    """Run a Ray Data step; a LetheError raised in a task comes back as itself."""
    with lethe_errors_unwrapped(what):
        return fn()


def _write_shard(ds: Any, name: str, folder: str | Path) -> None:
    from ray.data.expressions import col

    from lethe import storage

    folder = str(folder)
    shard = ds.filter(expr=col("part") == name).select_columns(["id", "label", "pixels"])
    if storage.is_s3(folder):
        fs, path = storage.filesystem(folder)

        def write() -> None:
            shard.write_parquet(path, filesystem=fs)
    else:

        def write() -> None:
            shard.write_parquet(folder)

    try:
        _in_ray(f"writing shard {name}", write)
    except LetheError:
        raise
    except Exception as e:
        msg = storage.scrub(str(e).splitlines()[0][:200])
        raise StorageError("cannot write shard", where=folder, seen=msg) from e
    if not storage.list_files(folder, ".parquet"):
        # Ray writes no file for an empty shard; readers still need the schema.
        if storage.is_s3(folder):
            fs, path = storage.filesystem(folder)
            storage.with_retries(
                "writing an empty shard",
                folder,
                lambda: pq.write_table(SHARD_SCHEMA.empty_table(), f"{path}/empty.parquet", filesystem=fs),
            )
        else:
            Path(folder).mkdir(parents=True, exist_ok=True)
            pq.write_table(SHARD_SCHEMA.empty_table(), Path(folder) / "empty.parquet")


def _count_rows(folder: str | Path) -> int:
    from lethe import storage

    files = storage.list_files(str(folder), ".parquet")
    if not files or not storage.is_s3(files[0]):
        return sum(pq.read_metadata(f).num_rows for f in files)
    fs, _ = storage.filesystem(files[0])

    def count() -> int:
        total = 0
        for f in files:
            with fs.open_input_file(storage.fs_path(f)) as fh:
                total += pq.read_metadata(fh).num_rows
        return total

    return storage.with_retries("counting shard rows", str(folder), count)


# -- atomic output --------------------------------------------------------------------------------


def _make_temp_dir(out_dir: Path) -> Path:
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{secrets.token_hex(4)}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise StorageError(
            "cannot create the shards folder",
            where=str(out_dir),
            expected="a writable folder",
            seen=e.strerror or str(e),
        ) from e
    return tmp


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Replace out_dir with tmp; an earlier out_dir is removed only once the new one is in place."""
    old: Path | None = None
    try:
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{secrets.token_hex(4)}"
            os.rename(out_dir, old)
        os.rename(tmp, out_dir)
    except OSError as e:
        if old is not None and not out_dir.exists():
            os.rename(old, out_dir)
        raise StorageError(
            "cannot move shards into place", where=str(out_dir), seen=e.strerror or str(e)
        ) from e
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def split_dataset(cfg: RunConfig, out_dir: str | Path) -> Manifest:
    """Write the four shards and manifest.json to out_dir (atomically); return the manifest.

    out_dir is a local folder or an s3:// prefix. Locally the shards go to a temp folder renamed into
    place. On S3 there is no rename: see `_split_to_s3`.
    """
    from lethe import storage

    if storage.is_s3(out_dir):
        return _split_to_s3(cfg, storage.normalize(str(out_dir)))
    out_dir = Path(out_dir).expanduser().resolve()
    tmp = _make_temp_dir(out_dir)
    try:
        manifest = _split_into(cfg, out_dir, tmp)
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


TMP_MARK = ".tmp-"


def temp_prefixes(out_dir: str) -> list[str]:
    """Leftover temp shard prefixes of an interrupted split to S3 (they may hold forget pixels)."""
    from lethe import storage

    stem = f".{storage.basename(out_dir)}{TMP_MARK}"
    return storage.list_children(storage.parent(out_dir), startswith=stem)


def _split_to_s3(cfg: RunConfig, out_dir: str) -> Manifest:
    """S3 has no atomic rename of a prefix, so:

    1. write every shard and the manifest under a fresh temp prefix beside out_dir;
    2. delete out_dir's old manifest first (from here on readers refuse out_dir), then its old shards;
    3. copy the shards server-side to out_dir, and the manifest last;
    4. delete the temp prefix.
    A failure anywhere leaves out_dir either as it was (steps 1) or without a manifest (steps 2-3),
    never a manifest over partial shards; the temp prefix is deleted on failure too when the server
    answers, and `lethe cleanup` sweeps leftovers of a crash.
    """
    from lethe import storage
    from lethe.data.shards import MANIFEST_FILE

    tmp = storage.join(
        storage.parent(out_dir), f".{storage.basename(out_dir)}{TMP_MARK}{secrets.token_hex(4)}"
    )
    try:
        manifest = _split_into(cfg, out_dir, tmp)
        storage.delete(storage.join(out_dir, MANIFEST_FILE))
        for name in SHARD_NAMES:
            storage.delete(storage.join(out_dir, name))
            storage.copy_tree(storage.join(tmp, name), storage.join(out_dir, name))
        manifest.save(out_dir)  # last: it is what makes out_dir trusted
    finally:
        try:
            storage.delete(tmp)
        except LetheError as e:
            log.warning("could not delete temp shards %s (%s); `lethe cleanup` removes them", tmp, e.seen)
    return manifest


def _split_into(cfg: RunConfig, out_dir: str | Path, tmp: str | Path) -> Manifest:
    src: Source = open_source(cfg.data.dataset)
    info = src.info
    if cfg.unlearn.proxy_retain:  # a proxy that cannot stand in is refused before any work
        from lethe.data.proxy import open_proxy

        open_proxy(cfg.unlearn.proxy_retain, info.shape)
    plan, request, expected_parts = plan_split(cfg, info, src.meta)
    # After the request is known to be good, before any Ray work: a bad key file fails fast.
    key = load_key(cfg.digest_key_path)
    from lethe.execution.ray_env import ensure_ray, ray_log_path

    # Only now that the data and request passed their checks: start Ray (unless it runs already),
    # with its own output (a failed task's traceback) in the run's log file, not on the terminal.
    ensure_ray(cfg.resources, ray_log_path(cfg.workdir_path))
    counts = {name: int((expected_parts == name).sum()) for name in SHARD_NAMES}
    log.info(
        "split %s (%d rows, %dx%dx%d): %s",
        info.name,
        src.meta.num_rows,
        info.height,
        info.width,
        info.channels,
        ", ".join(f"{k}={v}" for k, v in counts.items()),
    )

    parted = _in_ray(
        "decoding the data set",
        lambda: (
            src.to_ray()
            .map_batches(add_parts_batch, batch_format="pyarrow", fn_kwargs={"plan": plan})
            .materialize()
        ),
    )
    import ray

    digest_cols = parted.select_columns(["id", "label", "part", "pixhash"])
    rows = _in_ray("collecting digests", lambda: pa.concat_tables(ray.get(digest_cols.to_arrow_refs())))
    digests = split_digests(rows, request, plan.forget_ids, split_caps(cfg), key)
    from lethe import storage

    shards: dict[str, ShardInfo] = {}
    for name in SHARD_NAMES:
        folder = storage.join(tmp, name)
        _write_shard(parted, name, folder)
        written = _count_rows(folder)
        if written != counts[name]:
            raise StorageError(
                "shard row count does not match the plan",
                where=str(folder),
                expected=str(counts[name]),
                seen=str(written),
            )
        shards[name] = ShardInfo(name, storage.join(out_dir, name), written, digests.shards[name])

    manifest = Manifest(
        dataset=info.name,
        source_uri=info.source_uri,
        class_names=list(info.class_names),
        height=info.height,
        width=info.width,
        channels=info.channels,
        request=digests.request,
        shards=shards,
        request_digest=digests.request_digest,
        data_digest=digests.data_digest,
        digest_algorithm=ALGORITHM,
        digest_key_id=key.key_id,
    )
    manifest.save(tmp)
    for name, shard in shards.items():
        log.info("shard %s: %d rows, digest %s", name, shard.count, shard.digest[:16])
    log.info(
        "request digest %s, data digest %s (%s, key id %s)",
        manifest.request_digest[:16],
        manifest.data_digest[:16],
        ALGORITHM,
        key.key_id,
    )
    return manifest
