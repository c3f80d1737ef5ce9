"""Python's cyclic garbage collector at the controller's scale: collections on the controller's schedule.

With thousands of agent streams, each waiting read keeps a few young objects alive, and a collection of the
youngest generation walks all of them (tens of ms at thousands of streams). The automatic collector starts one
every 700 net allocations, inside whatever runs then: a scheduling pass, more often than not.

So from SCALE_NODES nodes on, `Heap` takes the collector over:
  - automatic collections start only after YOUNG_THRESHOLD net allocations (a safety net, not the rule);
  - the young generations are collected every YOUNG_PERIOD seconds, between scheduling passes;
  - what is alive after a pass in which nodes joined, once the pool has settled, or after a young collection, is
    frozen (`gc.freeze`): no collection walks it again, and every HEAP_PERIOD one full collection of everything
    frees cycles among objects frozen while alive (ended streams, the garbage of joins), then freezes again;
  - a collection is skipped when it could not free much: a young one when fewer than YOUNG_SKIP objects were
    allocated (net) since the last, a full one when no stream has ended and no node joined since the last. Each
    period doubles after a collection that freed fewer than FEW_FREED objects (up to MAX_PERIOD), and is back to
    its start after one that freed more.
Below SCALE_NODES nothing changes. `GC_TIME` (installed by `tuning.ProcessTuning`) measures the time spent
collecting, for the controller's debug log.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

SCALE_NODES = 1000
YOUNG_THRESHOLD = 100_000  # automatic collections only after this many more allocations than frees (default 700)
YOUNG_PERIOD = 60.0  # seconds between collections of the two young generations at scale
HEAP_PERIOD = 600.0  # seconds between full collections of everything (the frozen objects too) at scale
MAX_PERIOD = 6 * 3600.0  # the most either period grows to
LOG_SLOW = 0.01  # seconds: an automatic collection that took longer is logged (debug)
FEW_FREED = 1000  # a collection that frees fewer objects doubles its period
YOUNG_SKIP = 10_000  # no young collection while fewer objects than this were allocated (net) since the last


class GcTime:
    """Seconds spent in the cyclic garbage collector since the start, and the oldest generation collected since
    `oldest` was last reset. A collection the collector started itself (not `Heap`'s) that took over LOG_SLOW
    seconds is logged at debug level while `Heap` runs the collector: it stalled whatever ran then."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.oldest = -1
        self.scheduled = False  # Heap is collecting
        self.watch = False  # Heap runs the collector (scale)
        self._start = 0.0
        self._installs = 0

    def install(self) -> None:
        """Count collections from now on (`gc.callbacks`); one `uninstall` per `install`."""
        self._installs += 1
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        self._installs = max(self._installs - 1, 0)
        if not self._installs and self in gc.callbacks:
            gc.callbacks.remove(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            took = time.perf_counter() - self._start
            self.seconds += took
            self.oldest = max(self.oldest, info["generation"])
            if self.watch and not self.scheduled and took > LOG_SLOW:
                log.debug("automatic garbage collection of generation %d: %d objects freed in %.1f ms",
                          info["generation"], info["collected"], took * 1e3)


GC_TIME = GcTime()


class Heap:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.frozen_nodes = 0  # the pool's size when the heap was last frozen (0: never)
        self.default: tuple[int, ...] | None = None  # the thresholds before scale mode (None: not in it)
        self.young_at = self.full_at = clock()
        self.young_period, self.heap_period = YOUNG_PERIOD, HEAP_PERIOD
        self.ended = 0  # streams ended since the last full collection (their objects may be frozen garbage)
        self.grew = False  # nodes joined since the last full collection (the garbage of joins was frozen)
        self.skipped = 0  # collections skipped as they could not free much

    def stream_ended(self) -> None:
        self.ended += 1

    def grown(self, nodes: int, joined: bool = False, settled: bool = False) -> None:
        """After a pass (the pool may have grown, nodes `joined`) or once it has `settled` (no full pass for a
        while)."""
        if nodes < SCALE_NODES:
            return
        if self.default is None:
            self.default = gc.get_threshold()
            gc.set_threshold(YOUNG_THRESHOLD, *self.default[1:])
            GC_TIME.watch = True
            log.info("%d nodes: the cyclic garbage collector runs on the controller's schedule", nodes)
        if settled or joined or nodes > self.frozen_nodes:
            gc.freeze()
            self.grew |= joined or nodes > self.frozen_nodes
            self.frozen_nodes = nodes

    def tick(self, busy: bool) -> None:
        """From the failure detector's loop; `busy`: a scheduling pass is running (collect later)."""
        if self.default is None or busy:
            return
        now = self.clock()
        if now - self.full_at >= self.heap_period and not self.ended and not self.grew:
            self.full_at = now
            self.skipped += 1
        elif now - self.full_at >= self.heap_period:
            self.full_at = self.young_at = now
            self.ended, self.grew = 0, False
            started = time.perf_counter()
            gc.unfreeze()
            freed = _collect(2)
            gc.freeze()
            self.heap_period = _next_period(self.heap_period, HEAP_PERIOD, freed)
            log.info("full garbage collection: %d objects freed in %.0f ms (next in %.0f s)", freed,
                     (time.perf_counter() - started) * 1e3, self.heap_period)
        elif now - self.young_at >= self.young_period and gc.get_count()[0] < YOUNG_SKIP:
            self.young_at = now
            self.skipped += 1
        elif now - self.young_at >= self.young_period:
            self.young_at = now
            started = time.perf_counter()
            freed = _collect(1)
            gc.freeze()  # what survived is walked again only by the next full collection
            self.young_period = _next_period(self.young_period, YOUNG_PERIOD, freed)
            log.debug("young garbage collection: %d objects freed in %.1f ms (next in %.0f s)", freed,
                      (time.perf_counter() - started) * 1e3, self.young_period)

    def close(self) -> None:
        """Give the collector back its defaults (tests run many controllers in one process)."""
        if self.default is not None:
            gc.set_threshold(*self.default)
            gc.unfreeze()
            GC_TIME.watch = False
            self.default, self.frozen_nodes = None, 0


def _next_period(period: float, start: float, freed: int) -> float:
    """Twice as long after a collection that freed next to nothing (up to MAX_PERIOD); else back to the start."""
    return min(period * 2, MAX_PERIOD) if freed < FEW_FREED else start


def _collect(generation: int) -> int:
    GC_TIME.scheduled = True
    try:
        return gc.collect(generation)
    finally:
        GC_TIME.scheduled = False
