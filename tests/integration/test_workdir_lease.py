"""The lease on an s3:// storage.uri (lethe/pipeline/workdir_lock.py) against the real SeaweedFS server:
a live lease refuses, an expired one is taken over (and logged), renewal, release, conditional PUTs."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from lethe import storage
from lethe.config import build_config
from lethe.pipeline import workdir_lock
from lethe.pipeline.workdir_lock import (
    LEASE_OBJECT,
    TOKEN_ENV,
    Holder,
    WorkdirBusy,
    hold,
    release_lease,
    take_lease,
)


def _lease_at(name: str) -> str:
    return f"s3://lethe/{name}/{LEASE_OBJECT}"


def test_conditional_puts(s3_env: dict[str, str]) -> None:
    uri = "s3://lethe/lease-cond/obj"
    assert storage.put_object_if(uri, b"a", None)
    assert not storage.put_object_if(uri, b"b", None)  # exists: If-None-Match fails
    data, etag = storage.read_object(uri)  # type: ignore[misc]
    assert data == b"a"
    assert not storage.put_object_if(uri, b"c", '"not-the-etag"')
    assert storage.put_object_if(uri, b"d", etag) and storage.read_bytes(uri) == b"d"
    assert storage.read_object("s3://lethe/lease-cond/absent") is None


def test_live_lease_refuses_expired_one_is_taken_over(
    s3_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    uri = _lease_at("lease-live")
    first = replace(Holder.me("first"), pid=101, command="lethe run --preset smoke")
    second = Holder.me("second")
    assert take_lease(uri, first, lease_s=60)
    with pytest.raises(WorkdirBusy) as err:
        take_lease(uri, second, lease_s=60)
    line = err.value.line()
    assert line.startswith("storage s3://lethe/lease-live is in use by another lethe run (pid 101 on host ")
    assert "`lethe run --preset smoke`" in line and "lease until 20" in line and "--storage" in line
    assert not take_lease(uri, first, lease_s=60)  # our own lease (an inheriting child): not re-taken
    release_lease(uri, second)  # never deletes another run's lease
    assert Holder.parse(storage.read_bytes(uri)) is not None

    # first dies: its lease runs out, the next run takes it over and says so
    storage.write_bytes(uri, first.renewed(-1).to_bytes())
    with caplog.at_level(logging.WARNING, logger="lethe"):
        assert take_lease(uri, second, lease_s=60)
    assert "taking over the expired lease of pid 101 on host" in caplog.text
    assert Holder.parse(storage.read_bytes(uri)).token == "second"  # type: ignore[union-attr]
    release_lease(uri, second)
    assert storage.read_object(uri) is None and TOKEN_ENV not in os.environ


def test_hold_with_s3_storage_renews_and_releases(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workdir_lock, "LEASE_S", 0.9)  # renewed every 0.3 s
    cfg = build_config(
        "smoke", overrides={"workdir": str(tmp_path / "w"), "storage": {"uri": "s3://lethe/held"}}
    )
    other = build_config(
        "smoke", overrides={"workdir": str(tmp_path / "x"), "storage": {"uri": "s3://lethe/held"}}
    )
    uri = _lease_at("held")
    with hold(cfg):
        first = Holder.parse(storage.read_bytes(uri))
        assert first is not None and first.token == os.environ[TOKEN_ENV]
        time.sleep(1.5)  # past the first term: only renewal keeps it live
        now = Holder.parse(storage.read_bytes(uri))
        assert now is not None and not now.expired() and now.expires_at > first.expires_at
        os.environ.pop(TOKEN_ENV)  # another run's process, not one of ours
        try:
            with pytest.raises(WorkdirBusy, match="storage s3://lethe/held is in use"), hold(other):
                pass
        finally:
            os.environ[TOKEN_ENV] = first.token
    assert storage.read_object(uri) is None and TOKEN_ENV not in os.environ
