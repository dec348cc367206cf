"""lethe.execution.progress: the workers' progress lines become bars on a terminal, and only there."""

from __future__ import annotations

import io
import time

import pytest

from lethe.execution.progress import Bars, parse
from lethe.execution.worker import epoch_progress
from lethe.orchestration.local_screen import TaskLines


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _epoch_line(capsys: pytest.CaptureFixture[str], done: int, total: int) -> str:
    # The line exactly as a worker writes it (lethe.execution.worker.epoch_progress).
    epoch_progress("pretrain main", 2, 8, done, total, "loss 0.0213", time.perf_counter() - 1.0)
    return capsys.readouterr().err.strip()


def test_the_workers_lines_parse(capsys: pytest.CaptureFixture[str]) -> None:
    line = _epoch_line(capsys, 6400, 54000)
    assert line.startswith("lethe: pretrain main epoch 2/8: 6400/54000 images, loss 0.0213, ")
    p = parse(f"\x1b[36m(RayTrainWorker pid=7)\x1b[0m {line}")
    assert p is not None
    assert (p["desc"], p["done"], p["total"], p["unit"]) == ("pretrain main epoch 2/8", 6400, 54000, "img")
    assert p["postfix"].startswith("loss 0.0213, ") and p["postfix"].endswith(" img/s")
    step = parse("lethe: unlearn step 30/47: loss 0.01235, 900 img/s")
    assert step is not None and (step["done"], step["total"], step["unit"]) == (30, 47, "step")
    gan = parse("lethe: pretrain gan epoch 1/8: 128/1500 images, gen 0.7, disc 1.3, 90 img/s")
    assert gan is not None and gan["postfix"] == "gen 0.7, disc 1.3, 90 img/s"
    search = parse("lethe: search trial 5/14")  # the search's driver (lethe.execution.tune)
    assert search is not None and (search["desc"], search["done"], search["total"], search["unit"]) == (
        "search",
        5,
        14,
        "trial",
    )
    assert parse("lethe: unlearn step 3: stage ascent -> retain (lambda 0.2)") is None
    assert parse("lethe: == split") is None


def test_bars_only_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    line = _epoch_line(capsys, 6400, 54000)
    assert not Bars(io.StringIO()).feed(line)  # a log or a pipe keeps the line itself
    screen = Terminal()
    bars = Bars(screen)
    assert bars.feed(line) and bars.feed(_epoch_line(capsys, 54000, 54000))
    out = screen.getvalue()
    assert "pretrain main epoch 2/8" in out and "100%" in out and "54000/54000" in out
    assert not bars.feed("lethe: unlearn step 3: stage ascent -> retain")


def test_a_bar_that_starts_mid_epoch_counts_the_epoch_from_its_start() -> None:
    # The first line a driver sees comes 50 batches into the epoch: 6400 images at 640 img/s, 10 s.
    screen = Terminal()
    bars = Bars(screen)
    assert parse("lethe: pretrain main epoch 1/3: 6400/60000 images, loss 0.1, 640 img/s")["elapsed"] == 10
    assert parse("lethe: unlearn step 30/47: loss 0.01235, 900 img/s")["elapsed"] is None
    bars.feed("lethe: pretrain main epoch 1/3: 6400/60000 images, loss 0.1, 640 img/s")
    bars.feed("lethe: pretrain main epoch 1/3: 60000/60000 images, loss 0.05, 640 img/s")
    assert "[00:10<" in screen.getvalue()  # not the 00:00 of a bar that started with the line


def test_a_local_pipeline_shows_task_lines_and_bars_and_logs_everything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    progress_line = _epoch_line(capsys, 128, 1346)
    for screen, bar in ((Terminal(), True), (io.StringIO(), False)):
        log = io.StringIO()
        stream = TaskLines(log, screen)
        stream.write("12:00:01.000 - INFO - Executing task \x1b[96m'oracle'\x1b[0m\n")
        stream.write(
            f"    \x1b[36m(RayTrainWorker pid=9)\x1b[0m {progress_line}\n    [KFP Executor] chatter\n"
        )
        stream.write(
            "12:00:09.000 - INFO - Task \x1b[96m'oracle'\x1b[0m finished with status \x1b[92mSUCCESS"
        )
        stream.write("\x1b[0m\n")
        shown = screen.getvalue()
        assert "oracle ..." in shown and "oracle: success in " in shown and "chatter" not in shown
        assert ("128/1346" in shown) is bar
        assert "chatter" in log.getvalue() and progress_line in log.getvalue()
