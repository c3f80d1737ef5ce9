"""The router's admission queue: a bound on requests in flight, priority order beyond it, shedding the lowest
priority first when the queue is full, deadlines and cancellation freeing their place at once."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from xpud.controller.admission import Admission, Shed
from xpud.proto.status import StatusError


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_under_the_limit_requests_pass_at_once() -> None:
    a = Admission("d", limit=2, max_queue=4)
    await a.acquire()
    await a.acquire()
    assert a.in_flight == 2 and a.queued == 0
    a.release()
    a.release()
    assert a.in_flight == 0


async def test_no_limit_means_no_queue() -> None:
    a = Admission("d", limit=0, max_queue=0)
    for _ in range(100):
        await a.acquire()
    assert a.in_flight == 100 and a.queued == 0


async def test_waiters_get_slots_by_priority_then_arrival() -> None:
    a = Admission("d", limit=1, max_queue=10)
    await a.acquire()
    order: list[str] = []

    async def wait(name: str, priority: int) -> None:
        await a.acquire(priority)
        order.append(name)

    tasks = [asyncio.create_task(wait(n, p)) for n, p in (("low-a", 3), ("high-a", 1), ("default", 0),
                                                           ("low-b", 3), ("high-b", 1))]
    await settle()
    assert a.queued == 5 and not order
    for _ in range(5):
        a.release()  # each release hands the one slot to the best waiter
        await settle()
    await asyncio.gather(*tasks)
    assert order == ["high-a", "high-b", "low-a", "low-b", "default"]  # 0 = the deployment's default: lowest
    assert a.in_flight == 1


async def test_a_full_queue_sheds_the_lowest_priority_first() -> None:
    a = Admission("iris", limit=1, max_queue=2)
    await a.acquire()
    low = asyncio.create_task(a.acquire(5))
    mid = asyncio.create_task(a.acquire(3))
    await settle()
    high = asyncio.create_task(a.acquire(1))  # full: the priority-5 waiter makes room
    await settle()
    with pytest.raises(Shed) as shed:
        await low
    assert shed.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "deployment 'iris' is at its limit (1 requests in flight, 2 waiting)" in shed.value.message
    with pytest.raises(Shed):  # a newcomer no better than the worst waiter is refused itself
        await a.acquire(3)
    assert a.shed == 2
    a.release()
    await settle()
    assert high.done() and not mid.done()
    a.release()
    await asyncio.gather(high, mid)


async def test_a_deadline_gives_up_and_a_cancelled_waiter_leaves() -> None:
    a = Admission("d", limit=1, max_queue=4)
    await a.acquire()
    with pytest.raises(StatusError) as late:
        await a.acquire(1, timeout=0.01)
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and "no free slot" in late.value.message
    gone = asyncio.create_task(a.acquire(1))
    stays = asyncio.create_task(a.acquire(2))
    await settle()
    gone.cancel()
    await settle()
    assert a.queued == 1
    a.release()  # the slot skips the cancelled waiter
    await stays
    assert a.in_flight == 1


async def test_more_room_admits_waiters() -> None:
    a = Admission("d", limit=1, max_queue=4)
    await a.acquire()
    waiters = [asyncio.create_task(a.acquire()) for _ in range(3)]
    await settle()
    a.resize(3)  # a replica came: two more slots
    await settle()
    assert sum(w.done() for w in waiters) == 2 and a.in_flight == 3
    a.resize(0)  # no bound
    await asyncio.gather(*waiters)
    assert a.in_flight == 4
