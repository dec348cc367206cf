"""The request store's lifecycle, claims and audit trail, on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import pytest

from lethe.digests import DigestKey
from lethe.errors import DataError
from lethe.store import RequestRejected, StoreError, open_store
from lethe.store import lifecycle as L

KEY = DigestKey(b"k" * 32, "test")


def _submit(store, model: str = "m", ids: tuple[str, ...] = ("a", "b"), **kw):
    return L.submit(
        store, model_name=model, kind="ids", payload={"ids": list(ids)}, key=KEY, check=lambda: None, **kw
    )


def _trail(store, rid: str) -> list[tuple[str | None, str]]:
    return [(a.from_status, a.to_status) for a in L.audit(store, rid)]


def test_a_request_lives_through_failures_to_needs_attention(store_url: str) -> None:
    store = open_store(store_url)
    r = _submit(store, reference="T-1")
    assert r.status == "queued" and r.attempts == 0 and r.reference == "T-1"
    assert r.deadline - r.received_at == timedelta(days=30)
    for attempt in (1, 2):
        (got,) = L.claim(store, "m", "night", lease_s=60)
        assert got.id == r.id and got.status == "in_progress" and got.claimed_by == "night"
        L.mark_failed(store, [r.id], "night", reason="gate forget_fd failed", max_attempts=2)
        assert L.get(store, r.id).attempts == attempt
    r = L.get(store, r.id)
    assert r.status == "needs_attention" and r.last_error == "gate forget_fd failed"
    assert L.claim(store, "m", "night", lease_s=60) == []  # out of attempts: not taken again
    assert _trail(store, r.id) == [
        (None, "received"),
        ("received", "queued"),
        ("queued", "in_progress"),
        ("in_progress", "failed"),
        ("failed", "in_progress"),
        ("in_progress", "needs_attention"),
    ]
    store.close()


def test_applied_records_version_and_certificate_and_is_final(store_url: str) -> None:
    store = open_store(store_url)
    a, b = _submit(store), _submit(store, model="other")
    claimed = L.claim(store, "m", "night", lease_s=60)
    assert [r.id for r in claimed] == [a.id]  # another model's request stays queued
    L.mark_applied(store, [a.id], "night", version="3", certificate="sha256:abc")
    a = L.get(store, a.id)
    assert (a.status, a.applied_version, a.certificate, a.attempts) == ("applied", "3", "sha256:abc", 1)
    assert a.applied_at is not None and a.applied_at >= a.received_at
    assert [r.id for r in L.applied(store, "m")] == [a.id]
    with pytest.raises(StoreError, match="already applied"):
        L.cancel(store, a.id)
    assert L.get(store, b.id).status == "queued"
    store.close()


def test_a_cancelled_request_is_never_claimed(store_url: str) -> None:
    store = open_store(store_url)
    r = _submit(store)
    L.cancel(store, r.id[:8], reason="withdrawn")
    assert L.claim(store, "m", "night", lease_s=60) == []
    assert L.audit(store, r.id)[-1].reason == "withdrawn"
    # A request a run holds cannot be cancelled under it.
    r2 = _submit(store)
    L.claim(store, "m", "night", lease_s=60)
    with pytest.raises(StoreError, match="being applied by night"):
        L.cancel(store, r2.id)
    store.close()


def test_a_rejected_request_is_recorded_with_its_reason(store_url: str) -> None:
    store = open_store(store_url)

    def bad() -> None:
        raise DataError("ids not in the data set", seen="1 unknown ids")

    with pytest.raises(RequestRejected, match="rejected: ids not in the data set") as e:
        L.submit(store, model_name="m", kind="ids", payload={"ids": ["zz"]}, key=KEY, check=bad)
    (r,) = L.list_requests(store, status="rejected")
    assert r.id in str(e.value) and r.last_error.startswith("ids not in the data set")
    assert _trail(store, r.id) == [(None, "received"), ("received", "rejected")]
    assert L.claim(store, "m", "night", lease_s=60) == []
    store.close()


def test_two_claimers_at_once_never_share_a_request(store_url: str) -> None:
    setup = open_store(store_url)
    want = {_submit(setup, ids=(f"i{n}",)).id for n in range(30)}
    setup.close()
    stores = [open_store(store_url) for _ in range(4)]
    start = threading.Barrier(len(stores))
    got: dict[int, list[str]] = {}

    def claimer(n: int) -> None:
        start.wait()
        got[n] = [r.id for r in L.claim(stores[n], "m", f"c{n}", lease_s=60)]

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    taken = [i for ids in got.values() for i in ids]
    assert len(got) == len(stores) and sorted(taken) == sorted(want)  # each request exactly once
    for n, ids in got.items():  # and the store says who holds it
        assert all(L.get(stores[0], i).claimed_by == f"c{n}" for i in ids)
    for s in stores:
        s.close()


def test_an_expired_claim_goes_back_to_queued_and_its_run_loses_it(store_url: str) -> None:
    store = open_store(store_url)
    r = _submit(store)
    L.claim(store, "m", "dead-run", lease_s=0.2)
    assert L.claim(store, "m", "next-run", lease_s=60) == []  # lease still running
    time.sleep(0.4)
    (got,) = L.claim(store, "m", "next-run", lease_s=60)
    assert got.id == r.id and got.claimed_by == "next-run" and got.attempts == 0
    assert "claim of dead-run ended without a verdict" in L.audit(store, r.id)[-2].reason
    with pytest.raises(StoreError, match="no longer holds"):
        L.mark_applied(store, [r.id], "dead-run", version="2", certificate="x")
    L.release(store, [r.id], "next-run", reason="stopped before a verdict")
    assert L.get(store, r.id).status == "queued"
    store.close()


def test_a_claim_of_a_run_known_dead_is_taken_over_before_its_lease_ends(store_url: str) -> None:
    store = open_store(store_url)
    r = _submit(store)
    L.claim(store, "m", "nightly host:/w pid 1", lease_s=3600)
    assert (
        L.claim(store, "m", "nightly host:/other pid 2", lease_s=60, dead_prefix="nightly host:/other ") == []
    )
    (got,) = L.claim(store, "m", "nightly host:/w pid 3", lease_s=60, dead_prefix="nightly host:/w ")
    assert got.id == r.id and got.claimed_by == "nightly host:/w pid 3"
    store.close()


def test_the_schema_is_migrated_once_whoever_opens_it_first(store_url: str) -> None:
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            open_store(store_url).close()
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=opener) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    store = open_store(store_url)
    with store.engine.connect() as c:
        assert c.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == ["0001"]
    store.close()


def test_an_unreachable_store_is_one_line_without_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from lethe.testing.seaweedfs import free_port

    monkeypatch.setenv("PGPASSWORD", "s3cr3t-pw")
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "3")
    with pytest.raises(StoreError, match="cannot open the request store") as e:
        open_store(f"postgresql+psycopg://lethe@127.0.0.1:{free_port()}/x")
    assert "s3cr3t-pw" not in str(e.value) and "\n" not in str(e.value)


def test_a_database_url_with_a_password_is_refused() -> None:
    from lethe.config import build_config
    from lethe.errors import ConfigError

    with pytest.raises(ConfigError, match="must not embed credentials") as e:
        build_config(None, None, {"requests": {"db_url": "postgresql+psycopg://u:hunter2@db/x"}})
    assert "hunter2" not in e.value.line()
    with pytest.raises(ConfigError, match="expected sqlite"):
        build_config(None, None, {"requests": {"db_url": "mysql://db/x"}})
    assert build_config(None, None, {"requests": {"db_url": "postgresql://lethe@db/x"}}).requests.db_url


def test_naive_times_are_refused() -> None:
    from datetime import datetime

    from lethe.store.schema import UTCDateTime

    with pytest.raises(ValueError, match="naive"):
        UTCDateTime().process_bind_param(datetime(2027, 1, 1), None)
    assert os.environ.get("PGPASSWORD") != "s3cr3t-pw"
