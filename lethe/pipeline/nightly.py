"""`lethe nightly --model NAME`: apply every queued deletion request of a model to its champion.

Under the work dir's lock: claim the model's queued (and failed, not yet out of attempts) requests;
nothing claimed -> say so, no version. Otherwise the forget set is the union of the claimed requests
and every request applied to this model before (cumulative: the retain set and the oracle exclude
everything ever forgotten), the source is models:/NAME@<alias> (first night: pretrained, or
--source-model), and `lethe run` does the rest. Promoted -> the requests are applied, with the version
and the certificate's digest; gates failed or the run failed -> failed (tried again next night until
requests.max_attempts); interrupted -> queued again. A run killed outright loses its claim to the next
nightly on the same work dir (it holds the lock, so the old run is dead) or when the lease runs out.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lethe import storage
from lethe.config import RunConfig, is_registry_source
from lethe.errors import LetheError
from lethe.pipeline.keys import file_digest
from lethe.pipeline.periodic import every
from lethe.pipeline.request_groups import delete_night_ids, write_night_ids
from lethe.pipeline.workdir_lock import hold
from lethe.store import lifecycle
from lethe.store.check import DataView
from lethe.store.db import Store, open_store
from lethe.store.schema import Request

log = logging.getLogger(__name__)

IDS_FILE = Path("requests") / "forget-ids.txt"


@dataclass(frozen=True)
class Night:
    """What one nightly run did (request uuids only: the ids live in the store)."""

    claimed: list[str]
    earlier: list[str]
    forget_count: int = 0
    report: Path | None = None
    version: str | None = None
    promoted: bool = False
    outcome: str = "nothing queued"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["report"] = str(self.report) if self.report else None
        return d

    def summary(self, model: str) -> str:
        """The line a person reads at the end of the night."""
        if not self.claimed:
            return f"nightly {model}: no queued requests; nothing to do, no new version"
        return (
            f"nightly {model}: {len(self.claimed)} requests claimed, {len(self.earlier)} applied earlier, "
            f"{self.forget_count} images forgotten in all; {self.outcome}"
        )


@dataclass(frozen=True)
class Claim:
    """Requests one run holds: who holds them, and the night's run configuration (None: nothing queued)."""

    model: str
    claimer: str
    claimed: list[str]
    earlier: list[str]
    forget_count: int
    config: RunConfig | None


def claimer_prefix(cfg: RunConfig) -> str:
    return f"nightly {socket.gethostname()}:{cfg.workdir_path} "


def _ref(r: Request, night: str) -> dict[str, str]:
    return {
        "request_id": r.id,
        "digest": r.digest,
        "received_at": r.received_at.isoformat(timespec="seconds"),
        "deadline": r.deadline.isoformat(timespec="seconds"),
        "night": night,
    }


def night_config(
    cfg: RunConfig, model: str, ids_file: Path, refs: list[dict[str, str]], champion: bool
) -> RunConfig:
    """The run configuration of one night: an id request for the cumulative forget set, from the champion."""
    dump = cfg.model_dump(mode="json")
    dump["request"] = {"kind": "ids", "ids_file": str(ids_file), "refs": refs}
    if champion:
        dump["source_model"] = f"models:/{model}@{cfg.tracking.alias}"
        dump["tracking"]["model_name"] = None
    elif not cfg.source_model or not is_registry_source(cfg.source_model):
        dump["tracking"]["model_name"] = model
    return RunConfig.model_validate(dump)


def _renewing(store: Store, ids: list[str], claimer: str, lease_s: float) -> AbstractContextManager[None]:
    """Keep the claim alive while the night runs (a lease only runs out when its run is gone)."""

    def renew() -> None:
        try:
            lifecycle.renew(store, ids, claimer, lease_s=lease_s)
        except Exception as e:  # noqa: BLE001 - the verdict step reports a lost claim; keep running
            log.warning("could not renew the claim on %d requests: %s", len(ids), e)

    return every(lease_s / 3, renew, "lethe-claim-renewal")


def _champion(cfg: RunConfig, model: str) -> bool:
    from lethe.tracking.mlflow_tracker import Tracker

    tracker = Tracker(cfg.tracking_uri, cfg.tracking.experiment, retry_s=cfg.tracking.retry_s)
    return tracker.alias_version(model, cfg.tracking.alias) is not None


def claim_night(cfg: RunConfig, store: Store, model: str, claimer: str, dead_prefix: str | None) -> Claim:
    """Claim the model's queued requests and build the night's configuration: the union of the claimed
    requests and every one applied before, as an ids file only this user can read (the caller deletes
    it when the night ends). A claim that cannot be turned into a night is given back (failed)."""
    claimed = lifecycle.claim(store, model, claimer, lease_s=cfg.requests.lease_s, dead_prefix=dead_prefix)
    earlier = lifecycle.applied(store, model)
    ids = [r.id for r in claimed]
    if not claimed:
        return Claim(model, claimer, [], [r.id for r in earlier], 0, None)
    log.warning("nightly %s: %d requests claimed, %d applied earlier", model, len(claimed), len(earlier))
    try:
        view = DataView(cfg)
        masks = {r.id: view.forget_mask(r.kind, lifecycle.payload_of(r)) for r in [*claimed, *earlier]}
        forget = view.ids_of(np.logical_or.reduce(list(masks.values())))
        ids_file = cfg.workdir_path / IDS_FILE
        # Grouped by request too, so the evaluation can measure each request's own images.
        write_night_ids(ids_file, forget, {rid: view.ids_of(m) for rid, m in masks.items()})
        refs = [_ref(r, "this") for r in claimed] + [_ref(r, "earlier") for r in earlier]
        night = night_config(cfg, model, ids_file, refs, champion=_champion(cfg, model))
    except LetheError as e:
        lifecycle.mark_failed(store, ids, claimer, reason=e.line(), max_attempts=cfg.requests.max_attempts)
        raise
    except BaseException:
        lifecycle.release(store, ids, claimer, reason="the nightly run was interrupted before a verdict")
        raise
    return Claim(model, claimer, ids, [r.id for r in earlier], len(forget), night)


def settle(
    store: Store,
    claim: Claim,
    *,
    error: str | None = None,
    interrupted: bool = False,
    report: Path | None = None,
) -> Night:
    """The verdict on a claim, from the run's outcome: promoted -> applied (with the version and the
    certificate's digest); gates failed or the run failed -> failed (queued again next night until
    requests.max_attempts); interrupted -> queued again, no attempt counted. Deletes the ids file."""
    from lethe.pipeline.layout import layout
    from lethe.pipeline.state import load_state

    assert claim.config is not None
    cfg = claim.config
    ids, by = claim.claimed, claim.claimer
    max_attempts = cfg.requests.max_attempts
    delete_night_ids(cfg.workdir_path / IDS_FILE)
    night = Night(claim.claimed, claim.earlier, claim.forget_count, report)
    if interrupted:
        lifecycle.release(store, ids, by, reason="the nightly run was interrupted before a verdict")
        return replace(night, outcome="interrupted; the requests are queued again")
    if error is not None:
        lifecycle.mark_failed(store, ids, by, reason=error, max_attempts=max_attempts)
        return replace(night, outcome="failed: " + error)
    lay = layout(cfg)
    promote = load_state(lay).promote
    version = str(promote.get("model_version") or "")
    if promote.get("promoted"):
        cert = lay.certificate_dir / "certificate.json"
        cert_ref = f"{promote.get('certificate_uri') or cert} sha256:{file_digest(cert)}"
        lifecycle.mark_applied(store, ids, by, version=version, certificate=cert_ref)
        outcome = f"applied in version {version} (@{cfg.tracking.alias})"
    else:
        gates = (promote.get("gates") or {}).get("summary", "gates failed")
        reason = f"version {version} not promoted: {gates}" if version else f"not registered: {gates}"
        lifecycle.mark_failed(store, ids, by, reason=reason, max_attempts=max_attempts)
        outcome = "failed: " + reason
    return replace(night, version=version, promoted=bool(promote.get("promoted")), outcome=outcome)


def run_nightly(cfg: RunConfig, model: str | None = None) -> Night:
    """`lethe nightly`: claim, run every step in this process (`lethe run`), settle."""
    from lethe.pipeline import run_all

    model = model or cfg.model_name
    store = open_store(cfg.requests_db_url)
    try:
        with hold(cfg):
            # This run holds the work dir's lock for the whole night, so a claim another nightly on
            # the same work dir left behind belongs to a dead run and is taken over.
            prefix = claimer_prefix(cfg)
            claim = claim_night(cfg, store, model, f"{prefix}pid {os.getpid()}", dead_prefix=prefix)
            if claim.config is None:
                return Night([], claim.earlier)
            try:
                with _renewing(store, claim.claimed, claim.claimer, cfg.requests.lease_s):
                    report = run_all(claim.config)
            except LetheError as e:
                settle(store, claim, error=e.line())
                raise
            except BaseException:
                settle(store, claim, interrupted=True)
                raise
            return settle(store, claim, report=report)
    finally:
        store.close()


# -- the Kubeflow pipeline's nightly: claimed in its first task, settled in its exit handler ---------

NIGHT_FILE = Path("requests") / "night.json"


def _night_path(cfg: RunConfig) -> Path:
    return cfg.workdir_path / NIGHT_FILE


def _save(cfg: RunConfig, record: dict[str, Any]) -> None:
    storage.write_json(str(_night_path(cfg)), record)


def _load(cfg: RunConfig) -> dict[str, Any] | None:
    path = _night_path(cfg)
    return json.loads(path.read_text()) if path.is_file() else None


def _claim_of(record: dict[str, Any]) -> Claim:
    config = RunConfig.model_validate_json(record["config"]) if record.get("config") else None
    return Claim(
        record["model"],
        record["claimer"],
        record["claimed"],
        record["earlier"],
        record["forget_count"],
        config,
    )


def pipeline_claim(cfg: RunConfig, model: str, run_ref: str) -> Claim:
    """The pipeline's first task: claim under the work dir's lock and record the claim (request
    uuids, the night's configuration; no ids) in <workdir>/requests/night.json for the later tasks.

    No dead-run takeover here: on a cluster each task holds the lock only while it runs, so a claim
    on this work dir may belong to a pipeline run that is alive between two tasks. A killed run's
    claim comes back when its lease (requests.lease_s, renewed by every task) runs out."""
    claimer = f"pipeline {run_ref or socket.gethostname() + ':' + str(os.getpid())} {cfg.workdir_path}"
    store = open_store(cfg.requests_db_url)
    try:
        with hold(cfg):
            claim = claim_night(cfg, store, model, claimer, dead_prefix=None)
            record = {**asdict(claim), "config": claim.config.model_dump_json() if claim.config else None}
            _save(cfg, {**record, "night": None})
    finally:
        store.close()
    return claim


def renew_pipeline_claim(cfg: RunConfig) -> None:
    """Every task of a nightly pipeline keeps its run's claim alive (a no-op outside one)."""
    record = _load(cfg)
    if not record or record.get("night") is not None or not record.get("claimed"):
        return
    store = open_store(cfg.requests_db_url)
    try:
        lifecycle.renew(store, record["claimed"], record["claimer"], lease_s=cfg.requests.lease_s)
    finally:
        store.close()


def pending_claim(cfg: RunConfig) -> Claim | None:
    """The claim of this work dir's nightly pipeline run that has no verdict yet, if any."""
    record = _load(cfg)
    return _claim_of(record) if record and record.get("night") is None else None


def pipeline_settle(cfg: RunConfig, succeeded: bool, error: str | None) -> Night | None:
    """The exit handler's verdict on the run's claim; None when no claim is pending. A failed body
    with a recorded failure counts an attempt; one that left no record (a task killed) only gives the
    requests back. The outcome (uuids, version, the line) stays in night.json for `lethe pipeline run`."""
    record = _load(cfg)
    if not record or record.get("night") is not None:
        return None
    claim = _claim_of(record)
    if claim.config is None:
        night = Night([], claim.earlier)
    else:
        store = open_store(cfg.requests_db_url)
        try:
            report = claim.config.workdir_path / "report" / "report.json"
            if succeeded:
                night = settle(store, claim, report=report)
            elif error:
                night = settle(store, claim, error=error)
            else:
                night = settle(store, claim, interrupted=True)
        finally:
            store.close()
    _save(cfg, {**record, "night": night.to_dict()})
    log.warning("%s", night.summary(claim.model))
    return night


def forget_last_night(cfg: RunConfig) -> None:
    """Drop a settled night record before a new run (a pending one stays: its claim is still held)."""
    record = _load(cfg)
    if record and record.get("night") is not None:
        _night_path(cfg).unlink(missing_ok=True)


def last_pipeline_night(cfg: RunConfig) -> Night | None:
    record = _load(cfg)
    if not record or not record.get("night"):
        return None
    d = dict(record["night"])
    d["report"] = Path(d["report"]) if d.get("report") else None
    return Night(**d)
