"""What `lethe pipeline run --local` shows on the terminal: one line per task as it starts and ends
(with its duration) and, on a terminal, a bar for each training job inside a task, while kfp's local runner's own output (every task's executor input and output
JSON, its streamed logs) goes to a log file under the work dir."""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from lethe.execution.progress import Bars

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")  # colour codes, as kfp and Ray print them
_START = re.compile(r"Executing task '(?P<task>[^']+)'")
_END = re.compile(r"Task '(?P<task>[^']+)' finished with status (?P<status>\w+)")


class TaskLines:
    """A text stream for kfp's runner: everything to `log`, a short line per task event to `screen`."""

    def __init__(self, log: TextIO, screen: TextIO) -> None:
        self._log, self._screen = log, screen
        self._partial = ""
        self._started: dict[str, float] = {}
        self._bars = Bars(screen)  # training progress inside a task, as a bar on a terminal

    def write(self, text: str) -> int:
        self._log.write(text)
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._event(ANSI_ESCAPE.sub("", line))
        return len(text)

    def _event(self, line: str) -> None:
        if self._bars.feed(line):
            return
        if m := _START.search(line):
            self._started[m["task"]] = time.perf_counter()
            self._say(f"[{time.strftime('%H:%M:%S')}] {m['task']} ...")
        elif m := _END.search(line):
            t0 = self._started.pop(m["task"], None)
            took = f" in {time.perf_counter() - t0:.1f} s" if t0 is not None else ""
            self._say(f"[{time.strftime('%H:%M:%S')}] {m['task']}: {m['status'].lower()}{took}")

    def _say(self, line: str) -> None:
        self._bars.close()
        self._screen.write(line + "\n")
        self._screen.flush()

    def flush(self) -> None:
        self._log.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def task_lines(log_path: Path, screen: TextIO | None = None) -> Iterator[Path]:
    """Within: sys.stdout (where kfp's local runner prints) is the task-line stream over `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        stream = TaskLines(log, screen or sys.stderr)
        with contextlib.redirect_stdout(stream):  # type: ignore[type-var]
            yield log_path
