"""Storage for lethe: local paths and s3:// URIs behind one small API (the only module that imports boto3).

* boto3 does object operations (manifests, state, small files, listing, deleting the forget shards);
  pyarrow.fs moves the data (Parquet shards through Ray Data, Ray Train checkpoints).
* Endpoint, region and credentials come only from the standard AWS variables (`AWS_ENDPOINT_URL`,
  `AWS_ENDPOINT_URL_S3`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
  `AWS_REGION` / `AWS_DEFAULT_REGION`) or AWS config files. Credentials are never passed explicitly to
  a client, so a pickled filesystem (shipped to Ray tasks) carries none, and every error message that
  leaves this module is scrubbed of their values.
* Transient failures (connection refused or reset, timeouts, 5xx, throttling) are retried with
  exponential backoff and jitter, inside the clients (botocore "standard" mode, the AWS SDK's
  retry strategy for pyarrow) and around each whole operation here, so a restarting S3 server is
  survived; what still fails becomes one StorageError line naming the URI.
* Writes are atomic per object: a local file goes through a temp file + os.replace, an S3 object is
  one PUT. Multi-object outputs (shards) are made atomic by their writers: everything first, the
  manifest last, so a reader only trusts a prefix that holds a manifest.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from lethe.errors import StorageError

if TYPE_CHECKING:
    import pyarrow.fs

log = logging.getLogger("lethe.storage")

T = TypeVar("T")
S3 = "s3://"
# Attempts per operation (each client retries inside an attempt too); overridable for tests/benchmarks.
ATTEMPTS_ENV = "LETHE_S3_ATTEMPTS"
BACKOFF_ENV = "LETHE_S3_BACKOFF_S"
DEFAULT_ATTEMPTS = 6
DEFAULT_BACKOFF_S = 0.5
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN")
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
}
# pyarrow reports AWS SDK errors as OSError text; these mark the retryable ones.
_TRANSIENT_TEXT = (
    "NETWORK_CONNECTION",
    "Connection refused",
    "Couldn't connect",
    "connection reset",
    "Connection reset",
    "INTERNAL_FAILURE",
    "SLOW_DOWN",
    "SERVICE_UNAVAILABLE",
    "HTTP status 5",
    "curlCode: 7",
    "curlCode: 28",
    "curlCode: 52",
    "curlCode: 56",
    "Timeout",
    "timed out",
)


# ----------------------------------------------------------------------------------------------
# URIs
# ----------------------------------------------------------------------------------------------
def is_s3(uri: str | os.PathLike[str]) -> bool:
    return str(uri).startswith(S3)


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/a/b -> ("bucket", "a/b"); the key has no leading or trailing slash."""
    if not is_s3(uri):
        raise StorageError("not an S3 URI", where=str(uri), expected="s3://bucket/prefix")
    rest = str(uri)[len(S3) :]
    bucket, _, key = rest.partition("/")
    if not bucket or any(c in bucket for c in " \\?#") or bucket != bucket.lower():
        raise StorageError("invalid S3 bucket name", where=str(uri), expected="s3://bucket/prefix")
    return bucket, key.strip("/")


def join(uri: str | os.PathLike[str], *parts: str) -> str:
    """Join path segments onto a local path or an s3:// URI."""
    if is_s3(uri):
        out = str(uri).rstrip("/")
        for p in parts:
            out = f"{out}/{str(p).strip('/')}"
        return out
    return str(Path(uri).joinpath(*parts))


def parent(uri: str) -> str:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return f"{S3}{bucket}/{key.rpartition('/')[0]}".rstrip("/")
    return str(Path(uri).parent)


def basename(uri: str) -> str:
    return str(uri).rstrip("/").rpartition("/")[2]


def normalize(uri: str | os.PathLike[str]) -> str:
    """Absolute local path, or the S3 URI without a trailing slash (validated)."""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        return f"{S3}{bucket}/{key}".rstrip("/")
    return str(Path(uri).expanduser().resolve())


def fs_path(uri: str) -> str:
    """The path a pyarrow filesystem of `filesystem(uri)` understands: bucket/key, or a local path."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return f"{bucket}/{key}".rstrip("/")
    return str(Path(uri).expanduser().resolve())


def to_uri(path: str, remote: bool) -> str:
    """Inverse of fs_path: a pyarrow path seen on the S3 filesystem (bucket/key) back to s3://."""
    return f"{S3}{path.lstrip('/')}" if remote and not is_s3(path) else path


# ----------------------------------------------------------------------------------------------
# clients (endpoint and region from the environment; credentials never passed explicitly)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class S3Settings:
    endpoint: str | None  # e.g. http://127.0.0.1:8333; None: AWS
    region: str
    attempts: int
    backoff_s: float

    @property
    def scheme(self) -> str:
        return urlsplit(self.endpoint).scheme if self.endpoint else "https"

    @property
    def host(self) -> str | None:
        return urlsplit(self.endpoint).netloc if self.endpoint else None


def s3_settings() -> S3Settings:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    try:
        attempts = max(1, int(os.environ.get(ATTEMPTS_ENV, DEFAULT_ATTEMPTS)))
        backoff = max(0.0, float(os.environ.get(BACKOFF_ENV, DEFAULT_BACKOFF_S)))
    except ValueError:
        raise StorageError(
            "invalid retry setting", where=f"{ATTEMPTS_ENV} / {BACKOFF_ENV}", expected="numbers"
        ) from None
    if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
        raise StorageError(
            "invalid S3 endpoint", where="AWS_ENDPOINT_URL", expected="http(s)://host:port", seen=endpoint
        )
    return S3Settings(endpoint, region, attempts, backoff)


_clients: dict[tuple[S3Settings, int, str], Any] = {}


def _credentials_fingerprint() -> str:
    # Clients are cached per process; a change of credentials in the environment needs a new one.
    import hashlib

    raw = "|".join(os.environ.get(n, "") for n in _SECRET_ENV) + "|" + os.environ.get("AWS_PROFILE", "")
    return hashlib.sha256(raw.encode()).hexdigest()


def s3_client() -> Any:
    """A boto3 S3 client (path-style addressing, botocore 'standard' retries); one per process."""
    import boto3
    from botocore.config import Config

    st = s3_settings()
    key = (st, os.getpid(), _credentials_fingerprint())
    if key not in _clients:
        _clients[key] = boto3.session.Session().client(
            "s3",
            endpoint_url=st.endpoint,
            region_name=st.region,
            config=Config(
                retries={"max_attempts": 4, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
                s3={"addressing_style": "path"},
            ),
        )
    return _clients[key]


def s3_filesystem() -> pyarrow.fs.S3FileSystem:
    """pyarrow's S3 filesystem for the configured endpoint; picklable without secrets."""
    import pyarrow.fs as pafs

    st = s3_settings()
    kwargs: dict[str, Any] = {
        "region": st.region,
        "connect_timeout": 5,
        "request_timeout": 60,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=max(4, st.attempts)),
    }
    if st.endpoint:
        # A local endpoint (SeaweedFS, MinIO) serves path-style requests over plain http.
        kwargs.update(endpoint_override=st.host, scheme=st.scheme, force_virtual_addressing=False)
    return pafs.S3FileSystem(**kwargs)


def filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """(pyarrow filesystem, path on it) for a local path or an s3:// URI."""
    import pyarrow.fs as pafs

    if is_s3(uri):
        return s3_filesystem(), fs_path(uri)
    return pafs.LocalFileSystem(), fs_path(uri)


# ----------------------------------------------------------------------------------------------
# retries and errors
# ----------------------------------------------------------------------------------------------
def scrub(text: str) -> str:
    """Remove the values of credential variables from a message (belt and braces: none should be there)."""
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _client_error_code(exc: BaseException) -> tuple[str, int]:
    resp = getattr(exc, "response", None) or {}
    code = str(resp.get("Error", {}).get("Code", ""))
    status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def is_transient(exc: BaseException) -> bool:
    try:
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            ReadTimeoutError,
        )
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return False
    if isinstance(
        exc, (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)
    ):
        return True
    if isinstance(exc, ClientError):
        code, status = _client_error_code(exc)
        return status >= 500 or code in _TRANSIENT_CODES
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError):
        text = str(exc)
        return any(t in text for t in _TRANSIENT_TEXT)
    return False


def reason(exc: BaseException) -> str:
    """A short, secret-free description of a storage failure."""
    code, status = _client_error_code(exc)
    if code:
        return f"{code} (HTTP {status})" if status else code
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return scrub(f"{type(exc).__name__}: {first}")[:240]


def with_retries(what: str, where: str, fn: Callable[[], T], attempts: int | None = None) -> T:
    """Run fn; retry transient failures with exponential backoff + jitter; else one StorageError line."""
    st = s3_settings()
    n = attempts or st.attempts
    for attempt in range(1, n + 1):
        try:
            return fn()
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001 - classified below, re-raised as one clear line
            if is_transient(e) and attempt < n:
                delay = st.backoff_s * 2 ** (attempt - 1) * (0.5 + random.random())
                log.warning(
                    "%s at %s: %s; retry %d/%d in %.1f s", what, where, reason(e), attempt, n - 1, delay
                )
                time.sleep(delay)
                continue
            hint = f" after {attempt} attempts" if attempt > 1 else ""
            raise StorageError(f"{what} failed{hint}", where=where, seen=reason(e)) from None
    raise AssertionError("unreachable")


def _missing(exc: BaseException) -> bool:
    code, status = _client_error_code(exc)
    return status == 404 or code in ("404", "NoSuchKey", "NotFound")


# ----------------------------------------------------------------------------------------------
# object operations
# ----------------------------------------------------------------------------------------------
def _object_exists(client: Any, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
        return True
    except Exception as e:
        if _missing(e):
            return False
        raise


def exists(uri: str) -> bool:
    """True for an existing file / object, or a folder / prefix holding at least one object."""
    if not is_s3(uri):
        return Path(uri).exists()
    bucket, key = split_s3(uri)
    client = s3_client()

    def check() -> bool:
        if _object_exists(client, bucket, key):
            return True
        resp = client.list_objects_v2(Bucket=bucket, Prefix=key.rstrip("/") + "/", MaxKeys=1)
        return resp.get("KeyCount", 0) > 0

    return with_retries("checking", uri, check)


def is_file(uri: str) -> bool:
    if not is_s3(uri):
        return Path(uri).is_file()
    bucket, key = split_s3(uri)
    client = s3_client()
    return with_retries("checking", uri, lambda: _object_exists(client, bucket, key))


def read_bytes(uri: str) -> bytes:
    if not is_s3(uri):
        try:
            return Path(uri).read_bytes()
        except OSError as e:
            raise StorageError("cannot read", where=uri, seen=e.strerror or str(e)) from None
    got = read_object(uri)
    if got is None:
        raise StorageError("object not found", where=uri)
    return got[0]


def read_object(uri: str) -> tuple[bytes, str] | None:
    """An S3 object's bytes and ETag (for `put_object_if`); None when there is none."""
    bucket, key = split_s3(uri)

    def get() -> tuple[bytes, str] | None:
        try:
            resp = s3_client().get_object(Bucket=bucket, Key=key)
        except Exception as e:
            if _missing(e):
                return None
            raise
        return resp["Body"].read(), str(resp["ETag"])

    return with_retries("reading", uri, get)


def put_object_if(uri: str, data: bytes, etag: str | None) -> bool:
    """PUT only if the object is absent (etag None) or still has `etag`; False when it is not. A
    server without conditional writes (501) gets a plain PUT: callers read back to see who won."""
    bucket, key = split_s3(uri)
    cond = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}

    def put() -> bool:
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data, **cond)
            return True
        except Exception as e:
            if (status := _client_error_code(e)[1]) not in (409, 412, 501):
                raise
        return status == 501 and bool(s3_client().put_object(Bucket=bucket, Key=key, Body=data))

    return with_retries("writing", uri, put)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def read_json(uri: str) -> Any:
    try:
        return json.loads(read_text(uri))
    except ValueError as e:
        raise StorageError("not valid JSON", where=uri, seen=str(e).splitlines()[0]) from None


def _atomic_local_write(path: Path, data: bytes) -> None:
    # mkstemp's mode 0600: files of ids (the nightly's) are never readable by others, even mid-write.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes(uri: str, data: bytes) -> str:
    """Atomic: readers see the old content or the new, never a part."""
    if not is_s3(uri):
        try:
            _atomic_local_write(Path(uri), data)
        except OSError as e:
            raise StorageError("cannot write", where=uri, seen=e.strerror or str(e)) from None
        return uri
    bucket, key = split_s3(uri)
    client = s3_client()
    with_retries("writing", uri, lambda: client.put_object(Bucket=bucket, Key=key, Body=data))
    return uri


def write_json(uri: str, obj: Any) -> str:
    return write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def upload_file(local: str | os.PathLike[str], uri: str) -> str:
    """Copy a local file to uri (one PUT for S3: atomic)."""
    if not is_s3(uri):
        if Path(local).resolve() != Path(uri).resolve():
            write_bytes(uri, Path(local).read_bytes())
        return uri
    return write_bytes(uri, Path(local).read_bytes())


def download_file(uri: str, local: str | os.PathLike[str]) -> Path:
    """Copy uri to a local file atomically."""
    dest = Path(local)
    if not is_s3(uri) and Path(uri).resolve() == dest.resolve():
        return dest
    _atomic_local_write(dest, read_bytes(uri))
    return dest


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Every file (object) under a folder / prefix, recursively, sorted; full paths / URIs."""
    if not is_s3(uri):
        p = Path(uri)
        if p.is_file():
            return [str(p)] if str(p).endswith(suffix) else []
        if not p.is_dir():
            return []
        return sorted(str(f) for f in p.rglob(f"*{suffix}") if f.is_file())
    bucket, key = split_s3(uri)
    client = s3_client()
    prefix = f"{key}/" if key else ""

    def listing() -> list[str]:
        out: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                k = obj["Key"]
                if not k.endswith("/") and k.endswith(suffix):
                    out.append(f"{S3}{bucket}/{k}")
        if not out and key and key.endswith(suffix) and is_file(uri):
            out.append(uri)  # a single object, e.g. s3://bucket/data.parquet
        return sorted(out)

    return with_retries("listing", uri, listing)


def list_children(uri: str, startswith: str = "") -> list[str]:
    """Immediate children (files and folders / common prefixes) of a folder or prefix; full URIs."""
    if not is_s3(uri):
        p = Path(uri)
        return sorted(str(c) for c in p.iterdir() if c.name.startswith(startswith)) if p.is_dir() else []
    bucket, key = split_s3(uri)
    client = s3_client()
    prefix = f"{key}/" if key else ""

    def listing() -> list[str]:
        out: set[str] = set()
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix + startswith, Delimiter="/"
        )
        for page in pages:
            for cp in page.get("CommonPrefixes", []):
                out.add(f"{S3}{bucket}/{cp['Prefix'].rstrip('/')}")
            for obj in page.get("Contents", []):
                if not obj["Key"].endswith("/"):
                    out.add(f"{S3}{bucket}/{obj['Key']}")
        return sorted(out)

    return with_retries("listing", uri, listing)


def delete(uri: str) -> int:
    """Delete a file / object, or everything under a folder / prefix; returns how many were deleted."""
    if not is_s3(uri):
        p = Path(uri)
        if p.is_dir():
            n = sum(1 for f in p.rglob("*") if f.is_file())
            shutil.rmtree(p)
            return n
        if p.exists():
            p.unlink()
            return 1
        return 0
    bucket, key = split_s3(uri)
    if not key:
        raise StorageError("refusing to delete a whole bucket", where=uri, expected="s3://bucket/prefix")
    client = s3_client()

    def remove() -> int:
        keys = [k[len(f"{S3}{bucket}/") :] for k in list_files(uri)]
        # Folder markers some writers leave ("prefix/") go too, so no empty shard "folder" remains.
        markers = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{key}/"):
            markers += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith("/")]
        if key not in keys and is_file(uri):
            keys.append(key)
        todo = sorted(set(keys + markers))
        for i in range(0, len(todo), 1000):
            batch = [{"Key": k} for k in todo[i : i + 1000]]
            resp = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
            if resp.get("Errors"):
                err = resp["Errors"][0]
                raise StorageError("cannot delete objects", where=uri, seen=str(err.get("Code", "")))
        return len(keys)

    return with_retries("deleting", uri, remove)


def copy_tree(src: str, dst: str) -> int:
    """Copy every object under src to the same relative key under dst (server-side for S3)."""
    files = list_files(src)
    if not is_s3(src) or not is_s3(dst):
        for f in files:
            rel = os.path.relpath(f, src) if not is_s3(src) else f[len(src) + 1 :]
            write_bytes(join(dst, rel), read_bytes(f))
        return len(files)
    client = s3_client()
    dbucket, dkey = split_s3(dst)
    for f in files:
        sbucket, skey = split_s3(f)
        rel = f[len(src.rstrip("/")) + 1 :]
        target = f"{dkey}/{rel}" if dkey else rel
        with_retries(
            "copying",
            f,
            lambda sb=sbucket, sk=skey, t=target: client.copy_object(
                Bucket=dbucket, Key=t, CopySource={"Bucket": sb, "Key": sk}
            ),
        )
    return len(files)


def check_writable(uri: str) -> None:
    """Fail early (before any work) when uri cannot be written: probe object, then delete it."""
    probe = join(uri, f".write-probe-{os.getpid()}-{random.randrange(1 << 30)}")
    if is_s3(uri):
        bucket, key = split_s3(uri)
        client = s3_client()

        def put() -> None:
            client.put_object(Bucket=bucket, Key=split_s3(probe)[1], Body=b"")
            client.delete_object(Bucket=bucket, Key=split_s3(probe)[1])

        try:
            with_retries("writing a probe object", uri, put)
        except StorageError as e:
            raise StorageError(
                "storage is not writable",
                where=uri,
                expected="an existing bucket and credentials from the AWS_* variables or AWS config",
                seen=e.seen,
            ) from None
        return
    try:
        Path(uri).mkdir(parents=True, exist_ok=True)
        Path(probe).write_text("")
        Path(probe).unlink()
    except OSError as e:
        raise StorageError(
            "storage is not writable", where=uri, seen=e.strerror or type(e).__name__
        ) from None
