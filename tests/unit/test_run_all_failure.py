"""A run that fails or is stopped still deletes the forget data and certifies it (no Ray, no MLflow):
the SIGTERM handler of `lethe run`, cleanup of the models trained on the forget set, `run_all`'s
failure path with a stand-in tracker, and no credentials in what the orchestrators are handed."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from lethe.config import build_config
from lethe.data.shards import SHARD_NAMES, Manifest, ShardInfo
from lethe.errors import CheckpointError, DataError, LetheError
from lethe.pipeline import lifecycle
from lethe.pipeline.cleanup import delete_forget_data, delete_forget_models, forget_trained_model
from lethe.pipeline.context import Context
from lethe.pipeline.keys import featnet_key
from lethe.pipeline.layout import check_workdir, layout
from lethe.pipeline.lifecycle import Terminated, failure_line, run_all, sigterm_raises
from lethe.pipeline.state import RunState


def _cfg(tmp_path: Path, **over: Any):
    return build_config(
        "smoke", overrides={"workdir": str(tmp_path / "work"), "cache_dir": str(tmp_path / "cache"), **over}
    )


def _touch(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _split(lay) -> Manifest:
    """What `lethe split` leaves: four shard folders and the manifest (written last)."""
    shards = {}
    for name in SHARD_NAMES:
        _touch(lay.shards / name / "part-0.parquet")
        shards[name] = ShardInfo(name=name, path=str(lay.shards / name), count=3, digest=name[0] * 64)
    man = Manifest(
        dataset="digits",
        source_uri="/data/digits",
        class_names=["0", "1"],
        height=8,
        width=8,
        channels=1,
        request={"kind": "classes", "classes": ["1"]},
        shards=shards,
        request_digest="r" * 64,
        data_digest="d" * 64,
    )
    man.save(lay.shards)
    return man


# -- SIGTERM ------------------------------------------------------------------------------------------
def test_sigterm_raises_once_and_the_previous_handler_comes_back() -> None:
    seen: list[int] = []

    def previous(signum, frame):
        seen.append(signum)

    before = signal.signal(signal.SIGTERM, previous)
    try:
        with pytest.raises(Terminated) as exc:
            with sigterm_raises() as guard:
                assert signal.getsignal(signal.SIGTERM) == guard.handler
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises here, long before the sleep ends
        assert exc.value.code == 128 + signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) is previous
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert seen == [signal.SIGTERM]  # the restored handler is the one that runs now
    finally:
        signal.signal(signal.SIGTERM, before)


def test_a_sigterm_that_lands_in_a_weakref_callback_still_ends_the_run() -> None:
    # Python drops what a weakref callback raises. A `lethe run` once finished the whole pipeline
    # after its SIGTERM landed in a WeakSet's callback as pretrain started Ray Train (and the guard,
    # already shielded, would have ignored a second one).
    class Ref:
        pass

    before = signal.getsignal(signal.SIGTERM), sys.unraisablehook
    with pytest.raises(Terminated):
        with sigterm_raises():
            ref = Ref()
            # raise_signal runs the handler at once, inside the callback
            callback = weakref.ref(ref, lambda _: signal.raise_signal(signal.SIGTERM))
            del ref
            for _ in range(100):
                time.sleep(0.05)  # the signal sent again lands here
    assert callback() is None and (signal.getsignal(signal.SIGTERM), sys.unraisablehook) == before


def test_other_unraisable_exceptions_still_reach_the_hook_before() -> None:
    seen: list[type] = []
    before = sys.unraisablehook
    sys.unraisablehook = lambda arg: seen.append(arg.exc_type)
    try:
        with sigterm_raises():

            class Ref:
                pass

            ref = Ref()
            callback = weakref.ref(ref, lambda _: 1 / 0)
            del ref
        assert seen == [ZeroDivisionError] and callback() is None
    finally:
        sys.unraisablehook = before


def test_shielded_guard_ignores_a_second_sigterm_and_reinstalls_over_ray() -> None:
    before = signal.getsignal(signal.SIGTERM)
    try:
        with sigterm_raises() as guard:
            signal.signal(signal.SIGTERM, lambda s, f: None)  # what ray.init does to the driver
            guard.reinstall()
            assert signal.getsignal(signal.SIGTERM) == guard.handler
            guard.shield()  # cleaning up: a second SIGTERM must not cut it short
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGTERM) == before
    finally:
        signal.signal(signal.SIGTERM, before)


def test_the_sigint_handler_ray_train_leaves_behind_is_undone() -> None:
    before = signal.getsignal(signal.SIGINT)
    try:
        with sigterm_raises() as guard:
            signal.signal(signal.SIGINT, lambda s, f: None)  # what each Ray Train fit does to the driver
            guard.reinstall()  # between steps: Ctrl-C is KeyboardInterrupt again
            assert signal.getsignal(signal.SIGINT) == before
            signal.signal(signal.SIGINT, lambda s, f: None)
        assert signal.getsignal(signal.SIGINT) == before
    finally:
        signal.signal(signal.SIGINT, before)


def test_sigterm_raises_installs_nothing_outside_the_main_thread() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen = []

    def worker() -> None:
        with sigterm_raises():
            seen.append(signal.getsignal(signal.SIGTERM))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [before] and signal.getsignal(signal.SIGTERM) == before


def test_failure_lines() -> None:
    assert failure_line(Terminated()) == "terminated by SIGTERM"
    assert failure_line(KeyboardInterrupt()) == "interrupted (Ctrl-C)"
    assert failure_line(DataError("bad", where="http://u:secret@h/x")) == "bad; at http://h/x"
    assert failure_line(ZeroDivisionError()).startswith("internal error ZeroDivisionError")


# -- cleanup of the models trained on the forget set --------------------------------------------------
def test_cleanup_deletes_every_copy_of_the_forget_trained_models(tmp_path: Path, monkeypatch) -> None:
    cfg = _cfg(
        tmp_path,
        family="gan",
        method="latent_feature",
        request={"kind": "feature", "feature": "glasses"},
        data={"dataset": "avataaars"},
    )
    lay = check_workdir(cfg)
    state = RunState(pretrain={"featnet": {"cache_key": "kf", "feature_clf.cache_key": "kc"}})
    node_tmp = tmp_path / "node-tmp"  # this node's temp dir, where a killed worker staged checkpoints
    monkeypatch.setattr(tempfile, "tempdir", str(node_tmp))
    doomed = [
        _touch(node_tmp / "lethe-ckpt-featnet-kf-x1y2z3" / "model.pt"),
        _touch(lay.model("featnet")),
        _touch(lay.model("feature_clf")),
        _touch(lay.cached("featnet", "kf")),
        _touch(lay.cached("featnet", "kf").with_suffix(".json")),
        _touch(lay.cached("feature_clf", "kc")),
        _touch(lay.model("featnet").with_name(".featnet.pt.ab12cd")),  # an interrupted atomic write
        _touch(lay.ray_storage / "featnet-kf" / "checkpoint_000000" / "model.pt"),
        _touch(lay.ray_storage / "feature_clf-kc" / "lethe_finished.json"),
    ]
    kept = [
        _touch(lay.model("original")),
        _touch(lay.model("oracle")),
        _touch(lay.cached("gan", "ko")),
        _touch(lay.cached("featnet", "another-data-set")),
        _touch(lay.ray_storage / "gan-ko" / "checkpoint_000000" / "model.pt"),
        _touch(node_tmp / "lethe-ckpt-gan-ko-a1b2c3" / "model.pt"),  # the source's: not forget-trained
    ]
    deleted = delete_forget_models(cfg, lay, state)
    assert not [p for p in doomed if p.exists()]
    assert not (lay.ray_storage / "featnet-kf").exists()
    assert all(p.exists() for p in kept)
    assert {d["model"] for d in deleted} == {"featnet", "feature_clf"}
    assert all(d["absent_after"] for d in deleted)
    existed = {(d["model"], d["copy"]) for d in deleted if d["existed"]}
    assert ("featnet", "work dir") in existed and ("featnet", "ray checkpoints") in existed
    assert ("featnet", "worker temp copy") in existed and not (
        node_tmp / "lethe-ckpt-featnet-kf-x1y2z3"
    ).exists()
    assert ("feature_clf", "model cache") in existed
    assert ("feature_clf", "model cache numbers") not in existed  # never written: listed, absent
    assert "shard" not in deleted[0] and {"uri", "copy", "at"} <= set(deleted[0])


def test_cleanup_finds_a_feature_net_pretrain_never_recorded(tmp_path: Path) -> None:
    """pretrain failed after caching the feature net: the key comes from the config and manifest."""
    cfg = _cfg(tmp_path)
    lay = check_workdir(cfg)
    man = _split(lay)
    key = featnet_key(cfg, man)
    cached = _touch(lay.cached("featnet", key))
    deleted = delete_forget_data(cfg, lay, RunState())
    assert not cached.exists()
    assert not (lay.shards / "forget").exists() and not (lay.shards / "heldout_forget").exists()
    assert (lay.shards / "retain").exists() and (lay.shards / "heldout_retain").exists()
    assert [d["shard"] for d in deleted if "shard" in d] == ["forget", "heldout_forget"]
    assert not [d for d in deleted if d.get("model") == "feature_clf"]  # not a generator run
    assert all(d["absent_after"] for d in deleted)


def test_evaluate_after_cleanup_says_what_to_run(tmp_path: Path) -> None:
    lay = check_workdir(_cfg(tmp_path))
    with pytest.raises(CheckpointError) as e:
        forget_trained_model(lay, "featnet")
    line = e.value.line()
    assert "feature net is missing" in line and "lethe pretrain" in line and "\n" not in line


# -- run_all's failure path ---------------------------------------------------------------------------
class FakeTracker:
    """Records what `run_all` asks of the tracker; a run's status as the real context managers set it."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.tags: dict[str, dict[str, str]] = {}
        self.artifacts: list[tuple[str, str]] = []
        self._n = 0

    @contextmanager
    def _run(self, name: str) -> Iterator[str]:
        self._n += 1
        run_id = f"{name}-{self._n}"
        self.status[run_id] = "RUNNING"
        try:
            yield run_id
        except BaseException as exc:
            killed = isinstance(exc, (KeyboardInterrupt, SystemExit))
            self.status[run_id] = "KILLED" if killed else "FAILED"
            raise
        self.status[run_id] = "FINISHED"

    def pipeline_run(self, name, params, tags):
        return self._run("pipeline")

    def step(self, name, params=None, parent_run_id=None):
        return self._run(name)

    def set_run_tags(self, run_id: str, tags: dict[str, str]) -> None:
        self.tags.setdefault(run_id, {}).update(tags)

    def log_artifact_to(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.artifacts.append((run_id, Path(path).name))

    def log_metrics(self, *a, **k) -> None: ...

    def log_params(self, *a, **k) -> None: ...

    def log_dict(self, *a, **k) -> None: ...


def _failing_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail) -> tuple[Any, FakeTracker]:
    cfg = _cfg(tmp_path)
    tracker = FakeTracker()

    def make_context(c, parent_run_id=None):
        lay = check_workdir(c)
        return Context(cfg=c, lay=lay, tracker=tracker, state=RunState(), parent_run_id=parent_run_id)

    def split(ctx):
        with ctx.step("split"):
            man = _split(ctx.lay)
            _touch(ctx.lay.model("featnet"))  # as if an earlier step had made it
            ctx.state.split = {"request_digest": man.request_digest}

    def pretrain(ctx):
        with ctx.step("pretrain"):
            fail()

    monkeypatch.setattr(lifecycle, "make_context", make_context)
    monkeypatch.setitem(lifecycle.RUNNERS, "split", split)
    monkeypatch.setitem(lifecycle.RUNNERS, "pretrain", pretrain)
    return cfg, tracker


def _raise(exc: BaseException):
    def fail() -> None:
        raise exc

    return fail


def test_a_failed_lethe_run_deletes_the_forget_data_and_certifies_incomplete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, tracker = _failing_run(tmp_path, monkeypatch, _raise(DataError("boom", where="http://u:secret@h/x")))
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(DataError):
        run_all(cfg)
    assert signal.getsignal(signal.SIGTERM) == before
    lay = layout(cfg)
    assert not (lay.shards / "forget").exists() and not (lay.shards / "heldout_forget").exists()
    assert not lay.model("featnet").exists() and (lay.shards / "retain").exists()
    state = json.loads(lay.state.read_text())
    assert state["failed"]["step"] == "pretrain" and state["failed"]["error"] == "boom; at http://h/x"
    cert = json.loads((lay.certificate_dir / "certificate.json").read_text())
    assert cert["status"] == "incomplete" and cert["error"] == "pretrain: boom; at http://h/x"
    assert cert["pipeline"]["orchestrator"] == "lethe run" and cert["cleanup"]["all_absent"] is True
    assert {d.get("shard") for d in cert["cleanup"]["deleted"]} >= {"forget", "heldout_forget"}
    assert any(d.get("model") == "featnet" and d["existed"] for d in cert["cleanup"]["deleted"])
    assert "secret" not in json.dumps(cert)
    # the pipeline run: failure tags, then FAILED as the error left pipeline_run; cleanup ran as a step
    pipeline = next(r for r in tracker.status if r.startswith("pipeline"))
    assert tracker.status[pipeline] == "FAILED"
    assert tracker.tags[pipeline]["lethe.status"] == "failed"
    assert tracker.tags[pipeline]["lethe.error"].startswith("pretrain: boom")
    assert [s for r, s in tracker.status.items() if r.startswith("cleanup")] == ["FINISHED"]
    assert (pipeline, "certificate.json") in tracker.artifacts


@pytest.mark.parametrize(
    ("fail", "exc_type", "line", "status"),
    [
        (_raise(KeyboardInterrupt()), KeyboardInterrupt, "interrupted (Ctrl-C)", "KILLED"),
        (
            lambda: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(5)),
            Terminated,
            "terminated by SIGTERM",
            "KILLED",
        ),
        (_raise(ZeroDivisionError()), ZeroDivisionError, "internal error ZeroDivisionError", "FAILED"),
        (_raise(SystemExit(0)), SystemExit, "stopped (exit status 0)", "KILLED"),
    ],
    ids=["ctrl-c", "sigterm", "bug", "sys-exit-0"],
)
def test_an_interrupted_lethe_run_cleans_up_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail, exc_type, line: str, status: str
) -> None:
    cfg, tracker = _failing_run(tmp_path, monkeypatch, fail)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(exc_type) as raised:
        run_all(cfg)
    if isinstance(raised.value, SystemExit):
        assert raised.value.code  # never a zero exit status for a run that did not finish
    assert signal.getsignal(signal.SIGTERM) == before
    lay = layout(cfg)
    assert not (lay.shards / "forget").exists() and not lay.model("featnet").exists()
    cert = json.loads((lay.certificate_dir / "certificate.json").read_text())
    assert cert["status"] == "incomplete" and cert["error"].startswith(f"pretrain: {line}")
    pipeline = next(r for r in tracker.status if r.startswith("pipeline"))
    assert tracker.status[pipeline] == status


def test_a_failed_run_without_a_tracking_store_still_deletes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tracker is gone by the time of the failure: cleanup cannot open its step, the forget data
    goes anyway and the step's own error is the one raised."""
    cfg, tracker = _failing_run(tmp_path, monkeypatch, _raise(DataError("boom")))

    def broken_step(name, params=None, parent_run_id=None):
        if name == "cleanup":
            raise LetheError("cannot use the MLflow tracking store")
        return FakeTracker._run(tracker, name)

    monkeypatch.setattr(tracker, "step", broken_step)
    with pytest.raises(DataError, match="boom"):
        run_all(cfg)
    lay = layout(cfg)
    assert not (lay.shards / "forget").exists() and not lay.model("featnet").exists()
    state = json.loads(lay.state.read_text())
    assert all(d["absent_after"] for d in state["cleanup"]["deleted"])
    cert = json.loads((lay.certificate_dir / "certificate.json").read_text())
    assert cert["status"] == "incomplete" and "cleanup: cannot use the MLflow tracking store" in cert["error"]


def test_a_run_that_fails_in_its_split_certifies_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest left by an earlier run is not this run's request: no certificate over it."""
    cfg, tracker = _failing_run(tmp_path, monkeypatch, _raise(DataError("unused")))
    lay = check_workdir(cfg)
    _split(lay)  # an earlier run's shards (its cleanup already ran: the forget shards go again)

    def split(ctx):
        with ctx.step("split"):
            raise DataError("bad class")

    monkeypatch.setitem(lifecycle.RUNNERS, "split", split)
    with pytest.raises(DataError, match="bad class"):
        run_all(cfg)
    assert not (lay.certificate_dir / "certificate.json").exists()
    assert not (lay.shards / "forget").exists()
    state = json.loads(lay.state.read_text())
    assert state["failed"]["step"] == "split"
    pipeline = next(r for r in tracker.status if r.startswith("pipeline"))
    assert (
        tracker.status[pipeline] == "FAILED" and tracker.tags[pipeline]["lethe.error"] == "split: bad class"
    )


# -- no credentials in what the orchestrators are handed ----------------------------------------------
def test_orchestrator_arguments_carry_no_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lethe.orchestration.kfp_client import pipeline_arguments
    from lethe.orchestration.ray_submit import job_entrypoint

    password = "s3cr3t-Pa55word"
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "lethe")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    cfg = _cfg(
        tmp_path,
        tracking={"tracking_uri": "http://mlflow.example:5000"},
        resources={"ray_address": "http://head:8265"},
    )
    args = json.dumps(pipeline_arguments(cfg))
    entry = job_entrypoint(cfg, "unlearn", "run-1")
    for text in (args, entry):
        assert password not in text and "MLFLOW_TRACKING_PASSWORD" not in text
        assert "http://mlflow.example:5000" in text  # the plain URI travels; MLflow adds the credentials


def test_ctrl_c_ends_the_command_in_one_line_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """run_all has ended the run by then (the test above); the terminal gets one line, exit 130."""
    from lethe import cli, pipeline

    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_all", interrupted)
    rc = cli.main(["run", "--preset", "smoke", "--dataset", "digits", "--workdir", str(tmp_path / "w")])
    out, err = capsys.readouterr()
    assert rc == 128 + signal.SIGINT and not out
    assert err.strip().splitlines()[-1] == "lethe: interrupted (Ctrl-C)" and "Traceback" not in err
