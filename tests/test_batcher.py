"""The dynamic batcher: merging, preferred sizes, queue delay, keys, priorities, queue policy, cancellation, close."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from xpud.agent.serving.batcher import Batcher, BatcherClosed, BatchPolicy, QueueFull, QueueTimeout, Request


class FakeRunner:
    """A model instance, called on its own thread: records each batch's payloads; holds while ``gate`` is clear;
    fails on ``fail_on``."""

    def __init__(self, *, gate: threading.Event | None = None, fail_on: Any = None) -> None:
        self.batches: list[list[Any]] = []
        self.gate = gate
        self.fail_on = fail_on
        self.started = threading.Event()
        self.running = 0

    def __call__(self, batch: list[Request]) -> list[Any]:
        self.batches.append([r.payload for r in batch])
        self.started.set()
        self.running += 1
        try:
            if self.gate is not None:
                assert self.gate.wait(10), "the test never opened the gate"
            if self.fail_on is not None and self.fail_on in [r.payload for r in batch]:
                raise RuntimeError(f"boom in batch {[r.payload for r in batch]}")
            return [("out", r.payload) for r in batch]
        finally:
            self.running -= 1

    @property
    def seen(self) -> list[Any]:
        return [p for b in self.batches for p in b]


@pytest.fixture
async def make() -> AsyncIterator[Callable[..., Any]]:
    """Build and start batchers; each is closed (without draining) at the end of the test."""
    made: list[Batcher] = []

    async def _make(policy: BatchPolicy, *runners: Any, **kw: Any) -> Batcher:
        b = Batcher("m", policy, list(runners), **kw)
        await b.start()
        made.append(b)
        return b

    yield _make
    for b in made:
        await asyncio.wait_for(b.close(drain=False), 5)


def dyn(**kw: Any) -> BatchPolicy:
    kw.setdefault("max_batch_size", 8)
    return BatchPolicy(dynamic=True, **kw)


async def hold(b: Batcher, runner: FakeRunner, payload: Any = "busy", **kw: Any) -> asyncio.Task[tuple[Any, float]]:
    """Occupy ``runner`` with one full-size request (its gate must be clear); return the task awaiting it."""
    task = asyncio.create_task(b.submit(Request(payload, max(1, b.policy.max_batch_size), **kw)))
    await started(runner)
    return task


async def started(runner: FakeRunner) -> None:
    """Wait (without blocking the loop) until ``runner`` has been handed a batch."""
    assert await asyncio.to_thread(runner.started.wait, 5), "the instance never ran a batch"


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_concurrent_submits_are_merged_and_results_routed(make):
    runner = FakeRunner()
    b = await make(dyn(max_queue_delay_s=0.05), runner)
    results = await asyncio.wait_for(asyncio.gather(*(b.submit(Request(i, 1)) for i in range(5))), 2)
    assert runner.batches == [[0, 1, 2, 3, 4]]
    assert [r for r, _ in results] == [("out", i) for i in range(5)]
    assert all(q >= 0 for _, q in results)
    assert b.batches_executed == 1 and b.queue_depth() == 0 and b.in_flight == 0


async def test_max_batch_size_counts_rows(make):
    gate = threading.Event()
    runner = FakeRunner(gate=gate)
    b = await make(dyn(max_batch_size=4, max_queue_delay_s=0.05), runner)
    busy = await hold(b, runner)
    tasks = [asyncio.create_task(b.submit(Request(f"r{i}", 1))) for i in range(9)]
    tasks.append(asyncio.create_task(b.submit(Request("three", 3))))
    await settle()
    gate.set()
    await asyncio.wait_for(asyncio.gather(busy, *tasks), 3)
    assert runner.batches[1:] == [["r0", "r1", "r2", "r3"], ["r4", "r5", "r6", "r7"], ["r8", "three"]]


async def test_request_that_does_not_fit_closes_the_batch_at_once(make):
    gate = threading.Event()
    runner = FakeRunner(gate=gate)
    b = await make(dyn(max_batch_size=4, max_queue_delay_s=10), runner)
    busy = await hold(b, runner)
    a = asyncio.create_task(b.submit(Request("a3", 3)))
    c = asyncio.create_task(b.submit(Request("c2", 2)))
    d = asyncio.create_task(b.submit(Request("d2", 2)))
    await settle()
    gate.set()
    # No 10 s queue delay: [a3] cannot grow (c2 does not fit) and [c2, d2] is full.
    await asyncio.wait_for(asyncio.gather(busy, a, c, d), 2)
    assert runner.batches[1:] == [["a3"], ["c2", "d2"]]


async def test_preferred_size_dispatches_without_waiting_for_the_delay(make):
    runner = FakeRunner()
    b = await make(dyn(preferred_batch_sizes=(3,), max_queue_delay_s=30), runner)
    first = asyncio.create_task(b.submit(Request("a", 1)))
    await asyncio.sleep(0.05)
    assert runner.batches == []  # still waiting for company
    rest = [asyncio.create_task(b.submit(Request(p, 1))) for p in "bc"]
    await asyncio.wait_for(asyncio.gather(first, *rest), 2)
    assert runner.batches == [["a", "b", "c"]]


async def test_largest_preferred_size_wins(make):
    gate = threading.Event()
    runner = FakeRunner(gate=gate)
    b = await make(dyn(preferred_batch_sizes=(2, 4), max_queue_delay_s=30), runner)
    busy = await hold(b, runner)
    tasks = [asyncio.create_task(b.submit(Request(i, 1))) for i in range(5)]
    await settle()
    gate.set()
    await asyncio.wait_for(asyncio.gather(busy, *tasks[:4]), 2)
    await asyncio.sleep(0.05)
    assert runner.batches[1:] == [[0, 1, 2, 3]]
    assert not tasks[4].done()  # a lone leftover waits for the delay
    await b.close(drain=True)  # closing dispatches it without waiting out the delay
    assert runner.batches[2] == [4]
    assert (await tasks[4])[0] == ("out", 4)


async def test_lone_request_waits_the_queue_delay(make):
    runner = FakeRunner()
    b = await make(dyn(max_queue_delay_s=0.2), runner)
    t0 = time.monotonic()
    result, queued = await asyncio.wait_for(b.submit(Request("x", 1)), 3)
    elapsed = time.monotonic() - t0
    assert result == ("out", "x")
    assert runner.batches == [["x"]]
    assert 0.15 <= elapsed < 2.0
    assert 0.15 <= queued < 2.0


async def test_without_dynamic_batching_each_request_runs_alone(make):
    for policy in (BatchPolicy(max_batch_size=8), BatchPolicy(dynamic=True, max_batch_size=0)):
        runner = FakeRunner()
        b = await make(policy, runner)
        await asyncio.wait_for(asyncio.gather(*(b.submit(Request(i, 1)) for i in range(3))), 2)
        assert runner.batches == [[0], [1], [2]]


async def test_different_keys_are_never_merged(make):
    gate = threading.Event()
    runner = FakeRunner(gate=gate)
    b = await make(dyn(max_queue_delay_s=0.05), runner)
    busy = await hold(b, runner, key="k0")
    tasks = [asyncio.create_task(b.submit(Request(p, 1, key=k))) for p, k in [("a", 1), ("b", 2), ("c", 1), ("d", 2)]]
    await settle()
    gate.set()
    await asyncio.wait_for(asyncio.gather(busy, *tasks), 2)
    assert runner.batches[1:] == [["a", "c"], ["b", "d"]]


async def test_higher_priority_runs_first(make):
    gate = threading.Event()
    runner = FakeRunner(gate=gate)
    b = await make(BatchPolicy(priority_levels=3), runner)
    busy = await hold(b, runner)
    low = asyncio.create_task(b.submit(Request("low", 1, priority=3)))
    default = asyncio.create_task(b.submit(Request("default", 1)))  # 0: the lowest level, after "low"
    mid = asyncio.create_task(b.submit(Request("mid", 1, priority=2)))
    high = asyncio.create_task(b.submit(Request("high", 1, priority=1)))
    await settle()
    gate.set()
    await asyncio.wait_for(asyncio.gather(busy, low, default, mid, high), 2)
    assert runner.seen == ["busy", "high", "mid", "low", "default"]


async def test_batch_collects_in_priority_order(make):
    gate = threading.Event()
    runner = FakeRunner(gate=gate)
    b = await make(dyn(max_batch_size=2, priority_levels=2, default_priority=1, max_queue_delay_s=0.05), runner)
    busy = await hold(b, runner)
    tasks = [
        asyncio.create_task(b.submit(Request(p, 1, priority=pr)))
        for p, pr in [("low1", 2), ("hi1", 0), ("low2", 2), ("hi2", 1)]
    ]
    await settle()
    gate.set()
    await asyncio.wait_for(asyncio.gather(busy, *tasks), 2)
    assert runner.batches[1:] == [["hi1", "hi2"], ["low1", "low2"]]


async def test_full_queue_rejects_at_once(make):
    gate = threading.Event()
    runner = FakeRunner(gate=gate)
    b = await make(BatchPolicy(max_queue_size=1, priority_levels=2), runner)
    busy = await hold(b, runner)
    queued = asyncio.create_task(b.submit(Request("q", 1, priority=1)))
    await settle()
    with pytest.raises(QueueFull, match=r"'m'.*priority level 1.*max_queue_size 1"):
        await b.submit(Request("over", 1, priority=1))
    other_level = asyncio.create_task(b.submit(Request("q2", 1, priority=2)))  # each level has its own limit
    await settle()
    assert b.queue_depth() == 2
    gate.set()
    await asyncio.wait_for(asyncio.gather(busy, queued, other_level), 2)
    assert "over" not in runner.seen


async def test_queue_timeout_fires_while_instance_busy(make):
    gate = threading.Event()
    runner = FakeRunner(gate=gate)
    b = await make(BatchPolicy(default_timeout_s=0.1), runner)
    busy = await hold(b, runner)
    t0 = time.monotonic()
    with pytest.raises(QueueTimeout, match=r"after \d+\.\d+s"):
        await asyncio.wait_for(b.submit(Request("late", 1)), 2)
    assert 0.05 <= time.monotonic() - t0 < 1.5
    assert b.queue_depth() == 0
    gate.set()
    await busy
    assert "late" not in runner.seen


async def test_request_timeout_override_only_shortens(make):
    gate = threading.Event()
    runner = FakeRunner(gate=gate)
    b = await make(BatchPolicy(default_timeout_s=0.3, allow_timeout_override=True), runner)
    busy = await hold(b, runner)
    t0 = time.monotonic()
    with pytest.raises(QueueTimeout):
        await asyncio.wait_for(b.submit(Request("short", 1, timeout_s=0.05)), 2)
    short = time.monotonic() - t0
    t0 = time.monotonic()
    with pytest.raises(QueueTimeout):
        await asyncio.wait_for(b.submit(Request("long", 1, timeout_s=60)), 2)
    assert short < time.monotonic() - t0 < 1.5
    gate.set()
    await busy

    # Without allow_timeout_override the request's own timeout is ignored.
    gate2 = threading.Event()
    runner2 = FakeRunner(gate=gate2)
    b2 = await make(BatchPolicy(), runner2)
    busy2 = await hold(b2, runner2)
    ignored = asyncio.create_task(b2.submit(Request("ignored", 1, timeout_s=0.01)))
    await asyncio.sleep(0.1)
    gate2.set()
    assert (await asyncio.wait_for(ignored, 2))[0] == ("out", "ignored")
    await busy2

    # With no default timeout, an allowed request timeout applies.
    gate3 = threading.Event()
    runner3 = FakeRunner(gate=gate3)
    b3 = await make(BatchPolicy(allow_timeout_override=True), runner3)
    busy3 = await hold(b3, runner3)
    with pytest.raises(QueueTimeout):
        await asyncio.wait_for(b3.submit(Request("own", 1, timeout_s=0.05)), 2)
    gate3.set()
    await busy3


async def test_cancelled_queued_request_never_runs(make):
    gate = threading.Event()
    runner = FakeRunner(gate=gate)
    b = await make(dyn(max_queue_delay_s=0.01), runner)
    busy = await hold(b, runner)
    doomed = asyncio.create_task(b.submit(Request("doomed", 1)))
    kept = asyncio.create_task(b.submit(Request("kept", 1)))
    await settle()
    assert b.queue_depth() == 2
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert b.queue_depth() == 1
    gate.set()
    await asyncio.wait_for(asyncio.gather(busy, kept), 2)
    assert "doomed" not in runner.seen


async def test_cancelled_executing_request_lets_the_batch_finish(make):
    gate = threading.Event()
    runner = FakeRunner(gate=gate)
    b = await make(dyn(preferred_batch_sizes=(2,)), runner)
    a = asyncio.create_task(b.submit(Request("a", 1)))
    c = asyncio.create_task(b.submit(Request("c", 1)))
    await started(runner)
    assert b.in_flight == 2
    a.cancel()
    await settle()
    gate.set()
    assert (await asyncio.wait_for(c, 2))[0] == ("out", "c")
    assert a.cancelled()
    assert runner.batches == [["a", "c"]] and b.in_flight == 0


async def test_runner_exception_fails_only_that_batch(make):
    runner = FakeRunner(fail_on="bad")
    b = await make(dyn(preferred_batch_sizes=(2,), max_queue_delay_s=0.05), runner)
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(b.submit(Request(p, 1)) for p in ["bad", "mate"]), return_exceptions=True), 2
    )
    assert all(isinstance(o, RuntimeError) and "boom" in str(o) for o in outcomes)
    result, _ = await asyncio.wait_for(b.submit(Request("fine", 1)), 2)  # the worker keeps going
    assert result == ("out", "fine")
    assert b.batches_executed == 2


async def test_two_instances_run_in_parallel(make):
    both = threading.Barrier(2, timeout=5)  # broken (and the test failed) unless both instances run at once
    seen: list[Any] = []

    def runner(batch: list[Request]) -> list[Any]:
        seen.extend(r.payload for r in batch)
        both.wait()
        return [r.payload for r in batch]

    b = await make(BatchPolicy(), runner, runner)
    results = await asyncio.wait_for(asyncio.gather(b.submit(Request(1, 1)), b.submit(Request(2, 1))), 6)
    assert [r for r, _ in results] == [1, 2]
    assert sorted(seen) == [1, 2]


async def test_sub_millisecond_queue_delay_is_kept(make):
    """A 300 µs delay holds a lone request about that long, not the event loop's 1 ms timer resolution."""
    runner = FakeRunner()
    b = await make(dyn(max_queue_delay_s=0.0003), runner)
    for i in range(20):
        await asyncio.wait_for(b.submit(Request(i, 1)), 2)
    assert runner.batches == [[i] for i in range(20)]
    stats = sorted(q for q in [(await asyncio.wait_for(b.submit(Request("x", 1)), 2))[1] for _ in range(20)])
    assert all(q >= 0.0003 - 2e-5 for q in stats), stats  # each waited out the delay before running alone


async def test_instance_threads_run_off_the_event_loop(make):
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    def runner(batch: list[Request]) -> list[Any]:
        threads.add(threading.get_ident())
        return [r.payload for r in batch]

    b = await make(BatchPolicy(), runner)
    await asyncio.wait_for(b.submit(Request(1, 1)), 2)
    assert threads and loop_thread not in threads


async def test_close_drain_finishes_queued_requests(make):
    gate = threading.Event()
    runner = FakeRunner(gate=gate)
    b = await make(dyn(max_batch_size=2, max_queue_delay_s=30), runner)
    busy = await hold(b, runner)
    tasks = [asyncio.create_task(b.submit(Request(i, 1))) for i in range(3)]
    await settle()
    closing = asyncio.create_task(b.close(drain=True))
    await settle()
    with pytest.raises(BatcherClosed):
        await b.submit(Request("late", 1))
    gate.set()
    await asyncio.wait_for(closing, 2)  # no 30 s queue delay while draining
    assert [(await t)[0] for t in tasks] == [("out", 0), ("out", 1), ("out", 2)]
    assert (await busy)[0] == ("out", "busy")
    assert runner.batches[1:] == [[0, 1], [2]]


async def test_close_without_drain_fails_queued_requests(make):
    gate = threading.Event()
    runner = FakeRunner(gate=gate)
    b = await make(BatchPolicy(), runner)
    busy = await hold(b, runner)
    queued = [asyncio.create_task(b.submit(Request(i, 1))) for i in range(2)]
    await settle()
    closing = asyncio.create_task(b.close(drain=False))
    for t in queued:
        with pytest.raises(BatcherClosed):
            await asyncio.wait_for(t, 2)
    assert not closing.done()  # the executing batch still finishes
    gate.set()
    await asyncio.wait_for(closing, 2)
    assert (await busy)[0] == ("out", "busy")
    assert runner.seen == ["busy"]


async def test_submit_after_close_is_rejected():
    b = Batcher("m", BatchPolicy(), [FakeRunner()])
    await b.start()
    await b.close()
    with pytest.raises(BatcherClosed, match="'m'"):
        await b.submit(Request("x", 1))
    with pytest.raises(BatcherClosed):
        await b.start()


async def test_invalid_requests_raise_value_error(make):
    b = await make(dyn(max_batch_size=4, priority_levels=3), FakeRunner())
    with pytest.raises(ValueError, match=r"priority 4.*1\.\.3"):
        await b.submit(Request("x", 1, priority=4))
    with pytest.raises(ValueError, match="priority -1"):
        await b.submit(Request("x", 1, priority=-1))
    with pytest.raises(ValueError, match="batch size 5 exceeds max_batch_size 4"):
        await b.submit(Request("x", 5))
    single = await make(BatchPolicy(), FakeRunner())
    assert (await single.submit(Request("p1", 1, priority=1)))[0] == ("out", "p1")  # one level: 1 is fine
    # no priority levels configured: any priority shares the one queue (the router's queue ordered them)
    assert (await single.submit(Request("p7", 1, priority=7)))[0] == ("out", "p7")
    with pytest.raises(ValueError, match="priority -1"):
        await single.submit(Request("x", 1, priority=-1))


def test_invalid_policies_raise_value_error():
    r = [FakeRunner()]
    for policy in (
        BatchPolicy(max_batch_size=4, preferred_batch_sizes=(8,)),
        BatchPolicy(max_batch_size=0, preferred_batch_sizes=(1,)),
        BatchPolicy(priority_levels=2, default_priority=3),
        BatchPolicy(max_queue_delay_s=-1),
    ):
        with pytest.raises(ValueError):
            Batcher("m", policy, r)
    with pytest.raises(ValueError):
        Batcher("m", BatchPolicy(), [])


async def test_queue_seconds_come_from_the_injected_clock(make):
    now = [100.0]
    gate = threading.Event()
    runner = FakeRunner(gate=gate)
    b = await make(BatchPolicy(), runner, clock=lambda: now[0])
    busy = await hold(b, runner)
    queued = asyncio.create_task(b.submit(Request("q", 1)))
    await settle()
    now[0] += 5.0
    gate.set()
    (_, busy_q), (_, queued_q) = await asyncio.wait_for(asyncio.gather(busy, queued), 2)
    assert busy_q == 0.0
    assert queued_q == 5.0


async def test_instance_thread_that_stops_fails_its_batch_instead_of_hanging(make, monkeypatch):
    ended: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", ended.append)  # the thread's own end, as meant here

    def runner(batch: list[Request]) -> list[Any]:
        raise SystemExit("the instance's thread ends")

    b = await make(BatchPolicy(), runner)
    with pytest.raises(BatcherClosed, match="instance stopped"):
        await asyncio.wait_for(b.submit(Request("x", 1)), 2)
    assert b.in_flight == 0
    await asyncio.wait_for(b.close(), 2)  # the thread has exited: close does not wait for it forever
    for thread in b._threads:
        await asyncio.to_thread(thread.join, 2)
    assert [type(e.exc_value) for e in ended] == [SystemExit]


async def test_each_run_batch_is_told_once_with_its_requests(make):
    """on_done (for the device's health) hears of the batches that ran, never of requests that timed out or were
    cancelled in the queue: those never reached a device."""
    gate = threading.Event()
    told: list[tuple[int, int, str]] = []
    runner = FakeRunner(fail_on="bad")
    b = await make(dyn(preferred_batch_sizes=(2,), max_queue_delay_s=0.05, default_timeout_s=0.1,
                       allow_timeout_override=True), runner,
                   on_done=lambda i, n, e: told.append((i, n, "" if e is None else type(e).__name__)))
    await asyncio.wait_for(asyncio.gather(*(b.submit(Request(p, 1)) for p in ["a", "b"])), 2)
    with pytest.raises(RuntimeError, match="boom"):
        await asyncio.wait_for(b.submit(Request("bad", 1)), 2)
    runner.gate = gate
    runner.started.clear()
    held = await hold(b, runner)
    with pytest.raises(QueueTimeout):
        await b.submit(Request("late", 1))
    doomed = asyncio.create_task(b.submit(Request("doomed", 1, timeout_s=5)))
    await settle()
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    gate.set()
    await asyncio.wait_for(held, 2)
    assert told == [(0, 2, ""), (0, 1, "RuntimeError"), (0, 1, "")]  # requests, not rows


async def test_on_done_names_the_instance_that_ran_the_batch(make):
    told: list[tuple[int, bool]] = []
    fine, broken = FakeRunner(), FakeRunner(fail_on="x")
    b = await make(BatchPolicy(), fine, broken, on_done=lambda i, n, e: told.append((i, e is None)))
    await asyncio.wait_for(asyncio.gather(*(b.submit(Request("x", 1)) for _ in range(20)),
                                          return_exceptions=True), 5)
    assert len(told) == 20 and all(ok == (i == 0) for i, ok in told)  # instance 1 fails every run
