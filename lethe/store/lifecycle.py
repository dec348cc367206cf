"""A deletion request's lifecycle: every status change goes through `_move`, which checks it against
`TRANSITIONS` and writes its audit row in the same transaction.

    received -> queued -> in_progress -> applied
       |          |            |-> failed -> in_progress (next night) ... -> needs_attention
       |          |            '-> queued (the run crashed or its claim expired)
       '-> rejected  '-> cancelled (also from failed / needs_attention)
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lethe.digests import DigestKey, key_id, keyed_digest
from lethe.errors import LetheError
from lethe.store.db import Store, StoreError
from lethe.store.schema import KINDS, AuditRow, Request

TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({"received"}),
    "received": frozenset({"queued", "rejected", "cancelled"}),
    "queued": frozenset({"in_progress", "cancelled"}),
    "in_progress": frozenset({"applied", "failed", "needs_attention", "queued"}),
    "failed": frozenset({"in_progress", "cancelled"}),
    "needs_attention": frozenset({"queued", "cancelled"}),
    "applied": frozenset(),
    "rejected": frozenset(),
    "cancelled": frozenset(),
}
# A failed request is tried again by the next nightly run, until its attempts run out.
CLAIMABLE = ("queued", "failed")
FINAL = ("applied", "rejected", "cancelled")


class RequestRejected(StoreError):
    """A submitted request failed its check: it is recorded as rejected, with the reason."""


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def default_actor() -> str:
    """Who an audit row names: LETHE_ACTOR, else user@host."""
    return os.environ.get("LETHE_ACTOR") or f"{getpass.getuser()}@{socket.gethostname()}"


def payload_of(req: Request) -> dict[str, Any]:
    return json.loads(req.payload)


def _move(session: Session, req: Request, to: str, actor: str, reason: str, at: datetime) -> None:
    if req.status in FINAL:
        raise StoreError(f"request {req.id} is already {req.status}", expected="a request that is not final")
    if to not in TRANSITIONS[req.status]:
        raise StoreError(
            f"request {req.id} cannot become {to}",
            expected=" or ".join(sorted(TRANSITIONS[req.status])) or "no further change (it is final)",
            seen=req.status,
        )
    session.add(
        AuditRow(request_id=req.id, at=at, actor=actor, from_status=req.status, to_status=to, reason=reason)
    )
    req.status = to


def _canonical(kind: str, payload: dict[str, Any]) -> bytes:
    return json.dumps({"kind": kind, **payload}, sort_keys=True, separators=(",", ":")).encode()


def submit(
    store: Store,
    *,
    model_name: str,
    kind: str,
    payload: dict[str, Any],
    key: DigestKey,
    check: Callable[[], None],
    reference: str | None = None,
    deadline: datetime | None = None,
    deadline_days: int = 30,
    actor: str | None = None,
    now: datetime | None = None,
) -> Request:
    """Record a request as received, then check it (`check` raises a LetheError naming the reason):
    queued, or rejected with the reason (raised as RequestRejected once the record is committed)."""
    if kind not in KINDS:
        raise StoreError("unknown request kind", expected=", ".join(KINDS), seen=kind)
    at = now or now_utc()
    actor = actor or default_actor()
    items = payload.get("ids") or payload.get("classes") or [payload.get("feature")]
    req = Request(
        id=str(uuid.uuid4()),
        model_name=model_name,
        kind=kind,
        payload=json.dumps(payload, sort_keys=True),
        n_items=len(items),
        digest=keyed_digest(key, _canonical(kind, payload)),
        key_id=key_id(key),
        reference=reference,
        received_at=at,
        deadline=deadline or at + timedelta(days=deadline_days),
        status="received",
        attempts=0,
    )
    if req.deadline <= at:
        raise StoreError(
            "deadline is not after the request's receipt", where="--deadline", seen=req.deadline.isoformat()
        )
    with store.transaction() as s:
        s.add(req)
        s.flush()  # the audit row's foreign key needs the request row first
        s.add(
            AuditRow(
                request_id=req.id,
                at=at,
                actor=actor,
                from_status=None,
                to_status="received",
                reason="submitted",
            )
        )
    try:
        check()
    except LetheError as e:
        with store.transaction() as s:
            r = s.get_one(Request, req.id)
            r.last_error = e.line()
            _move(s, r, "rejected", actor, e.line(), now_utc())
        raise RequestRejected(f"request {req.id} rejected: {e.line()}") from None
    with store.transaction() as s:
        r = s.get_one(Request, req.id)
        _move(s, r, "queued", actor, "checked against the data set", now_utc())
    return get(store, req.id)


def get(store: Store, rid: str) -> Request:
    """A request by its uuid, or by an unambiguous prefix of at least 8 characters."""
    with store.sessions() as s:
        r = s.get(Request, rid)
        if r is not None:
            return r
        if len(rid) >= 8:
            rows = s.scalars(select(Request).where(Request.id.startswith(rid, autoescape=True))).all()
            if len(rows) == 1:
                return rows[0]
            if rows:
                raise StoreError(
                    "ambiguous request id prefix", expected="more characters of the uuid", seen=rid
                )
    raise StoreError("no such request", expected="a request uuid (lethe requests list)", seen=rid)


def list_requests(
    store: Store,
    *,
    status: str | None = None,
    model_name: str | None = None,
    overdue: bool = False,
    now: datetime | None = None,
) -> list[Request]:
    q = select(Request).order_by(Request.received_at, Request.id)
    if status:
        q = q.where(Request.status == status)
    if model_name:
        q = q.where(Request.model_name == model_name)
    if overdue:
        q = q.where(Request.deadline < (now or now_utc()), Request.status.not_in(FINAL))
    with store.sessions() as s:
        return list(s.scalars(q).all())


def audit(store: Store, rid: str) -> list[AuditRow]:
    req = get(store, rid)
    with store.sessions() as s:
        return list(
            s.scalars(select(AuditRow).where(AuditRow.request_id == req.id).order_by(AuditRow.id)).all()
        )


def cancel(store: Store, rid: str, *, actor: str | None = None, reason: str = "cancelled") -> Request:
    req = get(store, rid)
    with store.transaction() as s:
        r = s.get_one(Request, req.id, with_for_update=True)
        if r.status == "in_progress":
            raise StoreError(
                f"request {r.id} is being applied by {r.claimed_by}",
                expected="a request that no run holds (cancel it after the run ends)",
                seen="in_progress",
            )
        _move(s, r, "cancelled", actor or default_actor(), reason, now_utc())
    return get(store, req.id)


def claim(
    store: Store,
    model_name: str,
    claimer: str,
    *,
    lease_s: float,
    dead_prefix: str | None = None,
    now: datetime | None = None,
) -> list[Request]:
    """Take every claimable request of a model, atomically: two claimers at once never share one
    (PostgreSQL: FOR UPDATE SKIP LOCKED; SQLite: the write lock BEGIN IMMEDIATE takes). A claim whose
    lease ran out, or whose claimer starts with `dead_prefix` (a run the caller knows is gone: it holds
    that run's work dir lock), goes back to queued first, so this run takes it."""
    at = now or now_utc()
    with store.transaction() as s:
        gone = Request.lease_until < at
        if dead_prefix:
            gone = gone | Request.claimed_by.startswith(dead_prefix, autoescape=True)
        stale = s.scalars(
            select(Request)
            .where(Request.model_name == model_name, Request.status == "in_progress", gone)
            .with_for_update(skip_locked=True)
        ).all()
        for r in stale:
            why = f"claim of {r.claimed_by} ended without a verdict (its run is gone)"
            _move(s, r, "queued", claimer, why, at)
            r.claimed_by, r.lease_until = None, None
        rows = s.scalars(
            select(Request)
            .where(Request.model_name == model_name, Request.status.in_(CLAIMABLE))
            .order_by(Request.received_at, Request.id)
            .with_for_update(skip_locked=True)
        ).all()
        for r in rows:
            _move(s, r, "in_progress", claimer, "claimed by a nightly run", at)
            r.claimed_by, r.lease_until = claimer, at + timedelta(seconds=lease_s)
        return list(rows)


def _held(s: Session, ids: Sequence[str], claimer: str) -> list[Request]:
    rows = s.scalars(select(Request).where(Request.id.in_(list(ids))).with_for_update()).all()
    lost = [r.id for r in rows if r.status != "in_progress" or r.claimed_by != claimer]
    if lost or len(rows) != len(set(ids)):
        raise StoreError(
            "this run no longer holds its requests",
            expected=f"requests claimed by {claimer}",
            seen=f"{len(lost) + len(set(ids)) - len(rows)} taken over (lease expired?)",
        )
    return list(rows)


def renew(store: Store, ids: Sequence[str], claimer: str, *, lease_s: float) -> None:
    with store.transaction() as s:
        for r in _held(s, ids, claimer):
            r.lease_until = now_utc() + timedelta(seconds=lease_s)


def mark_applied(store: Store, ids: Sequence[str], claimer: str, *, version: str, certificate: str) -> None:
    at = now_utc()
    with store.transaction() as s:
        for r in _held(s, ids, claimer):
            _move(s, r, "applied", claimer, f"applied in version {version}", at)
            r.attempts += 1
            r.applied_version, r.certificate, r.applied_at = version, certificate, at
            r.claimed_by, r.lease_until, r.last_error = None, None, None


def mark_failed(store: Store, ids: Sequence[str], claimer: str, *, reason: str, max_attempts: int) -> None:
    at = now_utc()
    with store.transaction() as s:
        for r in _held(s, ids, claimer):
            r.attempts += 1
            to = "needs_attention" if r.attempts >= max_attempts else "failed"
            _move(s, r, to, claimer, f"attempt {r.attempts} of {max_attempts}: {reason}", at)
            r.last_error, r.claimed_by, r.lease_until = reason, None, None


def release(store: Store, ids: Sequence[str], claimer: str, *, reason: str) -> None:
    """Give requests back without a verdict (the run stopped before it could judge them)."""
    at = now_utc()
    with store.transaction() as s:
        for r in _held(s, ids, claimer):
            _move(s, r, "queued", claimer, reason, at)
            r.claimed_by, r.lease_until = None, None


def applied(store: Store, model_name: str) -> list[Request]:
    """Every request already applied to this model's lineage (the cumulative forget set)."""
    return list_requests(store, status="applied", model_name=model_name)
