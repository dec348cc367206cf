"""lethe.errors: the error a user sees behind Ray's wrappers of a worker's or a task's failure."""

from __future__ import annotations

import logging

import pytest
from ray.exceptions import RayTaskError

from lethe.errors import DataError, lethe_errors_unwrapped


def _hybrid(err: Exception) -> Exception:
    # What ray.get raises for a task that raised `err`: a RayTaskError(DataError) hybrid whose str()
    # is the worker's whole traceback.
    return RayTaskError(
        "_run_job", "Traceback (most recent call last):\n  ...\nDataError: x", err
    ).as_instanceof_cause()


def test_a_wrapped_lethe_error_is_raised_as_its_own_class_in_one_line() -> None:
    err = DataError("shard is corrupt", where="/w/shards/retain", expected="sha256 a", seen="sha256 b")
    hybrid = _hybrid(err)
    assert isinstance(hybrid, DataError) and "\n" in str(hybrid)  # what the helper must undo
    with pytest.raises(DataError) as caught, lethe_errors_unwrapped():
        raise hybrid
    assert type(caught.value) is DataError and "\n" not in str(caught.value)
    assert (caught.value.what, caught.value.where, caught.value.seen) == (err.what, err.where, err.seen)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_lethe_error_found_through_the_cause_chain() -> None:
    err = DataError("no rows", where="forget")
    try:
        try:
            raise err
        except DataError as inner:
            raise RuntimeError("Training failed") from inner  # as Ray Train's TrainingFailedError wraps
    except RuntimeError as outer:
        wrapped = outer
    with pytest.raises(DataError) as caught, lethe_errors_unwrapped():
        raise wrapped
    assert caught.value is err


def test_a_plain_lethe_error_keeps_its_cause() -> None:
    err = DataError("bad row", where="forget")
    with pytest.raises(DataError) as caught, lethe_errors_unwrapped():
        raise err from KeyError("id")
    assert caught.value is err and isinstance(caught.value.__cause__, KeyError)


def test_any_other_error_goes_on_unchanged_and_is_logged_by_step(caplog: pytest.LogCaptureFixture) -> None:
    boom = RuntimeError("worker died")
    with caplog.at_level(logging.ERROR, logger="lethe"):
        with pytest.raises(RuntimeError) as caught, lethe_errors_unwrapped("writing shard retain"):
            raise boom
    assert caught.value is boom
    assert [r.getMessage() for r in caplog.records] == ["writing shard retain failed: RuntimeError"]
