"""One run per work dir: an exclusive lock taken before a run writes anything (issue 18).

* The work dir: `fcntl.flock` on `<workdir>/.lethe.lock`. The kernel drops the lock when its process
  dies, so a dead run's lock is free. The file's JSON (token, pid, host, command, started_at) names
  the holder in a refusal; a clean release empties it, so content found by the next run that gets
  the lock is a dead run's, and the log says that it is taken over.
* `storage.uri` on s3:// (shared by machines, no shared kernel): a lease object
  `<storage.uri>/.lethe.lease` with the same fields and `expires_at`, written with a conditional PUT
  and read back (who won), renewed by a daemon thread every third of its term, deleted on release.
  An expired lease is a dead run's and is taken over, with a log line.
* The holder exports its token in LETHE_WORKDIR_LOCK; a process whose token is the one in the lock
  (a KFP local task, a Ray job the holder submitted, a nested call) proceeds without taking it.
* A Kubeflow pipeline run on a cluster has no launcher process to hold the lock from begin to
  cleanup: each task is its own pod and holds the lock only while it runs. `begin` therefore writes
  a pipeline lease `<workdir>/.lethe.pipeline-lease` (the pipeline's MLflow run id and an expiry);
  every later task of that run (LETHE_PIPELINE_RUN) renews it while it holds the lock, any other
  run is refused while it is live, the exit handler deletes it, and one left by a dead pipeline run
  expires after PIPELINE_LEASE_S and is then taken over, with a log line.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

from lethe import storage
from lethe.config import RunConfig
from lethe.errors import LetheError, redact_userinfo
from lethe.pipeline.layout import unwritable
from lethe.pipeline.periodic import every
from lethe.pipeline.state import now_iso

log = logging.getLogger("lethe")

LOCK_FILE = ".lethe.lock"
LEASE_OBJECT = ".lethe.lease"
PIPELINE_LEASE_FILE = ".lethe.pipeline-lease"
TOKEN_ENV = "LETHE_WORKDIR_LOCK"
RUN_ENV = "LETHE_PIPELINE_RUN"  # the pipeline run (MLflow run id) a cluster task belongs to
LEASE_S = 120.0  # a dead run blocks an s3:// storage.uri for at most this long
# A dead pipeline run blocks its work dir for at most this long; it must outlast the gap between two
# tasks (a pod scheduled, its image pulled), since a task renews it only while it runs.
PIPELINE_LEASE_S = 900.0
_COMMAND_CHARS = 160
# A holder writes its record right after it gets the lock: a refusal waits this long to name it.
_RECORD_WAIT_S = 1.0
# Tokens of the holds this process took itself (not inherited from a launcher), innermost last.
_own_holds: list[str] = []


class WorkdirBusy(LetheError):
    """Another lethe run holds the work dir (or the lease on its storage.uri)."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lock or lease: no data, no credentials (the command is redacted and cut short)."""

    token: str
    pid: int
    host: str
    command: str
    started_at: str
    expires_at: str = ""  # leases only

    @classmethod
    def me(cls, token: str) -> Holder:
        return cls(token, os.getpid(), socket.gethostname(), _command(), now_iso())

    @classmethod
    def parse(cls, raw: bytes) -> Holder | None:
        """The record in a lock file or lease; None when empty or unreadable (a torn or foreign file)."""
        try:
            d = json.loads(raw)
            return cls(
                str(d["token"]),
                int(d["pid"]),
                str(d["host"]),
                str(d.get("command", "")),
                str(d["started_at"]),
                str(d.get("expires_at", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def to_bytes(self) -> bytes:
        return (json.dumps(asdict(self), sort_keys=True) + "\n").encode()

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, `{self.command}`, since {self.started_at}"

    def renewed(self, lease_s: float) -> Holder:
        until = datetime.now(timezone.utc) + timedelta(seconds=lease_s)
        return replace(self, expires_at=until.isoformat(timespec="milliseconds"))

    def expired(self) -> bool:
        try:
            return datetime.fromisoformat(self.expires_at) <= datetime.now(timezone.utc)
        except ValueError:
            return True  # no valid expiry: nobody can be renewing it


def _command() -> str:
    """This process's command line, for the refusal line of another run: short and redacted."""
    argv = list(sys.argv) or ["python"]
    prog = Path(argv[0]).name
    # `lethe ...` and `python -m lethe.cli ...` read the same to the user.
    text = shlex.join(["lethe" if prog in ("lethe", "cli.py") else prog, *argv[1:]])
    text = redact_userinfo(text)
    return text if len(text) <= _COMMAND_CHARS else text[: _COMMAND_CHARS - 3] + "..."


@contextmanager
def hold(cfg: RunConfig) -> Iterator[None]:
    """Hold cfg's work dir (and the lease on an s3:// storage.uri) for the block, or raise
    WorkdirBusy naming the holder. Taken before anything is written: a refused run writes nothing."""
    inherited = os.environ.get(TOKEN_ENV, "")
    token = inherited or uuid.uuid4().hex
    with ExitStack() as stack:
        stack.enter_context(_local_lock(cfg.workdir_path, token))
        if not inherited:
            stack.enter_context(_pipeline_lease(cfg.workdir_path))
        if cfg.storage.uri and storage.is_s3(cfg.storage.uri):
            remote = storage.normalize(cfg.storage.uri)
            storage.check_writable(remote)  # a missing bucket or bad credentials: that line, not the lease's
            stack.enter_context(_lease(storage.join(remote, LEASE_OBJECT), token, LEASE_S))
        if not inherited:
            os.environ[TOKEN_ENV] = token  # child processes (KFP local tasks) run under this lock
            stack.callback(os.environ.pop, TOKEN_ENV, None)
            _own_holds.append(token)
            stack.callback(_own_holds.pop)
        yield


def child_env() -> dict[str, str]:
    """What a process started elsewhere on the holder's behalf (a Ray job) needs to run under its
    lock, or as a task of its pipeline run."""
    return {k: os.environ[k] for k in (TOKEN_ENV, RUN_ENV) if os.environ.get(k)}


# -- the work dir: an OS file lock ---------------------------------------------------------------------


def _read_fd(fd: int) -> bytes:
    return os.pread(fd, 1 << 16, 0)


def _busy_workdir(root: Path, holder: Holder | None) -> WorkdirBusy:
    who = holder.describe() if holder else "its holder has not recorded itself yet"
    return WorkdirBusy(
        f"work dir {root} is in use by another lethe run ({who})",
        expected="one run per work dir; wait for it or use another --workdir",
    )


def _holder_of(fd: int) -> Holder | None:
    deadline = time.monotonic() + _RECORD_WAIT_S
    while (holder := Holder.parse(_read_fd(fd))) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return holder


@contextmanager
def _local_lock(root: Path, token: str) -> Iterator[None]:
    path = root / LOCK_FILE
    try:
        current = Holder.parse(path.read_bytes()) if path.is_file() else None
    except OSError:
        current = None
    if current is not None and current.token == token:
        yield  # our launcher holds it (or this process does, one call up)
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise unwritable(root, e) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy_workdir(root, _holder_of(fd)) from None
        dead = Holder.parse(_read_fd(fd))
        if dead is not None:
            log.warning(
                "work dir %s: taking over the lock of dead run pid %d on host %s (`%s`, since %s)",
                root,
                dead.pid,
                dead.host,
                dead.command,
                dead.started_at,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, Holder.me(token).to_bytes(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released cleanly: the next run has no dead run to report
    finally:
        os.close(fd)  # drops the flock


# -- s3:// storage: a lease object ---------------------------------------------------------------------


def _read_lease(uri: str) -> tuple[Holder | None, str | None, bool]:
    """(holder, ETag, whether an object is there at all)."""
    got = storage.read_object(uri)
    if got is None:
        return None, None, False
    return Holder.parse(got[0]), got[1], True


def _busy_storage(uri: str, holder: Holder | None) -> WorkdirBusy:
    who = f"{holder.describe()}, lease until {holder.expires_at}" if holder else "holder unknown"
    return WorkdirBusy(
        f"storage {storage.parent(uri)} is in use by another lethe run ({who})",
        expected="one run per storage.uri; wait for it or use another --storage",
    )


def take_lease(uri: str, me: Holder, lease_s: float = LEASE_S) -> bool:
    """Write our lease at `uri` unless a live one of another run is there (WorkdirBusy). Returns
    False when the lease is already ours (inherited: the holder renews it), True when taken."""
    holder: Holder | None = None
    for _ in range(3):  # a lost race is re-read: the winner's lease then refuses us
        holder, etag, present = _read_lease(uri)
        if holder is not None and holder.token == me.token:
            return False
        if holder is not None and not holder.expired():
            raise _busy_storage(uri, holder)
        if present:
            who = holder.describe() if holder else "an unreadable lease"
            log.warning("storage %s: taking over the expired lease of %s", storage.parent(uri), who)
        storage.put_object_if(uri, me.renewed(lease_s).to_bytes(), etag)
        holder, _etag, _present = _read_lease(uri)
        if holder is not None and holder.token == me.token:
            return True
    raise _busy_storage(uri, holder)


def _renew(uri: str, me: Holder, lease_s: float) -> bool:
    """One renewal of our lease at `uri`; False once another run holds it."""
    try:
        holder, etag, _present = _read_lease(uri)
        if holder is None or holder.token != me.token:
            who = holder.describe() if holder else "nobody"
            log.warning("storage %s: lost the lease (now held by %s)", storage.parent(uri), who)
            return False
        storage.put_object_if(uri, me.renewed(lease_s).to_bytes(), etag)
    except LetheError as e:  # a storage hiccup: try again next period, the lease has time left
        log.warning("storage %s: could not renew the lease: %s", storage.parent(uri), e.line())
    return True


def release_lease(uri: str, me: Holder) -> None:
    """Delete our lease (never another run's); a failure only logs: the lease then expires."""
    try:
        holder, _etag, _present = _read_lease(uri)
        if holder is not None and holder.token == me.token:
            storage.delete(uri)
    except LetheError as e:
        log.warning("storage %s: could not release the lease: %s", storage.parent(uri), e.line())


@contextmanager
def _lease(uri: str, token: str, lease_s: float) -> Iterator[None]:
    me = Holder.me(token)
    if not take_lease(uri, me, lease_s):
        yield
        return
    try:
        with every(lease_s / 3, lambda: _renew(uri, me, lease_s), "lethe-lease"):
            yield
    finally:
        release_lease(uri, me)


# -- a pipeline run spread over pods: a lease file in the work dir ------------------------------------
# Read and written only by a process that holds the work dir's flock, so no two writers race.


def _read_pipeline_lease(root: Path) -> Holder | None:
    try:
        return Holder.parse((root / PIPELINE_LEASE_FILE).read_bytes())
    except OSError:
        return None


def _write_pipeline_lease(root: Path, holder: Holder) -> None:
    # Atomic: a reader sees the old lease or the new one, never half of one.
    storage.write_bytes(str(root / PIPELINE_LEASE_FILE), holder.renewed(PIPELINE_LEASE_S).to_bytes())


@contextmanager
def _pipeline_lease(root: Path) -> Iterator[None]:
    """Under the work dir's flock: refuse while another pipeline run's lease is live; renew ours
    (LETHE_PIPELINE_RUN names it) for as long as the lock is held."""
    lease = _read_pipeline_lease(root)
    mine = os.environ.get(RUN_ENV, "")
    if lease is None or (lease.token != mine and lease.expired()):
        if lease is not None:
            log.warning(
                "work dir %s: taking over the expired lease of pipeline run %s (%s, lease until %s)",
                root,
                lease.token,
                lease.describe(),
                lease.expires_at,
            )
            (root / PIPELINE_LEASE_FILE).unlink(missing_ok=True)
        yield
        return
    if lease.token != mine:
        raise WorkdirBusy(
            f"work dir {root} is in use by pipeline run {lease.token} ({lease.describe()}, "
            f"lease until {lease.expires_at})",
            expected="one run per work dir; wait for it or use another --workdir",
        )
    _write_pipeline_lease(root, lease)

    def renew() -> None:
        try:
            _write_pipeline_lease(root, lease)
        except LetheError as e:  # the lease still has time left: try again next period
            log.warning("work dir %s: could not renew the pipeline lease: %s", root, e.line())

    with every(PIPELINE_LEASE_S / 3, renew, "lethe-pipeline-lease"):
        yield


def start_pipeline_lease(cfg: RunConfig, run_id: str) -> None:
    """`begin` of a pipeline run on a cluster, under the work dir's lock: lease the work dir to
    `run_id` until its exit handler ends it. Nothing under a launcher that holds the lock for the
    whole run (`lethe pipeline run --local`): its lock is released by the kernel if it dies."""
    if not _own_holds:
        return
    _write_pipeline_lease(cfg.workdir_path, Holder.me(run_id))
    os.environ[RUN_ENV] = run_id


def end_pipeline_lease(cfg: RunConfig) -> None:
    """The exit handler, under the work dir's lock: delete its pipeline run's lease (never another's)."""
    lease = _read_pipeline_lease(cfg.workdir_path)
    if lease is not None and lease.token == os.environ.get(RUN_ENV):
        (cfg.workdir_path / PIPELINE_LEASE_FILE).unlink(missing_ok=True)


def join_pipeline_run(run_id: str | None) -> None:
    """A cluster task of pipeline run `run_id`: it may hold the work dir while that run's lease is
    live (and renews it). Under a local launcher's lock the launcher's token is what counts."""
    if run_id and not os.environ.get(TOKEN_ENV):
        os.environ[RUN_ENV] = run_id


__all__ = [
    "LEASE_OBJECT",
    "LOCK_FILE",
    "PIPELINE_LEASE_FILE",
    "RUN_ENV",
    "TOKEN_ENV",
    "Holder",
    "WorkdirBusy",
    "child_env",
    "end_pipeline_lease",
    "hold",
    "join_pipeline_run",
    "start_pipeline_lease",
]
