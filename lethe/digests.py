"""Keyed digests of ids and forget-set content: HMAC-SHA256 under a deployment's secret key.

An unsalted SHA-256 of a request's ids is no secret when the data set is public: hashing every
candidate id finds a one-id request in about a second. Every digest that covers ids or forget-set
content (the request digest, the shards' content digests) is therefore an HMAC under a secret key:

- `LETHE_DIGEST_KEY` (any non-empty string) when it is set, else
- a key file, by default `<cache_dir>/keys/digest.key` (`privacy.digest_key_file` in the config),
  created on first use with 32 random bytes and mode 0600, refused when group or others may read it.

The key never reaches a log, an error, MLflow or a manifest; `key_id` names it publicly (which key
made a digest) without revealing it. Plain Python: no Ray, no MLflow.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from lethe.errors import ConfigError

log = logging.getLogger("lethe.digests")

ALGORITHM = "hmac-sha256"
ENV_VAR = "LETHE_DIGEST_KEY"
KEY_FILE = Path("keys") / "digest.key"
KEY_BYTES = 32
KEY_MODE = 0o600
_KEY_ID_PREFIX = b"lethe-digest-key-id"
# A concurrent creator may still be writing: how long a loser of the creation race waits for it.
_RACE_WAIT_S = 2.0


@dataclass(frozen=True)
class DigestKey:
    """A secret digest key. repr and str show the key id only."""

    secret: bytes = field(repr=False)
    source: str  # "env LETHE_DIGEST_KEY" or the key file's path: where it came from, not what it is

    @property
    def key_id(self) -> str:
        return key_id(self.secret)


def stream_sha256(fh: BinaryIO) -> tuple[int, str]:
    """(size in bytes, plain sha256 hex) of a binary stream, read in 1 MiB chunks (files may be large)."""
    h, size = hashlib.sha256(), 0
    while chunk := fh.read(1 << 20):
        h.update(chunk)
        size += len(chunk)
    return size, h.hexdigest()


def key_id(key: bytes | DigestKey) -> str:
    """Public name of a key: the first 16 hex characters of sha256(b"lethe-digest-key-id" + key)."""
    return hashlib.sha256(_KEY_ID_PREFIX + _secret(key)).hexdigest()[:16]


def keyed_digest(key: bytes | DigestKey, data: bytes) -> str:
    """HMAC-SHA256(key, data) as 64 hex characters."""
    return hmac.new(_secret(key), data, hashlib.sha256).hexdigest()


def keyed_hasher(key: bytes | DigestKey) -> hmac.HMAC:
    """An HMAC-SHA256 object to `update` piecewise (the same result as `keyed_digest` on the whole)."""
    return hmac.new(_secret(key), digestmod=hashlib.sha256)


def _secret(key: bytes | DigestKey) -> bytes:
    secret = key.secret if isinstance(key, DigestKey) else key
    if not isinstance(secret, bytes) or not secret:
        raise TypeError("a digest key is non-empty bytes or a DigestKey")
    return secret


def default_key_file(cache_dir: str | os.PathLike[str]) -> Path:
    """`<cache_dir>/keys/digest.key`."""
    return Path(cache_dir) / KEY_FILE


def load_key(key_file: str | os.PathLike[str]) -> DigestKey:
    """The deployment's digest key: `LETHE_DIGEST_KEY` when set, else `key_file` (created if absent)."""
    env = os.environ.get(ENV_VAR)
    if env is not None:
        if not env:
            raise ConfigError(
                f"{ENV_VAR} is set but empty",
                expected=f"a non-empty secret, or {ENV_VAR} unset to use the key file {key_file}",
            )
        key = DigestKey(env.encode("utf-8"), f"env {ENV_VAR}")
    else:
        path = Path(key_file).expanduser()
        secret = secret_from_file(path, "digest key", ENV_VAR)
        key = DigestKey(secret, str(path))
    log.info("digests keyed (%s) by %s, key id %s", ALGORITHM, key.source, key.key_id)
    return key


def secret_from_file(
    path: Path, name: str, env_var: str, public_id: Callable[[bytes], str] | None = None
) -> bytes:
    """A key file's secret (mode 0600, this user's), created with fresh random bytes if absent.
    `public_id`: the id the key is known by (default: a digest key's `key_id`), for the log line."""
    return (
        _read_key_file(path, name, env_var)
        if os.path.lexists(path)
        else _create_key_file(path, name, env_var, public_id or key_id)
    )


def _refuse(path: Path, what: str, seen: str = "", env_var: str = ENV_VAR) -> ConfigError:
    return ConfigError(
        what,
        where=str(path),
        expected=f"a non-empty key file of this user with mode 0600 (or set {env_var})",
        seen=seen,
    )


def _read_key_file(path: Path, name: str = "digest key", env_var: str = ENV_VAR) -> bytes:
    try:
        st = os.stat(path)
    except OSError as e:
        raise _refuse(path, f"cannot read the {name} file", e.strerror or str(e), env_var=env_var) from None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, f"the {name} file is not a regular file", env_var=env_var)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise _refuse(
            path,
            f"the {name} file is open to group or others; run `chmod 600` on it",
            f"mode {mode:04o}",
            env_var=env_var,
        )
    try:
        with open(path, "rb") as fh:
            secret = fh.read()
    except OSError as e:
        raise _refuse(path, f"cannot read the {name} file", e.strerror or str(e), env_var=env_var) from None
    if not secret:
        raise _refuse(path, f"the {name} file is empty", env_var=env_var)
    return secret


def _create_key_file(
    path: Path,
    name: str = "digest key",
    env_var: str = ENV_VAR,
    public_id: Callable[[bytes], str] = key_id,
) -> bytes:
    """Write 32 random bytes to a 0600 file, atomically: a concurrent creator's key wins if it is first."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise _refuse(
            path, f"cannot create the {name} folder", e.strerror or str(e), env_var=env_var
        ) from None
    secret = secrets.token_bytes(KEY_BYTES)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
    try:
        _write_new(tmp, secret)
    except OSError as e:
        raise _refuse(path, f"cannot create the {name} file", e.strerror or str(e), env_var=env_var) from None
    try:
        # A hard link publishes the complete file under its name, or fails if another got there first.
        os.link(tmp, path)
    except FileExistsError:
        return _read_after_race(path, name, env_var)
    except OSError:
        # No hard links on this file system: create the file in place, still exclusively.
        try:
            _write_new(path, secret)
        except FileExistsError:
            return _read_after_race(path, name, env_var)
        except OSError as e:
            raise _refuse(
                path, f"cannot create the {name} file", e.strerror or str(e), env_var=env_var
            ) from None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    log.warning(
        "created a new %s at %s (key id %s): keep it, and share it with every node of this "
        "deployment (or set %s); without it old %s cannot be checked",
        name,
        path,
        public_id(secret),
        env_var,
        "digests" if name == "digest key" else "signatures",
    )
    return secret


def _write_new(path: Path, secret: bytes) -> None:
    # O_EXCL with mode 0600: the file is never, even briefly, readable by others.
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, KEY_MODE)
    try:
        view = memoryview(secret)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)  # ours (O_EXCL): never leave a partial key behind
        raise
    os.close(fd)


def _read_after_race(path: Path, name: str, env_var: str) -> bytes:
    """Another process created the key first: read theirs (it may still be writing it in place)."""
    deadline = time.monotonic() + _RACE_WAIT_S
    while True:
        try:
            return _read_key_file(path, name, env_var)
        except ConfigError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


__all__ = [
    "ALGORITHM",
    "ENV_VAR",
    "KEY_FILE",
    "DigestKey",
    "default_key_file",
    "keyed_digest",
    "keyed_hasher",
    "key_id",
    "load_key",
    "secret_from_file",
]
