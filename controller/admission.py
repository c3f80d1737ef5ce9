"""The router's admission queue, one per deployment: a bound on requests in flight, and priorities when it is hit.

At most ``limit`` requests of a deployment are forwarded at once (its replicas times ``--max-inflight``). A request
beyond that waits for a slot in priority order (1 is the highest, as Triton's; FIFO within a level), at most until
its deadline. The queue holds at most ``max_queue`` waiters: when it is full, the lowest priority is shed first
with RESOURCE_EXHAUSTED (a newcomer of a higher priority takes the place of the newest waiter of the lowest level,
else the newcomer itself is refused). A waiter that is cancelled (the client went away) leaves the queue at once;
a slot handed to it is passed on.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

import grpc

from xpud.proto.status import StatusError

LOWEST = 2**63  # priority 0 (the deployment's default) waits behind every explicit level unless it says otherwise


class Shed(StatusError):
    """The queue was full and this request had the lowest priority (RESOURCE_EXHAUSTED)."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int  # FIFO within a level; the newest of the lowest level is shed first
    future: asyncio.Future[None] = field(compare=False)


class Admission:
    def __init__(self, name: str, limit: int, max_queue: int, default_priority: int = 0) -> None:
        self.name = name
        self.limit = limit  # requests in flight at most; 0: no bound
        self.max_queue = max_queue
        self.default_priority = default_priority  # what priority 0 means for this deployment (0: the lowest)
        self.in_flight = 0
        self.shed = 0
        self._waiting: list[_Waiter] = []  # a heap: the best (lowest number, oldest) first
        self._seq = itertools.count()

    @property
    def queued(self) -> int:
        return sum(1 for w in self._waiting if not w.future.done())

    def _level(self, priority: int) -> int:
        priority = priority or self.default_priority
        return priority if priority > 0 else LOWEST

    async def acquire(self, priority: int = 0, timeout: float | None = None) -> None:
        """Wait for a slot (returns holding it; `release` gives it back). Shed: refused by priority when full;
        DEADLINE_EXCEEDED: no slot within `timeout` seconds."""
        if not self.limit or (self.in_flight < self.limit and not self.queued):
            self.in_flight += 1
            return
        level = self._level(priority)
        self._make_room(level)
        waiter = _Waiter(level, next(self._seq), asyncio.get_running_loop().create_future())
        heapq.heappush(self._waiting, waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), timeout)
        except TimeoutError:
            if not waiter.future.done():
                waiter.future.cancel()
            elif waiter.future.exception() is None:  # a slot came as the deadline passed: pass it on
                self.release()
            raise StatusError(grpc.StatusCode.DEADLINE_EXCEEDED, f"deployment {self.name!r}: no free slot within "
                              f"the request's deadline ({self.limit} in flight, {self.queued} waiting)") from None
        except asyncio.CancelledError:  # the client went away
            if not waiter.future.done():
                waiter.future.cancel()
            elif waiter.future.exception() is None:
                self.release()
            raise

    def _make_room(self, level: int) -> None:
        """With the queue full, shed the newest waiter of the lowest level if `level` is higher, else refuse."""
        live = [w for w in self._waiting if not w.future.done()]
        if len(live) < self.max_queue:
            return
        worst = max(live, key=lambda w: (w.priority, w.seq))
        self.shed += 1
        message = (f"deployment {self.name!r} is at its limit ({self.limit} requests in flight, {self.max_queue} "
                   "waiting) and this request had the lowest priority: retry later, raise its priority, or raise "
                   "--max-inflight / add replicas")
        if level >= worst.priority:
            raise Shed(message)
        worst.future.set_exception(Shed(message))
        self._waiting = [w for w in self._waiting if w is not worst]
        heapq.heapify(self._waiting)

    def release(self) -> None:
        """Give a slot back: to the best live waiter, else free it."""
        while self._waiting:
            waiter = heapq.heappop(self._waiting)
            if not waiter.future.done():
                waiter.future.set_result(None)  # the slot moves to it: in_flight unchanged
                return
        self.in_flight -= 1

    def resize(self, limit: int, max_queue: int | None = None) -> None:
        """The deployment's replicas or --max-inflight changed: admit waiters into any new room."""
        self.limit = limit
        if max_queue is not None:
            self.max_queue = max_queue
        while self._waiting and (not self.limit or self.in_flight < self.limit):
            waiter = heapq.heappop(self._waiting)
            if not waiter.future.done():
                self.in_flight += 1
                waiter.future.set_result(None)
