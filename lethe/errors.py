"""Errors that reach the user as one clear line: what, where, what was expected, what was seen."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

# scheme://userinfo@ : greedy up to the last "@" before the path, so "u:p@ss@host" loses all of "u:p@ss".
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s?#'\"<>]*@")


def redact_userinfo(text: str) -> str:
    """Drop `user:password@` from every URI in `text` (credentials never reach a message or a report)."""
    return _USERINFO.sub(r"\g<scheme>", text)


class LetheError(Exception):
    """Base class for every error lethe reports to a user (non-zero exit, one line)."""

    def __init__(self, what: str, *, where: str = "", expected: str = "", seen: str = "") -> None:
        # Redacted as they come in, so no attribute (pickled through Ray, say) holds a credential.
        self.what, self.where, self.expected, self.seen = (
            redact_userinfo(str(p)) for p in (what, where, expected, seen)
        )
        super().__init__(self.line())

    def line(self) -> str:
        parts = [self.what]
        if self.where:
            parts.append(f"at {self.where}")
        if self.expected:
            parts.append(f"expected {self.expected}")
        if self.seen:
            parts.append(f"got {self.seen}")
        return redact_userinfo("; ".join(parts))

    def __reduce__(self):  # survive pickling through Ray tasks
        return (_rebuild, (type(self), self.what, self.where, self.expected, self.seen))


def _rebuild(cls, what, where, expected, seen):
    return cls(what, where=where, expected=expected, seen=seen)


class ConfigError(LetheError):
    """A configuration field is invalid."""


class DataError(LetheError):
    """The data set or the forget request is unusable."""


class CheckpointError(LetheError):
    """A checkpoint is missing, corrupt or of another architecture."""


class StorageError(LetheError):
    """A path cannot be read or written."""


def find_lethe_error(exc: BaseException) -> LetheError | None:
    """Ray wraps worker exceptions; walk the cause chain to find ours."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, LetheError):
            return cur
        nxt = getattr(cur, "cause", None)
        if isinstance(nxt, BaseException):
            cur = nxt
            continue
        cur = cur.__cause__ or cur.__context__
    return None


def unwrap_lethe_error(exc: BaseException) -> LetheError | None:
    """The LetheError behind a Ray failure, as a plain instance whose str() is one line.

    Ray re-raises a task's error as a RayTaskError(DataError) hybrid whose str() is a whole
    traceback; rebuild the plain lethe class from its fields.
    """
    err = find_lethe_error(exc)
    if err is None:
        return None
    cls = next(
        c for c in type(err).__mro__ if issubclass(c, LetheError) and c.__module__.startswith("lethe.")
    )
    if type(err) is cls:
        return err
    return cls(err.what, where=err.where, expected=err.expected, seen=err.seen)


@contextlib.contextmanager
def lethe_errors_unwrapped(what: str = "") -> Iterator[None]:
    """Within: an exception with a LetheError behind it (Ray's wrappers of a worker's or a task's
    failure) is raised as that error, a plain instance (unwrap_lethe_error); any other goes on as is,
    logged as `<what> failed: <type>` when `what` names the step."""
    try:
        yield
    except Exception as e:
        ours = unwrap_lethe_error(e)
        if ours is e:
            raise  # already plain: keep its traceback and cause
        if ours is not None:
            raise ours from None
        if what:
            logging.getLogger("lethe").error("%s failed: %s", what, type(e).__name__)
        raise
