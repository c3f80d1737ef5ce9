"""A Triton-style dynamic batcher and scheduler for one model version.

Requests wait in one FIFO queue per priority level (level 1 is served first). Each model instance has its own
thread, like Triton's model instance threads: a free instance thread forms the next batch (one forms at a time,
as Triton's single scheduler thread does), runs it, and hands the results back to the event loop, while the
next free instance forms the batch after.

Batch forming follows Triton's dynamic batcher: the oldest request of the highest non-empty priority starts
the batch; later requests with the same ``key`` join it, in priority order then FIFO, while the rows fit in
``max_batch_size`` (requests with another key are passed over and wait for a later batch). A batch that
reaches ``max_batch_size``, the largest preferred batch size, or any preferred batch size goes at once (the
largest preferred size found wins); otherwise it waits until its oldest request has queued
``max_queue_delay_s`` (or until arrivals complete a preferred/maximum size), then goes as it is. Without
dynamic batching, or for a model that does not batch, each request runs alone and at once.

The batch is formed on the instance's thread, not in an event-loop task: the model runs off the loop anyway,
and this leaves one hand-off each way per batch (the loop appends and notifies; the thread answers with one
``call_soon_threadsafe``). The queue delay is waited on a condition variable, precise to tens of microseconds,
where asyncio timers round up to the loop's 1 ms resolution.

Threads: the queues and counters are guarded by one lock; requests' futures and queue-timeout timers are only
touched on the event loop. Queue delays use ``time.monotonic``; the injectable ``clock`` only stamps requests
(``enqueued_at``/``dispatched_at``, the queue seconds ``submit`` returns and the waits reported in errors).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .batchpolicy import BatchPolicy

__all__ = ["BatchDone", "BatchPolicy", "Batcher", "BatcherClosed", "QueueFull", "QueueTimeout", "Request", "Runner"]

log = logging.getLogger(__name__)

# A condition wait may wake a little early; treat a queue-delay deadline this close as reached.
_EPS = 2e-5


class QueueFull(Exception):
    """The request's priority queue is at max_queue_size (RESOURCE_EXHAUSTED)."""


class QueueTimeout(Exception):
    """The request waited in the queue past its timeout (DEADLINE_EXCEEDED)."""


class BatcherClosed(Exception):
    """The batcher no longer accepts or runs requests: the model is being unloaded (UNAVAILABLE)."""


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
    _queued_at: float = field(default=0.0, init=False, repr=False)  # time.monotonic(), for the queue delay
    _queued: bool = field(default=False, init=False, repr=False)
    _timeout: float = field(default=0.0, init=False, repr=False)
    _timer: asyncio.TimerHandle | None = field(default=None, init=False, repr=False)
    _future: asyncio.Future[tuple[Any, float]] | None = field(default=None, init=False, repr=False)

    @property
    def rows(self) -> int:
        """Rows counted against max_batch_size (Triton counts a request of batch size 0 as 1)."""
        return max(1, self.batch_size)


# Runs one batch on one model instance and returns one result per request, in order. It blocks: it is called
# on that instance's own thread, never on the event loop.
Runner = Callable[[list[Request]], Sequence[Any]]
# Told on the event loop of each batch an instance ran: (instance index, requests in the batch, the error the
# batch failed with or None). One call per batch, for the health of the instance's device.
BatchDone = Callable[[int, int, BaseException | None], None]


class Batcher:
    """Queues requests for one model version and runs them, batched, on its model instances' threads."""

    def __init__(
        self,
        name: str,
        policy: BatchPolicy,
        runners: list[Runner],
        *,
        clock: Callable[[], float] = time.monotonic,
        on_done: BatchDone | None = None,
    ) -> None:
        if not runners:
            raise ValueError(f"model '{name}': needs at least one model instance (runner)")
        policy.check(name)
        self.name = name
        self.policy = policy
        self._runners = list(runners)
        self._clock = clock
        self._on_done = on_done
        self._dynamic = policy.dynamic and policy.max_batch_size > 0
        self._max_preferred = max(policy.preferred_batch_sizes, default=policy.max_batch_size)
        self._preferred = frozenset(policy.preferred_batch_sizes)
        self._queues: list[deque[Request]] = [deque() for _ in range(policy.levels)]
        self._cond = threading.Condition(threading.Lock())
        self._forming = False  # an instance thread is forming the next batch
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exited: asyncio.Future[None] | None = None  # resolved when every instance thread has ended
        self._alive = 0
        self._closed = False
        self._in_flight = 0
        self.batches_executed = 0

    # -- public API (event loop) -----------------------------------------------------------------------

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
        """Start one thread per model instance; requests submitted earlier wait until now."""
        if self._closed:
            raise BatcherClosed(f"model '{self.name}' is unloading")
        if self._threads:
            return
        self._loop = asyncio.get_running_loop()
        self._exited = self._loop.create_future()
        self._alive = len(self._runners)
        for i, runner in enumerate(self._runners):
            thread = threading.Thread(target=self._instance, args=(i, runner), name=f"model-{self.name}-{i}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

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
        loop = asyncio.get_running_loop()
        request._future = fut = loop.create_future()
        request._level = level
        request._timeout = self._timeout_of(request)
        request.enqueued_at = self._clock()
        with self._cond:
            if self._closed:
                raise BatcherClosed(f"model '{self.name}' is unloading and accepts no requests")
            queue = self._queues[level]
            if 0 < self.policy.max_queue_size <= len(queue):
                raise QueueFull(
                    f"model '{self.name}': queue of priority level {level + 1} is full "
                    f"(max_queue_size {self.policy.max_queue_size})"
                )
            request._queued_at = time.monotonic()
            request._queued = True
            queue.append(request)
            self._cond.notify_all()
        if request._timeout > 0:
            request._timer = loop.call_later(request._timeout, self._expire, request)
        try:
            return await fut
        except asyncio.CancelledError:
            self._unqueue(request)  # the caller went away: drop the request if it is still queued
            raise

    async def close(self, drain: bool = True) -> None:
        """Stop accepting requests and wait for the instance threads to finish.

        ``drain=True`` runs every queued request first (without waiting out the queue delay);
        ``drain=False`` fails queued requests with BatcherClosed. Batches already executing always finish.
        """
        dropped: list[Request] = []
        with self._cond:
            self._closed = True
            if not drain or not self._threads:
                for queue in self._queues:
                    while queue:
                        request = queue.popleft()
                        request._queued = False
                        dropped.append(request)
            self._cond.notify_all()
        for request in dropped:
            _cancel_timer(request)
            _fail(request, BatcherClosed(f"model '{self.name}' was unloaded before the request ran"))
        if self._exited is not None:
            await asyncio.shield(self._exited)

    # -- requests (event loop) -------------------------------------------------------------------------

    def _level_of(self, request: Request) -> int:
        levels = self.policy.levels
        priority = request.priority
        if self.policy.priority_levels == 0 and priority >= 0:
            return 0  # no priority levels configured: one queue, as Triton ignores priority then (the router's
            # admission queue already ordered what it forwards)
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

    def _unqueue(self, request: Request) -> bool:
        """Take a request out of its queue if an instance has not taken it yet; True if it was queued."""
        with self._cond:
            if not request._queued:
                return False
            self._queues[request._level].remove(request)
            request._queued = False
            self._cond.notify_all()  # a batch being formed around it must be planned again
        _cancel_timer(request)
        return True

    def _expire(self, request: Request) -> None:
        request._timer = None
        if not self._unqueue(request):
            return
        waited = self._clock() - (request.enqueued_at or 0.0)
        _fail(
            request,
            QueueTimeout(
                f"model '{self.name}': request timed out after {waited:.3f}s in the queue "
                f"(queue timeout {request._timeout:g}s)"
            ),
        )

    def _deliver(self, index: int, batch: list[Request], results: Sequence[Any] | None,
                 error: BaseException | None) -> None:
        """On the loop: resolve the futures of a batch instance ``index`` has run."""
        if self._on_done is not None:
            try:
                self._on_done(index, len(batch), error)
            except Exception:  # a bookkeeping bug must not leave the batch's callers waiting
                log.exception("model '%s': batch outcome not recorded", self.name)
        for i, request in enumerate(batch):
            _cancel_timer(request)
            fut = request._future
            if fut is None or fut.done():
                continue  # the caller went away while its batch ran
            if error is not None or results is None:
                fut.set_exception(error or RuntimeError(f"model '{self.name}': no result"))
            else:
                fut.set_result((results[i], (request.dispatched_at or 0.0) - (request.enqueued_at or 0.0)))

    def _instance_exited(self) -> None:
        self._alive -= 1
        if self._alive == 0 and self._exited is not None and not self._exited.done():
            self._exited.set_result(None)

    # -- scheduling (instance threads, under the lock) -------------------------------------------------

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
        waited = now - min(r._queued_at for r in batch)
        delay_exceeded = self._closed or (delay > 0 and waited + _EPS >= delay)
        if best and not delay_exceeded:
            return batch[:best], None
        if send_now or total >= self._max_preferred or delay_exceeded or delay <= 0:
            return batch, None
        return batch, delay - waited

    def _take(self, batch: list[Request]) -> None:
        now = self._clock()
        for r in batch:
            queue = self._queues[r._level]
            if queue[0] is r:
                queue.popleft()
            else:
                queue.remove(r)
            r._queued = False
            r.dispatched_at = now
        self._in_flight += len(batch)

    def _next_batch(self) -> list[Request] | None:
        """Wait for this thread's turn to form, then for a batch to be ready; None once closed and empty."""
        with self._cond:
            while self._forming:
                self._cond.wait()
            self._forming = True
            try:
                while True:
                    if not any(self._queues):
                        if self._closed:
                            return None
                        self._cond.wait()
                        continue
                    batch, wait = self._plan(time.monotonic())
                    if wait is None:
                        self._take(batch)
                        return batch
                    self._cond.wait(wait)
            finally:
                self._forming = False
                self._cond.notify_all()  # the next free instance may form

    def _instance(self, index: int, runner: Runner) -> None:
        """One model instance's thread: form a batch, run it, hand the results to the loop; until closed."""
        loop = self._loop
        assert loop is not None
        try:
            while (batch := self._next_batch()) is not None:
                try:
                    results = runner(batch)
                    if len(results) != len(batch):
                        raise RuntimeError(f"model '{self.name}': instance returned {len(results)} results for a "
                                           f"batch of {len(batch)}")
                except Exception as exc:  # fails this batch only; the instance goes on
                    self._finish(loop, index, batch, None, exc)
                except BaseException:  # SystemExit and the like end this thread: its batch must not hang
                    self._finish(loop, index, batch, None,
                                 BatcherClosed(f"model '{self.name}': its instance stopped"))
                    raise
                else:
                    self._finish(loop, index, batch, results, None)
        finally:
            _call_soon(loop, self._instance_exited)

    def _finish(self, loop: asyncio.AbstractEventLoop, index: int, batch: list[Request],
                results: Sequence[Any] | None, error: BaseException | None) -> None:
        with self._cond:
            self._in_flight -= len(batch)
            self.batches_executed += 1
        _call_soon(loop, self._deliver, index, batch, results, error)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


def _cancel_timer(request: Request) -> None:
    if request._timer is not None:
        request._timer.cancel()
        request._timer = None


def _fail(request: Request, exc: BaseException) -> None:
    if request._future is not None and not request._future.done():
        request._future.set_exception(exc)
