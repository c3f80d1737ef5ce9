"""A Triton-style dynamic batcher and scheduler for one model version.

Requests wait in one FIFO queue per priority level (level 1 is served first). Each model instance has a
worker task; a free worker forms the next batch (one worker forms at a time, as Triton's single scheduler
thread does) and runs it on its instance while the next free worker forms the one after.

Batch forming follows Triton's dynamic batcher: the oldest request of the highest non-empty priority starts
the batch; later requests with the same ``key`` join it, in priority order then FIFO, while the rows fit in
``max_batch_size`` (requests with another key are passed over and wait for a later batch). A batch that
reaches ``max_batch_size``, the largest preferred batch size, or any preferred batch size goes at once (the
largest preferred size found wins); otherwise it waits until its oldest request has queued
``max_queue_delay_s`` (or until arrivals complete a preferred/maximum size), then goes as it is. Without
dynamic batching, or for a model that does not batch, each request runs alone and at once.

All timing decisions (queue delay, queue timeouts) use the event loop's clock and timers; the injectable
``clock`` only stamps requests (``enqueued_at``/``dispatched_at``, the queue seconds ``submit`` returns and
the waits reported in errors).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BatchPolicy", "Batcher", "BatcherClosed", "QueueFull", "QueueTimeout", "Request", "Runner"]

# Loop timers may fire up to the clock resolution early; treat a deadline this close as reached.
_EPS = 1e-4


class QueueFull(Exception):
    """The request's priority queue is at max_queue_size (RESOURCE_EXHAUSTED)."""


class QueueTimeout(Exception):
    """The request waited in the queue past its timeout (DEADLINE_EXCEEDED)."""


class BatcherClosed(Exception):
    """The batcher no longer accepts or runs requests: the model is being unloaded (UNAVAILABLE)."""


@dataclass(frozen=True)
class BatchPolicy:
    """Scheduling settings of one model version (Triton's dynamic_batching and queue policy).

    ``default_priority`` 0 means the lowest priority level (``priority_levels``); with ``priority_levels``
    0 or 1 there is a single level and request priorities 0 and 1 are both accepted.
    ``default_timeout_s`` 0 means no queue timeout. With ``allow_timeout_override`` a request's own positive
    timeout applies when there is no default or when it is shorter than the default (it never lengthens it).
    """

    dynamic: bool = False
    max_batch_size: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_s: float = 0.0
    priority_levels: int = 0
    default_priority: int = 0
    max_queue_size: int = 0
    default_timeout_s: float = 0.0
    allow_timeout_override: bool = False

    @property
    def levels(self) -> int:
        return max(1, self.priority_levels)


@dataclass(eq=False)
class Request:
    """One queued inference request. Fields below the first five are owned by the batcher."""

    payload: Any
    batch_size: int = 1
    key: Hashable = None
    priority: int = 0
    timeout_s: float | None = None
    enqueued_at: float | None = field(default=None, init=False, repr=False)
    dispatched_at: float | None = field(default=None, init=False, repr=False)
    _level: int = field(default=0, init=False, repr=False)
    _queued_loop_time: float = field(default=0.0, init=False, repr=False)
    _queued: bool = field(default=False, init=False, repr=False)
    _timeout: float = field(default=0.0, init=False, repr=False)
    _timer: asyncio.TimerHandle | None = field(default=None, init=False, repr=False)
    _future: asyncio.Future[tuple[Any, float]] | None = field(default=None, init=False, repr=False)

    @property
    def rows(self) -> int:
        """Rows counted against max_batch_size (Triton counts a request of batch size 0 as 1)."""
        return max(1, self.batch_size)


Runner = Callable[[list[Request]], Awaitable[list[Any]]]


class Batcher:
    """Queues requests for one model version and runs them, batched, on its model instances."""

    def __init__(
        self,
        name: str,
        policy: BatchPolicy,
        runners: list[Runner],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _validate(name, policy, runners)
        self.name = name
        self.policy = policy
        self._runners = list(runners)
        self._clock = clock
        self._dynamic = policy.dynamic and policy.max_batch_size > 0
        self._max_preferred = max(policy.preferred_batch_sizes, default=policy.max_batch_size)
        self._preferred = frozenset(policy.preferred_batch_sizes)
        self._queues: list[deque[Request]] = [deque() for _ in range(policy.levels)]
        self._wake = asyncio.Event()
        self._form_lock = asyncio.Lock()
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False
        self._in_flight = 0
        self.batches_executed = 0

    # -- public API --------------------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests now executing on an instance."""
        return self._in_flight

    @property
    def closed(self) -> bool:
        return self._closed

    def queue_depth(self) -> int:
        """Requests waiting in the queues (all priority levels)."""
        return sum(len(q) for q in self._queues)

    async def start(self) -> None:
        """Start one worker per model instance; requests submitted earlier wait until now."""
        if self._closed:
            raise BatcherClosed(f"model '{self.name}' is unloading")
        if self._workers:
            return
        for i, runner in enumerate(self._runners):
            task = asyncio.create_task(self._worker(runner), name=f"batcher:{self.name}:{i}")
            self._workers.append(task)

    async def submit(self, request: Request) -> tuple[Any, float]:
        """Queue ``request`` and wait for its result; returns ``(result, seconds it spent queued)``.

        Raises ValueError (bad priority or batch size), QueueFull, QueueTimeout, BatcherClosed, or whatever
        the runner raised for the request's batch. Cancelling the caller while the request is queued removes
        it; once it executes, its batch goes on and the result is dropped.
        """
        if self._closed:
            raise BatcherClosed(f"model '{self.name}' is unloading and accepts no requests")
        level = self._level_of(request)
        max_bs = self.policy.max_batch_size
        if request.batch_size < 0:
            raise ValueError(f"model '{self.name}': batch size {request.batch_size} is negative")
        if max_bs > 0 and request.batch_size > max_bs:
            raise ValueError(
                f"model '{self.name}': request batch size {request.batch_size} exceeds max_batch_size {max_bs}"
            )
        if request._future is not None:
            raise ValueError("a Request can be submitted only once")
        queue = self._queues[level]
        if 0 < self.policy.max_queue_size <= len(queue):
            raise QueueFull(
                f"model '{self.name}': queue of priority level {level + 1} is full "
                f"(max_queue_size {self.policy.max_queue_size})"
            )
        loop = asyncio.get_running_loop()
        request._future = fut = loop.create_future()
        request._level = level
        request.enqueued_at = self._clock()
        request._queued_loop_time = loop.time()
        request._queued = True
        request._timeout = self._timeout_of(request)
        if request._timeout > 0:
            request._timer = loop.call_later(request._timeout, self._expire, request)
        queue.append(request)
        self._wake.set()
        try:
            return await fut
        except asyncio.CancelledError:
            self._discard(request)
            raise

    async def close(self, drain: bool = True) -> None:
        """Stop accepting requests and wait for the workers to finish.

        ``drain=True`` runs every queued request first (without waiting out the queue delay);
        ``drain=False`` fails queued requests with BatcherClosed. Batches already executing always finish.
        """
        self._closed = True
        if not drain or not self._workers:
            for queue in self._queues:
                while queue:
                    req = queue.popleft()
                    self._unqueue(req)
                    _fail(req, BatcherClosed(f"model '{self.name}' was unloaded before the request ran"))
        self._wake.set()
        if self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)

    # -- scheduling ------------------------------------------------------------------------------------

    def _level_of(self, request: Request) -> int:
        levels = self.policy.levels
        priority = request.priority
        if priority < 0 or priority > levels:
            raise ValueError(
                f"model '{self.name}': priority {priority} is out of range; valid priorities are 1..{levels} "
                "(0 for the default)"
            )
        if priority == 0:
            priority = self.policy.default_priority or levels
        return priority - 1

    def _timeout_of(self, request: Request) -> float:
        timeout = self.policy.default_timeout_s
        own = request.timeout_s
        if self.policy.allow_timeout_override and own is not None and own > 0 and (timeout <= 0 or own < timeout):
            timeout = own
        return timeout

    def _expire(self, request: Request) -> None:
        if not request._queued:
            return
        self._queues[request._level].remove(request)
        self._unqueue(request)
        waited = self._clock() - (request.enqueued_at or 0.0)
        _fail(
            request,
            QueueTimeout(
                f"model '{self.name}': request timed out after {waited:.3f}s in the queue "
                f"(queue timeout {request._timeout:g}s)"
            ),
        )
        self._wake.set()

    def _discard(self, request: Request) -> None:
        """Remove a request whose caller went away, if it is still queued."""
        if request._queued:
            self._queues[request._level].remove(request)
            self._unqueue(request)
            self._wake.set()

    @staticmethod
    def _unqueue(request: Request) -> None:
        request._queued = False
        if request._timer is not None:
            request._timer.cancel()
            request._timer = None

    def _purge_abandoned(self) -> None:
        for i, queue in enumerate(self._queues):
            if any(r._future is None or r._future.done() for r in queue):
                kept: deque[Request] = deque()
                for r in queue:
                    if r._future is None or r._future.done():
                        self._unqueue(r)
                    else:
                        kept.append(r)
                self._queues[i] = kept

    def _in_order(self) -> Iterator[Request]:
        for queue in self._queues:
            yield from queue

    def _plan(self, now: float) -> tuple[list[Request], float | None]:
        """The batch to dispatch now and None, or a candidate batch and how long to wait before deciding."""
        requests = self._in_order()
        head = next(requests)
        if not self._dynamic:
            return [head], None
        max_bs = self.policy.max_batch_size
        batch = [head]
        total = head.rows
        best = 1 if total in self._preferred else 0
        send_now = False
        for req in requests:
            if total >= max_bs:
                break
            if req.key != head.key:
                continue
            if total + req.rows > max_bs:
                send_now = True  # the next request in order cannot join: the batch can grow no further
                break
            batch.append(req)
            total += req.rows
            if total in self._preferred:
                best = len(batch)
        delay = self.policy.max_queue_delay_s
        oldest = min(r._queued_loop_time for r in batch)
        waited = now - oldest
        delay_exceeded = self._closed or (delay > 0 and waited + _EPS >= delay)
        if best and not delay_exceeded:
            return batch[:best], None
        if send_now or total >= self._max_preferred or delay_exceeded or delay <= 0:
            return batch, None
        return batch, delay - waited

    def _take(self, batch: list[Request]) -> None:
        chosen = {id(r) for r in batch}
        for level in {r._level for r in batch}:
            self._queues[level] = deque(r for r in self._queues[level] if id(r) not in chosen)
        now = self._clock()
        for r in batch:
            self._unqueue(r)
            r.dispatched_at = now

    async def _next_batch(self) -> list[Request] | None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            self._purge_abandoned()
            if not self.queue_depth():
                if self._closed:
                    return None
                await self._wake.wait()
                continue
            batch, wait = self._plan(loop.time())
            if wait is None:
                self._take(batch)
                return batch
            timer = loop.call_later(wait, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()

    async def _worker(self, runner: Runner) -> None:
        while True:
            async with self._form_lock:
                batch = await self._next_batch()
            if batch is None:
                return
            await self._execute(runner, batch)

    async def _execute(self, runner: Runner, batch: list[Request]) -> None:
        self._in_flight += len(batch)
        try:
            results = list(await runner(batch))
            if len(results) != len(batch):
                raise RuntimeError(
                    f"model '{self.name}': instance returned {len(results)} results for a batch of {len(batch)}"
                )
        except Exception as exc:
            for r in batch:
                _fail(r, exc)
            return
        except BaseException:
            for r in batch:
                _fail(r, BatcherClosed(f"model '{self.name}': execution was cancelled"))
            raise
        finally:
            self._in_flight -= len(batch)
            self.batches_executed += 1
        for r, result in zip(batch, results, strict=True):
            if r._future is not None and not r._future.done():
                r._future.set_result((result, (r.dispatched_at or 0.0) - (r.enqueued_at or 0.0)))


def _fail(request: Request, exc: BaseException) -> None:
    if request._future is not None and not request._future.done():
        request._future.set_exception(exc)


def _validate(name: str, policy: BatchPolicy, runners: list[Runner]) -> None:
    def bad(what: str) -> ValueError:
        return ValueError(f"model '{name}': {what}")

    if not runners:
        raise bad("needs at least one model instance (runner)")
    if policy.max_batch_size < 0:
        raise bad(f"max_batch_size {policy.max_batch_size} is negative")
    for size in policy.preferred_batch_sizes:
        if size < 1 or (policy.max_batch_size > 0 and size > policy.max_batch_size):
            raise bad(f"preferred batch size {size} is not in 1..max_batch_size ({policy.max_batch_size})")
    if policy.preferred_batch_sizes and policy.max_batch_size == 0:
        raise bad("preferred_batch_sizes need max_batch_size > 0")
    if policy.max_queue_delay_s < 0 or policy.default_timeout_s < 0:
        raise bad("max_queue_delay_s and default_timeout_s must not be negative")
    if policy.priority_levels < 0 or policy.max_queue_size < 0:
        raise bad("priority_levels and max_queue_size must not be negative")
    if not 0 <= policy.default_priority <= policy.levels:
        raise bad(f"default_priority {policy.default_priority} is not in 0..{policy.levels}")
