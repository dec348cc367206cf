"""Bounded retries for calls to an MLflow tracking server (the MLflow side of lethe.storage's retries).

A server that restarts or blips mid-run is retried with exponential backoff and jitter for at most
`tracking.retry_s` seconds in all; then the call fails with one TrackingError line. MLflow's own
client retries (about 4 minutes on some calls) are cut down to fit inside that bound, so the total
is lethe's. Connection refused / reset, timeouts and 5xx are transient; 4xx answers are not.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from collections.abc import Callable
from typing import TypeVar

from lethe.errors import LetheError, redact_userinfo

_log = logging.getLogger("lethe.tracking")

T = TypeVar("T")
DEFAULT_RETRY_S = 60.0
_FIRST_DELAY_S = 0.5
_MAX_DELAY_S = 8.0
# What MLflow's REST client does inside one of our attempts (setdefault: a user's choice wins).
_MLFLOW_MAX_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
_MLFLOW_BACKOFF = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
_MLFLOW_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
# requests / urllib3 exception names that mean "the server did not answer"; matched by name so this
# module needs neither import.
_NETWORK_ERRORS = {
    "ConnectionError",
    "ConnectTimeout",
    "ReadTimeout",
    "Timeout",
    "RetryError",
    "ChunkedEncodingError",
    "MaxRetryError",
    "NewConnectionError",
    "ProtocolError",
    "RemoteDisconnected",
    "ConnectionRefusedError",
    "ConnectionResetError",
    "TimeoutError",
}


class TrackingError(LetheError):
    """The tracking store cannot be used (unreachable, deleted experiment, no active run)."""


def bound_mlflow_client(retry_s: float) -> None:
    """Make one MLflow HTTP request give up well inside `retry_s` (our loop retries around it)."""
    os.environ.setdefault(_MLFLOW_MAX_RETRIES, "1")
    os.environ.setdefault(_MLFLOW_BACKOFF, "1")
    # The timeout is per connect / read, not per transfer: a large upload is not cut short by it.
    os.environ.setdefault(_MLFLOW_TIMEOUT, str(int(min(120.0, max(5.0, math.ceil(retry_s / 3))))))


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _http_status(exc: BaseException) -> int | None:
    # MLflow exceptions built from a server answer (RestException, "API request to endpoint ... failed
    # with error code N") carry an error code that maps to the HTTP status.
    if type(exc).__name__ == "RestException" or str(exc).startswith("API request to endpoint"):
        getter = getattr(exc, "get_http_status_code", None)
        return int(getter()) if callable(getter) else None
    return None


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: the server is unreachable, timed out, reset the connection, or answered 5xx."""
    for e in _chain(exc):
        if isinstance(e, TrackingError):
            return False
        if type(e).__name__ in _NETWORK_ERRORS or isinstance(e, (ConnectionError, TimeoutError)):
            return True
        status = _http_status(e)
        if status is not None:
            return status >= 500
    return False


def reason(exc: BaseException) -> str:
    """A short, credential-free description of why a call failed (the innermost network error)."""
    chain = _chain(exc)
    inner = next((e for e in reversed(chain) if type(e).__name__ in _NETWORK_ERRORS), chain[0])
    text = (str(inner).strip().splitlines() or [""])[0]
    # urllib3's messages repeat the object repr ("<urllib3.connection.HTTPConnection object at 0x..>:")
    if ">: " in text:
        text = text.rsplit(">: ", 1)[1]
    return redact_userinfo(f"{type(inner).__name__}: {text}".rstrip(": "))[:200]


class ServerRetry:
    """Runs calls to one tracking server with bounded retries. After one call has given up, later
    calls get a single attempt (the failure path of a run must not wait the bound again per call)."""

    def __init__(self, uri: str, retry_s: float, remote: bool) -> None:
        self.uri, self.retry_s, self.remote = uri, max(0.0, float(retry_s)), remote
        self.down = False
        self._down_since = 0.0  # when the calls that gave up started failing
        if remote:
            bound_mlflow_client(self.retry_s)

    def call(self, what: str, fn: Callable[[], T], before_retry: Callable[[], T | None] | None = None) -> T:
        """fn(); transient failures are retried until `retry_s` has passed, then one TrackingError.

        `before_retry` (for calls that create something): run before each retry; a non-None result
        is what the failed attempt created after all, and is returned instead of trying again.
        """
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                if attempt > 1 and before_retry is not None:
                    found = before_retry()
                    if found is not None:
                        return found
                out = fn()
                self.down = False
                return out
            except Exception as exc:  # noqa: BLE001 - classified, re-raised as one line when it gives up
                if not (self.remote and is_transient(exc)):
                    raise
                waited = time.monotonic() - start
                delay = min(_MAX_DELAY_S, _FIRST_DELAY_S * 2 ** (attempt - 1)) * (0.5 + random.random())
                if self.down or waited + delay > self.retry_s:
                    if not self.down:
                        self.down, self._down_since = True, start
                    raise self.gave_up(time.monotonic() - self._down_since, exc) from None
                _log.warning(
                    "MLflow %s at %s: %s; retry %d in %.1f s", what, self.uri, reason(exc), attempt, delay
                )
                time.sleep(delay)

    def gave_up(self, waited: float, exc: BaseException) -> TrackingError:
        return TrackingError(
            f"MLflow server at {self.uri} unreachable for {max(waited, 0.0):.0f} s ({reason(exc)}); "
            "nothing was registered; run the same command again once it is back"
        )
