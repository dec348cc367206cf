"""Waiting on a real process the tests started: until its log shows a line, or it died."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def wait_for_output(proc: subprocess.Popen, log_path: Path, needle: str, timeout_s: float = 600) -> None:
    """Return once `needle` is in the file `proc` writes its stderr to; AssertionError (with the
    log's tail) if the process ends first or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while needle not in (text := log_path.read_text(errors="replace")):
        assert proc.poll() is None, f"exited with {proc.returncode} before {needle!r}:\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"no {needle!r} after {timeout_s:.0f} s:\n{text[-3000:]}"
        time.sleep(0.5)
