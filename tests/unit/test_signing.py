"""Signed certificates and their hash chain: a real chain verifies, any one-byte edit fails."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from lethe.signing import CertificateError, canonical_bytes, load_signing_key, sign, verify_chain


@pytest.fixture()
def key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("LETHE_SIGNING_KEY", raising=False)
    return load_signing_key(tmp_path / "keys" / "signing.key")


def _chain(key, n: int = 3) -> dict[str, bytes]:
    """n signed certificates, version i chaining to version i-1: uri -> bytes."""
    store: dict[str, bytes] = {}
    prev = None
    for v in range(1, n + 1):
        cert = {
            "kind": "lethe.unlearning-certificate",
            "status": "complete",
            "result_model": {"uri": f"models:/m/{v}"},
        }
        cert["previous_certificate"] = prev
        data = canonical_bytes(sign(cert, key))
        store[f"runs:/r{v}/certificate/certificate.json"] = data
        prev = {
            "model": f"models:/m/{v}",
            "certificate_uri": f"runs:/r{v}/certificate/certificate.json",
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    return store


def _verify(store: dict[str, bytes], trusted: set[str]):
    head = list(store)[-1]
    return verify_chain(
        store[head], head, trusted, lambda prev: (store[prev["certificate_uri"]], prev["certificate_uri"])
    )


def test_a_real_chain_verifies_back_to_the_first_version(key) -> None:
    links = _verify(_chain(key), {key.key_id})
    assert [link.model for link in links] == ["models:/m/3", "models:/m/2", "models:/m/1"]


@pytest.mark.parametrize("which", [0, 1, 2])
def test_a_one_byte_change_to_any_certificate_fails(key, which: int) -> None:
    store = _chain(key)
    uri = list(store)[which]
    data = bytearray(store[uri])
    # Every byte position matters, content and layout alike: try one in the middle and the last one.
    for pos in (len(data) // 2, len(data) - 1):
        edited = bytearray(data)
        edited[pos] = (edited[pos] + 1) % 256
        store[uri] = bytes(edited)
        with pytest.raises(CertificateError):
            _verify(store, {key.key_id})
    store[uri] = bytes(data)
    assert len(_verify(store, {key.key_id})) == 3


def test_a_content_edit_re_serialised_fails_on_the_signature(key) -> None:
    import json

    store = _chain(key)
    uri = list(store)[-1]
    cert = json.loads(store[uri])
    cert["status"] = "complete-and-better"
    store[uri] = canonical_bytes(cert)
    with pytest.raises(CertificateError, match="signature does not match"):
        _verify(store, {key.key_id})


def test_a_chain_re_signed_with_another_key_is_untrusted(key, tmp_path: Path) -> None:
    other = load_signing_key(tmp_path / "other.key")
    with pytest.raises(CertificateError, match="untrusted key"):
        _verify(_chain(other), {key.key_id})


def test_the_key_file_is_created_private_and_reused(key, tmp_path: Path) -> None:
    path = tmp_path / "keys" / "signing.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and len(path.read_bytes()) == 32
    assert load_signing_key(path).key_id == key.key_id
    assert load_signing_key(tmp_path / "absent.key", create=False) is None


def test_the_key_from_the_environment_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LETHE_SIGNING_KEY", "ab" * 32)
    a = load_signing_key(tmp_path / "never-created.key")
    assert a.source == "env LETHE_SIGNING_KEY" and not (tmp_path / "never-created.key").exists()
    monkeypatch.setenv("LETHE_SIGNING_KEY", "not-hex")
    from lethe.errors import ConfigError

    with pytest.raises(ConfigError, match="64 hex characters"):
        load_signing_key(tmp_path / "x.key")


def test_a_new_key_file_is_announced_by_the_id_certificates_name_it_by(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The log line that says a key was created gives the id `lethe certificate verify` prints and
    certificates carry (its public key's), not some other fingerprint of the secret."""
    import logging

    monkeypatch.delenv("LETHE_SIGNING_KEY", raising=False)
    with caplog.at_level(logging.WARNING, logger="lethe"):
        key = load_signing_key(tmp_path / "new" / "signing.key")
    assert (
        f"created a new signing key at {tmp_path / 'new' / 'signing.key'} (key id {key.key_id})"
        in caplog.text
    )
    assert sign({"kind": "x"}, key)["signature"]["key_id"] == key.key_id
