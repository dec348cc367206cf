"""Keep something alive while a block runs: a lease, a claim. One daemon thread per block."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def every(period_s: float, renew: Callable[[], bool | None], name: str) -> Iterator[None]:
    """Call `renew` every `period_s` seconds in a daemon thread while the block runs; it stops early
    when `renew` returns False (what it renewed is lost). `renew` handles its own errors: a renewal
    that fails once must not end the work it protects."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(period_s):
            if renew() is False:
                return

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
