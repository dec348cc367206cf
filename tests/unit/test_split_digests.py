"""The split's digests are keyed: a one-id request cannot be found from them by hashing the public
data set's ids, unless one holds the key. Without Ray: the same pure functions the Ray split calls
(`add_parts_batch` on each block, then `split_digests` on the collected rows)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from lethe.config import RunConfig, build_config
from lethe.data.loaders import Source, _array_tables, open_source
from lethe.data.shards import (
    Manifest,
    ShardInfo,
    SplitDigests,
    ids_digest,
    request_digest,
    shard_digest,
    split_caps,
    split_digests,
)
from lethe.data.split import add_parts_batch, plan_split

KEY = hashlib.sha256(b"the deployment's key").digest()
WRONG_KEY = hashlib.sha256(b"an attacker's guess").digest()
TARGET = "digits-0123"  # the one id a data subject asked to forget


@pytest.fixture(scope="module")
def digits() -> tuple[Source, pa.Table]:
    """The public data set: every id, label and pixel anybody can download (sklearn digits)."""
    src = open_source("digits")
    return src, pa.concat_tables(_array_tables(src.meta, src.state["images"]))


def _cfg(tmp_path: Path, **request: Any) -> RunConfig:
    if not request:
        ids_file = tmp_path / "forget.txt"
        ids_file.write_text(f"{TARGET}\n")
        request = {"kind": "ids", "ids_file": str(ids_file)}
    return build_config("smoke", overrides={"data": {"dataset": "digits"}, "request": request})


def _split(cfg: RunConfig, digits: tuple[Source, pa.Table], key: bytes) -> tuple[pa.Table, SplitDigests]:
    src, table = digits
    plan, request, _ = plan_split(cfg, src.info, src.meta)
    rows = add_parts_batch(table, plan)
    return rows, split_digests(rows, request, plan.forget_ids, split_caps(cfg), key)


# -- what an attacker computes ---------------------------------------------------------------------


def _sha256_shard_digest(ids: list[str], labels: list[int], pixhash: list[str]) -> str:
    """The shard digest before it was keyed: plain sha256 over the rows (lethe 0.x)."""
    h = hashlib.sha256()
    for i in sorted(range(len(ids)), key=ids.__getitem__):
        k = ids[i].encode()
        h.update(b"%d:%s|%d|%s\n" % (len(k), k, labels[i], pixhash[i].encode()))
    return h.hexdigest()


def _sha256_request_digest(record: dict[str, Any], dataset_digest: str, caps: dict[str, Any]) -> str:
    payload = {"request": record, "dataset_digest": dataset_digest, **caps}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _formats(key: bytes | None) -> tuple[Callable, Callable, Callable]:
    """(ids digest, shard digest, request digest): the old unkeyed format (key None), or HMAC under `key`."""
    if key is None:
        return (
            lambda ids: hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest(),
            _sha256_shard_digest,
            _sha256_request_digest,
        )
    return (
        lambda ids: ids_digest(ids, key),
        lambda ids, labels, ph: shard_digest(ids, labels, ph, key),
        lambda record, dataset, caps: request_digest(record, dataset, caps, key),
    )


def _brute_force(
    rows: pa.Table, published: SplitDigests, caps: dict[str, Any], key: bytes | None
) -> dict[str, set[str]]:
    """Try every id of the public data set as a one-id request: which ones match what was published
    (the request's ids digest, the forget shard's digest, the request digest)?"""
    ids_fn, shard_fn, request_fn = _formats(key)
    ids = rows.column("id").to_pylist()
    labels = rows.column("label").to_pylist()
    pixhash = rows.column("pixhash").to_pylist()
    dataset = shard_fn(ids, labels, pixhash)  # the data set's digest: public data, so computable
    found: dict[str, set[str]] = {"ids_digest": set(), "forget": set(), "request": set()}
    for i, candidate in enumerate(ids):
        guess = ids_fn([candidate])
        if guess == published.request["ids_digest"]:
            found["ids_digest"].add(candidate)
        if shard_fn([candidate], [labels[i]], [pixhash[i]]) == published.shards["forget"]:
            found["forget"].add(candidate)
        if request_fn({"kind": "ids", "ids_digest": guess}, dataset, caps) == published.request_digest:
            found["request"].add(candidate)
    return found


def test_one_id_request_cannot_be_brute_forced_without_the_key(tmp_path: Path, digits) -> None:
    cfg = _cfg(tmp_path)
    caps = split_caps(cfg)
    rows, published = _split(cfg, digits, KEY)
    assert rows.num_rows == 1797 and rows.column("part").to_pylist().count("forget") == 1
    nobody: dict[str, set[str]] = {"ids_digest": set(), "forget": set(), "request": set()}
    everywhere = {"ids_digest": {TARGET}, "forget": {TARGET}, "request": {TARGET}}

    # What the unkeyed digests were: the same brute force recovers the id from every one of them.
    ids_fn, shard_fn, request_fn = _formats(None)
    ids, labels = rows.column("id").to_pylist(), rows.column("label").to_pylist()
    pixhash = rows.column("pixhash").to_pylist()
    t = ids.index(TARGET)
    old_record = {"kind": "ids", "ids_digest": ids_fn([TARGET])}
    unkeyed = SplitDigests(
        shards={"forget": shard_fn([TARGET], [labels[t]], [pixhash[t]])},
        request=old_record,
        dataset_digest="",
        request_digest=request_fn(old_record, shard_fn(ids, labels, pixhash), caps),
        data_digest="",
    )
    assert _brute_force(rows, unkeyed, caps, None) == everywhere

    # The keyed digests: neither plain sha256 nor HMAC under a wrong key matches any candidate ...
    assert _brute_force(rows, published, caps, None) == nobody
    assert _brute_force(rows, published, caps, WRONG_KEY) == nobody
    # ... while the key holder's same brute force finds exactly the requested id.
    assert _brute_force(rows, published, caps, KEY) == everywhere
    assert published.request["ids_digest"] != unkeyed.request["ids_digest"]


def test_digests_are_deterministic_per_key(tmp_path: Path, digits) -> None:
    for cfg in (_cfg(tmp_path), _cfg(tmp_path, kind="classes", classes=["3"])):
        _, a = _split(cfg, digits, KEY)
        _, b = _split(cfg, digits, KEY)
        assert a == b  # same input + request + key: same digests
        _, other = _split(cfg, digits, WRONG_KEY)
        values = dataclasses.asdict(a)
        changed = dataclasses.asdict(other)
        for name in ("forget", "retain", "heldout_forget", "heldout_retain"):
            assert changed["shards"][name] != values["shards"][name]
        for field in ("dataset_digest", "request_digest", "data_digest"):
            assert changed[field] != values[field]
        assert len(a.request_digest) == len(a.data_digest) == 64
    # Another request over the same data: other request and forget digests, same key.
    _, ids_req = _split(_cfg(tmp_path), digits, KEY)
    _, class_req = _split(_cfg(tmp_path, kind="classes", classes=["3"]), digits, KEY)
    assert ids_req.dataset_digest == class_req.dataset_digest
    assert ids_req.request_digest != class_req.request_digest


def test_manifest_records_the_algorithm_and_key_id(tmp_path: Path, digits) -> None:
    from lethe.digests import ALGORITHM, key_id

    cfg = _cfg(tmp_path)
    _, d = _split(cfg, digits, KEY)
    src, _ = digits
    man = Manifest(
        src.info.name,
        src.info.source_uri,
        list(src.info.class_names),
        8,
        8,
        1,
        d.request,
        {n: ShardInfo(n, str(tmp_path / n), 0, v) for n, v in d.shards.items()},
        d.request_digest,
        d.data_digest,
        digest_algorithm=ALGORITHM,
        digest_key_id=key_id(KEY),
    )
    man.save(tmp_path)
    text = (tmp_path / "manifest.json").read_text()
    assert TARGET not in text and KEY.hex() not in text
    loaded = Manifest.load(tmp_path)
    assert loaded.digest_algorithm == "hmac-sha256" and loaded.digest_key_id == key_id(KEY)
    assert json.loads(text)["version"] == 3  # 2 brought keyed digests, 3 shard file digests
    # A manifest from before keyed digests reads as unkeyed sha256 with no key id.
    old = json.loads(text)
    del old["digest_algorithm"], old["digest_key_id"]
    legacy = Manifest.from_json(old)
    assert legacy.digest_algorithm == "sha256" and legacy.digest_key_id == ""
