"""Signed certificates and their chain along a model's lineage (Ed25519, `cryptography`).

The signing key is 32 secret bytes (the Ed25519 seed): `LETHE_SIGNING_KEY` (64 hex characters) when
set, else a key file (privacy.signing_key_file, default <cache_dir>/keys/signing.key, created with mode
0600 when missing). A certificate's `signature` holds the algorithm, the public key (base64) and its
id (sha256 of the public key, 16 hex) and the signature of the certificate's canonical bytes without
the `signature` entry. Verification trusts only the key ids it is given (the deployment's own key by
default), so a certificate re-signed with another key fails.

A certificate's `previous_certificate` names its source model version's certificate and the sha256 of
its exact bytes: editing any certificate of a chain breaks its own signature (the bytes must be the
canonical ones), or the digest its successor recorded.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lethe.digests import secret_from_file
from lethe.errors import ConfigError, LetheError

log = logging.getLogger(__name__)

ENV_VAR = "LETHE_SIGNING_KEY"
KEY_FILE = Path("keys") / "signing.key"
ALGORITHM = "ed25519"


class CertificateError(LetheError):
    """A certificate or its chain does not verify."""


@dataclass(frozen=True)
class SigningKey:
    private: Ed25519PrivateKey = field(repr=False)
    source: str  # "env LETHE_SIGNING_KEY" or the key file's path

    @property
    def public_raw(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        return self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        return public_key_id(self.public_raw)


def public_key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def _seed_key_id(seed: bytes) -> str:
    """The id a new key file's key is known by in certificates: that of its public key."""
    return SigningKey(Ed25519PrivateKey.from_private_bytes(seed), "").key_id


def default_key_file(cache_dir: str | os.PathLike[str]) -> Path:
    return Path(cache_dir) / KEY_FILE


def load_signing_key(key_file: str | os.PathLike[str], create: bool = True) -> SigningKey | None:
    """The deployment's signing key: LETHE_SIGNING_KEY, else the key file (created when `create`;
    None when it is absent and not to be created)."""
    env = os.environ.get(ENV_VAR)
    if env is not None:
        try:
            seed = bytes.fromhex(env.strip())
        except ValueError:
            seed = b""
        if len(seed) != 32:
            raise ConfigError(f"{ENV_VAR} is not a signing key", expected="64 hex characters (32 bytes)")
        return SigningKey(Ed25519PrivateKey.from_private_bytes(seed), f"env {ENV_VAR}")
    path = Path(key_file).expanduser()
    if not create and not os.path.lexists(path):
        return None
    seed = secret_from_file(path, "signing key", ENV_VAR, public_id=_seed_key_id)
    if len(seed) != 32:
        raise ConfigError(
            "the signing key file is not an Ed25519 key",
            where=str(path),
            expected="32 bytes",
            seen=f"{len(seed)} bytes",
        )
    return SigningKey(Ed25519PrivateKey.from_private_bytes(seed), str(path))


def canonical_bytes(doc: Mapping[str, Any]) -> bytes:
    """The one serialisation of a certificate: what is written, signed and digested."""
    return (json.dumps(doc, indent=2, sort_keys=True, allow_nan=False, default=str) + "\n").encode()


def sign(cert: Mapping[str, Any], key: SigningKey) -> dict[str, Any]:
    unsigned = {k: v for k, v in copy.deepcopy(dict(cert)).items() if k != "signature"}
    value = key.private.sign(canonical_bytes(unsigned))
    return {
        **unsigned,
        "signature": {
            "algorithm": ALGORITHM,
            "key_id": key.key_id,
            "public_key": base64.b64encode(key.public_raw).decode(),
            "value": base64.b64encode(value).decode(),
        },
    }


def check(data: bytes, where: str, trusted: set[str]) -> dict[str, Any]:
    """Parse and verify one certificate's exact bytes; CertificateError names what is wrong."""
    try:
        cert = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CertificateError("certificate is not valid JSON", where=where, seen=str(e)) from None
    if not isinstance(cert, dict) or canonical_bytes(cert) != data:
        raise CertificateError(
            "certificate bytes were changed", where=where, expected="the bytes lethe wrote (canonical JSON)"
        )
    sig = cert.get("signature")
    if not isinstance(sig, dict) or sig.get("algorithm") != ALGORITHM:
        raise CertificateError("certificate is not signed", where=where, expected=f"an {ALGORITHM} signature")
    try:
        public_raw = base64.b64decode(sig["public_key"], validate=True)
        value = base64.b64decode(sig["value"], validate=True)
        public = Ed25519PublicKey.from_public_bytes(public_raw)
    except (KeyError, ValueError, TypeError):
        raise CertificateError("certificate signature is malformed", where=where) from None
    kid = public_key_id(public_raw)
    if kid != sig.get("key_id") or kid not in trusted:
        raise CertificateError(
            "certificate is signed by an untrusted key",
            where=where,
            expected="key id " + " or ".join(sorted(trusted)),
            seen=kid,
        )
    try:
        public.verify(value, canonical_bytes({k: v for k, v in cert.items() if k != "signature"}))
    except InvalidSignature:
        raise CertificateError("certificate signature does not match its content", where=where) from None
    return cert


@dataclass(frozen=True)
class Link:
    where: str
    status: str
    model: str | None
    sha256: str


def verify_chain(
    data: bytes, where: str, trusted: set[str], fetch: Callable[[Mapping[str, Any]], tuple[bytes, str]]
) -> list[Link]:
    """Verify a certificate and every predecessor back to the first version. `fetch(previous)` returns
    the predecessor's bytes and where they came from (its model version's certificate)."""
    links: list[Link] = []
    seen: set[str] = set()
    while True:
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            raise CertificateError("certificate chain has a cycle", where=where)
        seen.add(digest)
        cert = check(data, where, trusted)
        links.append(
            Link(where, str(cert.get("status")), (cert.get("result_model") or {}).get("uri"), digest)
        )
        prev = cert.get("previous_certificate")
        if not prev or not prev.get("sha256"):
            return links
        data, at = fetch(prev)
        if hashlib.sha256(data).hexdigest() != prev["sha256"]:
            raise CertificateError(
                "previous certificate differs from the one its successor recorded",
                where=at,
                expected=f"sha256 {prev['sha256'][:16]}... (recorded in {where})",
                seen=hashlib.sha256(data).hexdigest()[:16] + "...",
            )
        where = at
