"""Certificates in the registry: the previous version's certificate a new one chains to, and
verifying a chain from a file or a model version back to the first version (lethe.signing)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lethe.errors import LetheError
from lethe.signing import CertificateError, Link, verify_chain
from lethe.tracking.mlflow_tracker import Tracker

log = logging.getLogger(__name__)

CERT_TAG = "lethe.certificate_uri"


def version_certificate(tracker: Tracker, model_uri: str) -> tuple[bytes, str] | None:
    """(bytes, runs:/ URI) of a model version's certificate; None when the version has none
    (a model registered by someone else: the root of its chain)."""
    mv = tracker.resolve_model_version(model_uri)
    uri = (mv.tags or {}).get(CERT_TAG)
    if not uri:
        return None
    return tracker.read_run_artifact(uri), uri


def previous_link(tracker: Tracker, source_uri: str | None) -> dict[str, Any] | None:
    """What a new certificate records of its source model's certificate: model, URI, sha256."""
    if not source_uri:
        return None  # pretrained by lethe in this run: the chain starts here
    if not source_uri.startswith("models:/"):
        # a save_pretrained folder: a model from outside the registry, the root of its chain
        return {"model": source_uri, "certificate_uri": None, "sha256": None}
    try:
        found = version_certificate(tracker, source_uri)
    except LetheError as e:
        # The new certificate says so instead of pretending to be a chain's first link.
        log.warning("certificate: the source model's certificate cannot be read (%s)", e.line())
        return {"model": source_uri, "certificate_uri": None, "sha256": None, "error": e.line()}
    if found is None:
        return {"model": source_uri, "certificate_uri": None, "sha256": None}
    data, uri = found
    return {"model": source_uri, "certificate_uri": uri, "sha256": hashlib.sha256(data).hexdigest()}


def verify(target: str, tracker: Tracker, trusted: set[str]) -> list[Link]:
    """Verify the certificate at `target` (a file, or models:/NAME/VERSION) and its whole chain."""
    if target.startswith("models:/"):
        found = version_certificate(tracker, target)
        if found is None:
            raise CertificateError("model version has no lethe certificate", where=target)
        data, where = found
    else:
        try:
            data, where = Path(target).read_bytes(), target
        except OSError as e:
            raise CertificateError(
                "cannot read certificate", where=target, seen=e.strerror or str(e)
            ) from None

    def fetch(prev: Mapping[str, Any]) -> tuple[bytes, str]:
        uri = prev.get("certificate_uri")
        if not uri:
            raise CertificateError("previous certificate has no location", where=str(prev.get("model")))
        return tracker.read_run_artifact(uri), f"{prev.get('model')} ({uri})"

    return verify_chain(data, where, trusted, fetch)
