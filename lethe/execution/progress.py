"""Training progress on the driver's terminal: the workers' progress lines, turned into bars.

A Ray Train worker reports its progress as plain lines (lethe.execution.worker.epoch_progress:
"lethe: pretrain main epoch 2/8: 6400/54000 images, loss 0.0213, 640 img/s"; "lethe: unlearn step
30/47: loss 0.0123, 900 img/s"; the search's driver: "lethe: search trial 5/14"), which Ray
forwards to the driver (and kfp's local runner into its log). Where the driver's terminal is a TTY,
`Bars.feed` renders them as one tqdm bar per job (images or steps, img/s, ETA) instead of lines; where
it is not (CI logs, tests, a pipe), nothing changes: the lines are the record.
"""

from __future__ import annotations

import re
import shutil
import sys
from typing import Any, TextIO

_EPOCH = re.compile(
    r"lethe: (?P<job>[\w ]+?) epoch (?P<epoch>\d+)/(?P<epochs>\d+): (?P<done>\d+)/(?P<total>\d+) images"
    r"(?:, (?P<post>.*))?$"
)
_RATE = re.compile(r"(?P<rate>\d+(?:\.\d+)?) img/s")
_STEP = re.compile(
    r"lethe: (?P<job>(?:feature )?unlearn|evaluate|search) (?P<unit>step|trial) (?P<done>\d+)/(?P<total>\d+)"
    r"(?:: (?P<post>.*))?$"
)


def parse(line: str) -> dict[str, Any] | None:
    """The bar a progress line stands for: {key, desc, done, total, unit, postfix, elapsed}; None
    otherwise. elapsed: the seconds the job has run so far, where the line tells (images / img/s)."""
    if m := _EPOCH.search(line):
        rate = _RATE.search(m["post"] or "")
        return {
            "key": f"{m['job']} epoch {m['epoch']}",
            "desc": f"{m['job']} epoch {m['epoch']}/{m['epochs']}",
            "done": int(m["done"]),
            "total": int(m["total"]),
            "unit": "img",
            "postfix": m["post"] or "",
            "elapsed": int(m["done"]) / float(rate["rate"]) if rate and float(rate["rate"]) > 0 else None,
        }
    if m := _STEP.search(line):
        return {
            "key": m["job"],
            "desc": m["job"],
            "done": int(m["done"]),
            "total": int(m["total"]),
            "unit": m["unit"],
            "postfix": m["post"] or "",
            "elapsed": None,
        }
    return None


class Bars:
    """One live tqdm bar at a time on `stream` (stderr), fed with progress lines."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._bar: Any = None
        self._key: str | None = None

    @property
    def live(self) -> bool:
        """Bars only on a terminal: elsewhere the progress lines themselves are the record."""
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def feed(self, line: str) -> bool:
        """Show `line` as a bar; True when it was a progress line and the bar took it."""
        if not self.live:
            return False
        p = parse(line)
        if p is None:
            return False
        if p["key"] != self._key:
            self.close()
            from tqdm import tqdm

            # A terminal that reports no size (a pty under `script`, some CI consoles) would hide
            # tqdm's bar (it counts 0 rows): fall back to 100 x 20.
            size = shutil.get_terminal_size((100, 20))
            self._bar = tqdm(
                total=p["total"],
                desc=p["desc"],
                unit=p["unit"],
                file=self.stream,
                leave=True,
                ncols=size.columns or 100,
                nrows=size.lines or 20,
                # The worker's own img/s is in the postfix; tqdm's rate would count progress lines.
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]",
            )
            self._key = p["key"]
            if p["elapsed"]:
                # A worker's first line comes 50 batches (and Ray's log forwarding) into its epoch:
                # date the bar's start back to the epoch's, so elapsed and ETA count the whole epoch.
                self._bar.start_t -= p["elapsed"]
        self._bar.n = min(p["done"], p["total"])
        self._bar.set_postfix_str(p["postfix"], refresh=False)
        self._bar.refresh()
        if p["done"] >= p["total"]:
            self.close()
        return True

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._key = None, None


class InProcess:
    """progress(done, total) for work in this process (the evaluation, the search's trials): a bar on
    a terminal; elsewhere a progress line at each quarter, which a local pipeline's screen turns into
    a bar in turn."""

    def __init__(self, job: str, stream: TextIO | None = None, unit: str = "step") -> None:
        self.job, self.unit, self.out = job, unit, stream or sys.stderr
        self.bars = Bars(self.out)
        self.quarter = -1

    def __call__(self, done: int, total: int) -> None:
        line = f"lethe: {self.job} {self.unit} {done}/{total}"
        if self.bars.feed(line):
            return
        quarter = 4 * done // max(total, 1)
        if quarter > self.quarter:
            self.quarter = quarter
            self.out.write(line + "\n")
            self.out.flush()

    def close(self) -> None:
        """Work that ends short of its total (a search its budget cut) ends its bar there."""
        self.bars.close()
