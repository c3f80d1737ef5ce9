"""schedule(): priorities and preemption, which victims go and which device they leave."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pool_shapes import dep, node, rep, where

from xpud.controller.core import Replica as R
from xpud.controller.scheduler import schedule

# --- schedule(): priority and preemption ------------------------------------------------------------------------

LO, HI = dep("lo", gib=60), dep("hi", gib=60, priority=10)


@pytest.mark.parametrize(
    ("nodes", "deps", "current", "placed", "preempted", "pending"),
    [
        # higher first: on a fresh cluster hi gets the device and lo waits
        ([node("n1")], [LO, HI], {}, {"hi": [(0, "n1/nvidia:0")], "lo": []}, [], ["lo"]),
        # hi evicts lo; lo has nowhere else to go
        (
            [node("n1")],
            [LO, HI],
            {"lo": [rep(LO, 0, "n1/nvidia:0")]},
            {"hi": [(0, "n1/nvidia:0")], "lo": []},
            ["preempted by hi (priority 10 > 0)"],
            ["lo"],
        ),
        # hi's zone matches no node: nothing is evicted
        (
            [node("n1"), node("n2", devices={"nvidia:0": {"memory": 70}})],
            [LO, replace(HI, zone="z1")],
            {"lo": [rep(LO, 0, "n1/nvidia:0")]},
            {"hi": [], "lo": [(0, "n1/nvidia:0")]},
            [],
            ["hi"],
        ),
        # never equal priority
        (
            [node("n1")],
            [LO, replace(HI, priority=0)],
            {"lo": [rep(LO, 0, "n1/nvidia:0")]},
            {"hi": [], "lo": [(0, "n1/nvidia:0")]},
            [],
            ["hi"],
        ),
        # never higher
        (
            [node("n1")],
            [replace(LO, priority=20), HI],
            {"lo": [rep(LO, 0, "n1/nvidia:0")]},
            {"hi": [], "lo": [(0, "n1/nvidia:0")]},
            [],
            ["hi"],
        ),
    ],
    ids=["fresh", "evict", "zone-blocks", "equal", "higher"],
)
def test_priority(nodes: list, deps: list, current: dict, placed: dict, preempted: list, pending: list) -> None:
    d = schedule(nodes, deps, current)
    assert {k: where(d, k) for k in placed} == placed
    assert [(x, why.split(":")[0]) for x, why in d.preempted] == [("lo", p) for p in preempted]
    assert sorted(d.pending) == pending


def test_evicted_replica_is_placed_elsewhere() -> None:
    nodes = [node("n1", zone="z1"), node("n2", zone="z2")]
    other = dep("other", gib=60, priority=5)  # fills n2 first, then lo must move into the room left
    d = schedule(nodes, [LO, replace(HI, zone="z1")], {"lo": [rep(LO, 0, "n1/nvidia:0")]})
    assert where(d, "hi") == [(0, "n1/nvidia:0")] and where(d, "lo") == [(0, "n2/nvidia:0")]
    assert d.preempted == [("lo", "preempted by hi (priority 10 > 0): replica 0 on n1/nvidia:0")]
    assert d.moved == [("lo", "preempted by hi (priority 10 > 0): replica 0 moved n1/nvidia:0 -> n2/nvidia:0")]
    assert not d.pending
    d = schedule(nodes, [LO, other, replace(HI, zone="z1")], {"lo": [rep(LO, 0, "n1/nvidia:0")]})
    assert where(d, "other") == [(0, "n2/nvidia:0")] and where(d, "lo") == [] and "lo" in d.pending


@pytest.mark.parametrize(
    ("on_device", "need", "evicted"),
    [
        # (name, priority, index, GiB) already on the one 80 GiB device; hi (priority 10) needs `need` GiB
        ([("a", 0, 0, 40), ("b", 5, 0, 40)], 40, ["a"]),  # lowest priority first
        ([("a", 5, 0, 40), ("b", 0, 0, 40)], 40, ["b"]),
        ([("a", 0, 0, 20), ("a", 0, 1, 20), ("b", 1, 0, 40)], 20, ["a/1"]),  # most recent (highest index) first
        ([("a", 0, 0, 20), ("a", 0, 1, 20), ("b", 1, 0, 40)], 40, ["a/1", "a/0"]),  # fewest of the lowest level
        ([("a", 0, 0, 30), ("b", 1, 0, 50)], 60, ["a", "b"]),  # a alone is too little: b too
        ([("a", 0, 0, 10), ("b", 1, 0, 70)], 50, ["b"]),  # a alone is too little, b alone is enough: a stays
        ([("a", 0, 0, 10), ("b", 0, 0, 70)], 50, ["b"]),
        ([("a", 10, 0, 40), ("b", 10, 0, 40)], 40, []),  # equal priority: nothing
    ],
)
def test_victims(on_device: list[tuple[str, int, int, int]], need: int, evicted: list[str]) -> None:
    specs = {n: dep(n, replicas=2, gib=g, priority=p) for n, p, _i, g in on_device}
    current: dict[str, list[R]] = {}
    for n, _p, i, _g in on_device:
        current.setdefault(n, []).append(rep(specs[n], i, "n1/nvidia:0"))
    hi = dep("hi", gib=need, priority=10)
    solo = [replace(s, replicas=max(r.index for r in current[s.name]) + 1) for s in specs.values()]
    d = schedule([node("n1")], [*solo, hi], current)
    got = [f"{x}/{why.split('replica ')[1].split(' ')[0]}" for x, why in d.preempted]
    want = [e if "/" in e else f"{e}/0" for e in evicted]
    assert got == want
    assert where(d, "hi") == ([(0, "n1/nvidia:0")] if evicted else [])


def test_preemption_prefers_the_device_with_fewest_victims() -> None:
    small, large = dep("small", replicas=4, gib=15), dep("large", gib=60)
    current = {"small": [rep(small, i, "a/nvidia:0") for i in range(4)], "large": [rep(large, 0, "b/nvidia:0")]}
    d = schedule([node("a"), node("b")], [small, large, dep("hi", gib=50, priority=10)], current)
    assert where(d, "hi") == [(0, "b/nvidia:0")]  # a would need 2 evictions, b needs 1
    assert [x for x, _ in d.preempted] == ["large"]


def test_preemption_prefers_the_lowest_priority_over_fewer_victims() -> None:
    small, large = dep("small", replicas=4, gib=15), dep("large", gib=60, priority=5)
    current = {"small": [rep(small, i, "a/nvidia:0") for i in range(4)], "large": [rep(large, 0, "b/nvidia:0")]}
    d = schedule([node("a"), node("b")], [small, large, dep("hi", gib=50, priority=10)], current)
    assert where(d, "hi") == [(0, "a/nvidia:0")]
    assert [why.split(": ")[1] for _, why in d.preempted] == ["replica 3 on a/nvidia:0", "replica 2 on a/nvidia:0"]



def test_preemption_cascades_down_the_priorities() -> None:
    lo, mid, hi = dep("lo", gib=50), dep("mid", gib=50, priority=5), dep("hi", gib=50, priority=10)
    current = {"lo": [rep(lo, 0, "b/nvidia:0")], "mid": [rep(mid, 0, "a/nvidia:0")]}
    d = schedule([node("a"), node("b")], [lo, mid, hi], current)
    # hi takes the device of lo (the lowest victim), so mid stays and lo waits
    assert where(d, "hi") == [(0, "b/nvidia:0")] and where(d, "mid") == [(0, "a/nvidia:0")]
    assert [x for x, _ in d.preempted] == ["lo"] and "lo" in d.pending
    # hi may only use a: it evicts mid, which evicts lo from b
    d = schedule([node("a", zone="z1"), node("b", zone="z2")], [lo, mid, replace(hi, zone="z1")], current)
    assert where(d, "hi") == [(0, "a/nvidia:0")] and where(d, "mid") == [(0, "b/nvidia:0")] and where(d, "lo") == []
    assert [x for x, _ in d.preempted] == ["mid", "lo"]
    assert d.moved == [
        ("mid", "preempted by hi (priority 10 > 5): replica 0 moved a/nvidia:0 -> b/nvidia:0"),
        ("lo", "preempted by mid (priority 5 > 0): replica 0 from b/nvidia:0 awaits a device"),
    ]
