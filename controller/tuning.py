"""Process-wide tuning the controller's process installs (`server.start_controller`); a `Controller` built
without it runs with the interpreter's defaults.

`ProcessTuning`: the store thread's calls run with a short GIL switch interval (each SQLite statement gives
the GIL up, and taking it back beside a busy event loop waits a whole interval); the scheduler runs with the
cyclic collector paused (it makes no cycles); at scale the collector runs on `heap.Heap`'s schedule.
"""

from __future__ import annotations

import contextlib
import gc
import sys
from collections.abc import Callable, Iterator
from typing import TypeVar

from .heap import GC_TIME, Heap

T = TypeVar("T")
STORE_SWITCH_INTERVAL = 0.0005  # seconds: the GIL switch interval while the store thread runs a call


class Tuning:
    """No tuning: the hooks the controller calls, doing nothing."""

    def store_call(self, call: Callable[[], T]) -> T:
        """Run `call` on the store thread."""
        return call()

    def scheduling(self) -> contextlib.AbstractContextManager[None]:
        """Around the scheduler's pure work (a pass, a warm-up step)."""
        return contextlib.nullcontext()

    def gc_mark(self) -> float:
        """Seconds spent collecting so far; the oldest generation collected is counted from now."""
        return 0.0

    def gc_since(self, mark: float) -> tuple[float, int]:
        """Seconds spent collecting since `mark`, and the oldest generation collected (-1: none)."""
        return 0.0, -1

    def grown(self, nodes: int, joined: bool = False, settled: bool = False) -> None:
        """After a pass (`joined`: nodes joined) or once the pool has `settled`."""

    def tick(self, busy: bool) -> None:
        """From the failure detector's loop; `busy`: a pass runs now."""

    def stream_ended(self) -> None:
        """A node's stream ended."""

    def close(self) -> None:
        """Give the process back its defaults."""


class ProcessTuning(Tuning):
    def __init__(self, clock: Callable[[], float]) -> None:
        self.heap = Heap(clock)
        GC_TIME.install()

    def store_call(self, call: Callable[[], T]) -> T:
        before = sys.getswitchinterval()
        sys.setswitchinterval(STORE_SWITCH_INTERVAL)
        try:
            return call()
        finally:
            sys.setswitchinterval(before)

    def scheduling(self) -> contextlib.AbstractContextManager[None]:
        return cyclic_gc_paused()

    def gc_mark(self) -> float:
        GC_TIME.oldest = -1
        return GC_TIME.seconds

    def gc_since(self, mark: float) -> tuple[float, int]:
        return GC_TIME.seconds - mark, GC_TIME.oldest

    def grown(self, nodes: int, joined: bool = False, settled: bool = False) -> None:
        self.heap.grown(nodes, joined=joined, settled=settled)

    def tick(self, busy: bool) -> None:
        self.heap.tick(busy=busy)

    def stream_ended(self) -> None:
        self.heap.stream_ended()

    def close(self) -> None:
        self.heap.close()
        GC_TIME.uninstall()


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """No cyclic collection while the block runs: the garbage it frees by reference counting never counts
    towards one, so a burst of short-lived tuples does not make the collector walk the whole heap."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
