"""One run per work dir (lethe/pipeline/workdir_lock.py): the OS file lock, against real processes.

Each test starts real Python subprocesses that take the lock; no Ray, no training. The s3:// lease
is tested against the real SeaweedFS server in tests/integration/test_workdir_lease.py.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lethe.config import RunConfig, build_config
from lethe.errors import StorageError
from lethe.pipeline.workdir_lock import (
    LOCK_FILE,
    PIPELINE_LEASE_FILE,
    RUN_ENV,
    TOKEN_ENV,
    Holder,
    WorkdirBusy,
    child_env,
    end_pipeline_lease,
    hold,
    join_pipeline_run,
    start_pipeline_lease,
)

# Takes the lock on argv[1], says so, holds it until stdin closes; exit 3 with the line if refused.
HOLDER = """
import sys
from lethe.config import build_config
from lethe.pipeline.workdir_lock import hold
cfg = build_config("smoke", overrides={"workdir": sys.argv[1]})
try:
    with hold(cfg):
        print("held", flush=True)
        sys.stdin.read()
except Exception as e:
    print("refused:", e, flush=True)
    sys.exit(3)
"""


def _cfg(work: Path) -> RunConfig:
    return build_config("smoke", overrides={"workdir": str(work)})


def _env(inherit: bool) -> dict[str, str]:
    env = {**os.environ}
    if not inherit:
        env.pop(TOKEN_ENV, None)
    return env


@pytest.fixture()
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A real other process holding the lock on tmp_path/work (started as `holder.py run ...`)."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "work"), "run", "--preset", "smoke"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(inherit=False),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_second_run_is_refused_naming_the_holder_and_writes_nothing(
    tmp_path: Path, holder: subprocess.Popen[str], caplog: pytest.LogCaptureFixture
) -> None:
    work = tmp_path / "work"
    before = _snapshot(tmp_path)
    with pytest.raises(WorkdirBusy) as err, hold(_cfg(work)):
        pytest.fail("the lock was granted twice")
    line = err.value.line()
    assert line.startswith(f"work dir {work} is in use by another lethe run (pid {holder.pid} on host ")
    assert f"`holder.py {work} run --preset smoke`, since 20" in line
    assert "expected one run per work dir; wait for it or use another --workdir" in line
    assert "\n" not in line
    assert _snapshot(tmp_path) == before  # not a byte written: the holder's record is intact
    assert TOKEN_ENV not in os.environ

    # The holder ends cleanly: the lock is free, and there is no dead run to report.
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0
    assert (work / LOCK_FILE).read_bytes() == b""
    with caplog.at_level(logging.WARNING, logger="lethe"), hold(_cfg(work)):
        assert Holder.parse((work / LOCK_FILE).read_bytes()).pid == os.getpid()  # type: ignore[union-attr]
    assert "taking over" not in caplog.text


def test_the_lock_of_a_dead_run_is_taken_over_and_logged(
    tmp_path: Path, holder: subprocess.Popen[str], caplog: pytest.LogCaptureFixture
) -> None:
    work = tmp_path / "work"
    holder.send_signal(signal.SIGKILL)  # dies without releasing: its record stays in the file
    holder.wait(timeout=30)
    assert Holder.parse((work / LOCK_FILE).read_bytes()).pid == holder.pid  # type: ignore[union-attr]
    with caplog.at_level(logging.WARNING, logger="lethe"), hold(_cfg(work)):
        assert Holder.parse((work / LOCK_FILE).read_bytes()).pid == os.getpid()  # type: ignore[union-attr]
    assert f"taking over the lock of dead run pid {holder.pid} on host " in caplog.text
    assert f"`holder.py {work} run --preset smoke`" in caplog.text


def test_child_processes_inherit_the_lock_and_others_are_refused(tmp_path: Path) -> None:
    work = tmp_path / "work"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)

    def child(inherit: bool) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), str(work)],
            input="",
            capture_output=True,
            text=True,
            env=_env(inherit),
            timeout=120,
        )

    with hold(_cfg(work)):
        token = os.environ[TOKEN_ENV]
        record = (work / LOCK_FILE).read_bytes()
        assert Holder.parse(record).token == token  # type: ignore[union-attr]
        with hold(_cfg(work)):  # a nested call in the holder proceeds too
            pass
        assert os.environ[TOKEN_ENV] == token and (work / LOCK_FILE).read_bytes() == record
        inherited = child(inherit=True)
        assert inherited.returncode == 0 and inherited.stdout.strip() == "held", inherited.stdout
        assert (work / LOCK_FILE).read_bytes() == record  # the child did not re-take or release it
        foreign = child(inherit=False)
        assert foreign.returncode == 3 and f"pid {os.getpid()} on host" in foreign.stdout
    assert TOKEN_ENV not in os.environ
    assert child(inherit=False).returncode == 0  # released


def test_an_unwritable_work_dir_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StorageError, match="work dir is not writable") as err, hold(_cfg(blocker / "w")):
        pass
    assert str(blocker / "w") in err.value.line()


def test_holder_records() -> None:
    me = Holder.me("t")
    assert Holder.parse(me.to_bytes()) == me and Holder.parse(b"") is None and Holder.parse(b"{") is None
    assert Holder.parse(b'{"token": "t"}') is None  # a record without its fields is no holder
    assert not me.renewed(60).expired() and me.renewed(-1).expired() and me.expired()


# -- a Kubeflow pipeline run on a cluster: each task a pod, the work dir leased from begin to cleanup --


@pytest.fixture()
def pod(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This process as a fresh pod: no launcher's lock token, no pipeline run joined yet."""
    monkeypatch.setenv(RUN_ENV, "")
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    yield
    os.environ.pop(RUN_ENV, None)


def _task_of(cfg: RunConfig, run_id: str | None):
    """A later task's pod of pipeline run `run_id` (None: a run that is no task of any pipeline)."""
    os.environ.pop(RUN_ENV, None)
    join_pipeline_run(run_id)
    return hold(cfg)


def _lease(work: Path) -> Holder | None:
    path = work / PIPELINE_LEASE_FILE
    return Holder.parse(path.read_bytes()) if path.is_file() else None


def test_a_pipeline_run_on_a_cluster_holds_its_work_dir_between_its_tasks(
    tmp_path: Path, pod: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    cfg = _cfg(work)
    with hold(cfg):  # begin of run A: it opens its MLflow run, then leases the work dir to it
        start_pipeline_lease(cfg, "run-a")
    first = _lease(work)
    assert first is not None and first.token == "run-a" and not first.expired()
    assert (work / LOCK_FILE).read_bytes() == b""  # begin's pod is gone: only the lease holds the dir

    # Between A's tasks, another run (a second pipeline run's begin, a `lethe run`) is refused.
    with pytest.raises(WorkdirBusy) as err, _task_of(cfg, None):
        pytest.fail("a second run got the work dir while pipeline run A holds it")
    line = err.value.line()
    assert line.startswith(f"work dir {work} is in use by pipeline run run-a (pid {os.getpid()} on host ")
    assert "lease until 20" in line and "wait for it or use another --workdir" in line
    with pytest.raises(WorkdirBusy), _task_of(cfg, "run-b"):
        pytest.fail("a task of another pipeline run got the work dir")

    # A's own later task gets it and renews the lease; a Ray job it submits runs as A's task too.
    monkeypatch.setattr("lethe.pipeline.workdir_lock.PIPELINE_LEASE_S", 1800.0)
    with _task_of(cfg, "run-a"):
        assert child_env()[RUN_ENV] == "run-a"
    renewed = _lease(work)
    assert renewed is not None and renewed.expires_at > first.expires_at

    # A's exit handler ends the lease; then the work dir is free for anyone.
    with _task_of(cfg, "run-a"):
        end_pipeline_lease(cfg)
    assert _lease(work) is None
    with _task_of(cfg, None):
        pass


def test_the_lease_of_a_dead_pipeline_run_expires_and_is_taken_over(
    tmp_path: Path, pod: None, caplog: pytest.LogCaptureFixture
) -> None:
    work = tmp_path / "work"
    cfg = _cfg(work)
    work.mkdir()
    (work / PIPELINE_LEASE_FILE).write_bytes(Holder.me("run-dead").renewed(-1).to_bytes())
    with caplog.at_level(logging.WARNING, logger="lethe"), _task_of(cfg, None):
        pass
    assert f"work dir {work}: taking over the expired lease of pipeline run run-dead" in caplog.text
    assert _lease(work) is None
    with hold(cfg):  # a new pipeline run can lease it now
        start_pipeline_lease(cfg, "run-new")
    assert _lease(work).token == "run-new"  # type: ignore[union-attr]


def test_a_local_pipeline_run_leaves_no_lease(tmp_path: Path, pod: None) -> None:
    """Under `lethe pipeline run --local` the launcher holds the lock for the whole run, and the
    kernel drops it if the launcher dies: begin writes no lease that could outlive a killed run."""
    cfg = _cfg(tmp_path / "work")
    with hold(cfg):  # the launcher
        env = {**os.environ}
        assert (
            subprocess.run(
                [sys.executable, "-c", _BEGIN_UNDER_LAUNCHER, str(tmp_path / "work")], env=env, timeout=120
            ).returncode
            == 0
        )
    assert _lease(tmp_path / "work") is None


_BEGIN_UNDER_LAUNCHER = """
import sys
from lethe.config import build_config
from lethe.pipeline.workdir_lock import hold, start_pipeline_lease
cfg = build_config("smoke", overrides={"workdir": sys.argv[1]})
with hold(cfg):
    start_pipeline_lease(cfg, "run-local")
"""


def test_kfp_tasks_join_their_pipeline_run(tmp_path: Path, pod: None) -> None:
    """A task with the run id as input joins that run; the cached ones and the exit handler, which
    get no run id, join the run begin recorded in state.json."""
    from lethe.orchestration.kfp_steps import _component

    work = tmp_path / "work"
    cfg = _cfg(work)
    with hold(cfg):
        start_pipeline_lease(cfg, "run-a")
    (work / "state.json").write_text('{"run_id": "run-a"}')
    for step, run_id in (("promote", "run-a"), ("oracle", None), ("cleanup", None)):
        os.environ.pop(RUN_ENV, None)
        with _component(step, cfg, run_id), hold(cfg):
            assert os.environ[RUN_ENV] == "run-a"
    # Only a KFP task's own process, which ends with its step, freezes its heap for a quick exit.
    assert gc.get_freeze_count() == 0
    os.environ.pop(RUN_ENV, None)
    with pytest.raises(WorkdirBusy), _component("promote", cfg, "run-b"), hold(cfg):
        pytest.fail("a task of another pipeline run got the work dir")
