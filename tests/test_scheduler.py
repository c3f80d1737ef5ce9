"""The placement function: filters and whole schedule() calls, table-driven over small hardware shapes."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from pool_shapes import SHAPES, GiB, dep, node, rep, where

from xpud.controller import filters
from xpud.controller.core import NODE_LOST, NODE_SUSPECT, Decision, DeploymentSpec, DeviceView, NodeView
from xpud.controller.core import Replica as R
from xpud.controller.memo import FilterMemo
from xpud.controller.scheduler import schedule

# --- filters, one at a time -------------------------------------------------------------------------------------

NODE_CASES = [
    (filters.node_ready, {}, {}, None),
    (filters.node_ready, {"state": NODE_SUSPECT}, {}, "Suspect node"),
    (filters.node_ready, {"state": NODE_LOST}, {}, "Lost node"),
    (filters.node_not_cordoned, {}, {}, None),
    (filters.node_not_cordoned, {"cordoned": True}, {}, "cordoned"),
    (filters.node_not_draining, {"name": "n1"}, {}, None),
    (filters.node_not_draining, {"name": "drained"}, {}, "draining"),
    (filters.labels_match, {}, {}, None),
    (filters.labels_match, {"labels": {"gpu": "a100", "rack": "3"}}, {"labels": {"gpu": "a100"}}, None),
    (filters.labels_match, {"labels": {"gpu": "h100"}}, {"labels": {"gpu": "a100"}}, "without labels gpu=a100"),
    (filters.labels_match, {}, {"labels": {"gpu": "a100", "pool": "x"}}, "without labels gpu=a100,pool=x"),
    (filters.zone_matches, {"zone": "eu-1"}, {}, None),
    (filters.zone_matches, {"zone": "eu-1"}, {"zone": "eu-1"}, None),
    (filters.zone_matches, {"zone": "eu-2"}, {"zone": "eu-1"}, "outside zone eu-1"),
    (filters.zone_matches, {}, {"zone": "eu-1"}, "outside zone eu-1"),
]


@pytest.mark.parametrize(("check", "node_kw", "dep_kw", "expect"), NODE_CASES)
def test_node_filter(check: filters.NodeFilter, node_kw: dict, dep_kw: dict, expect: str | None) -> None:
    n = replace(node("n1"), **node_kw)
    got = check(n, dep(**dep_kw), frozenset({"drained"}))
    assert got is None if expect is None else expect in got[0] and expect in got[1]


DEVICE_CASES = [
    (filters.kind_matches, {"kind": "gpu"}, {"device": "gpu"}, None),
    (filters.kind_matches, {"kind": "cpu"}, {"device": "gpu"}, "cpu devices (want gpu)"),
    (filters.kind_matches, {"kind": "gpu"}, {"device": "cpu"}, "gpu devices (want cpu)"),
    (filters.kind_matches, {"kind": "cpu"}, {"device": "any"}, None),
    (filters.kind_matches, {"kind": "gpu"}, {"device": "any"}, None),
    (filters.runnable, {}, {}, None),
    (filters.runnable, {"runnable": False}, {}, "not runnable"),
    (filters.healthy, {"health": "ok"}, {}, None),
    (filters.healthy, {"health": "degraded"}, {}, None),
    (filters.healthy, {"health": "unknown"}, {}, None),
    (filters.healthy, {"health": "failed"}, {}, "failed"),
]


@pytest.mark.parametrize(("check", "dev_kw", "dep_kw", "expect"), DEVICE_CASES)
def test_device_filter(check: filters.DeviceFilter, dev_kw: dict, dep_kw: dict, expect: str | None) -> None:
    d = replace(DeviceView("n1", "x:0", "gpu", 80 * GiB), **dev_kw)
    got = check(d, dep(**dep_kw))
    assert got is None if expect is None else expect in got[1]


@pytest.mark.parametrize(
    ("free_gib", "need_gib", "most_free", "expect"),
    [
        (80, 24, None, None),
        (24, 24, None, None),
        (23.9, 24, None, "too little free memory (need 24.0 GiB)"),
        (0, 0.5, 8 * GiB, "(need 512.0 MiB, most free 8.0 GiB)"),
    ],
)
def test_memory_filter(free_gib: float, need_gib: float, most_free: int | None, expect: str | None) -> None:
    got = filters.memory_fits(int(free_gib * GiB), dep(gib=need_gib), most_free)
    assert got is None if expect is None else expect in got[1]


@pytest.mark.parametrize(
    ("rejected", "total", "expect"),
    [
        ({}, 0, "no devices"),
        (
            {(8, "has x", "have too little free memory"): 8, (5, "is a cpu", "are cpu devices"): 4},
            12,
            "0/12 devices fit: 8 have too little free memory, 4 are cpu devices",
        ),
        ({(5, "is a cpu device", "are cpu devices"): 1}, 1, "0/1 devices fit: 1 is a cpu device"),
        (
            {(8, "has mem", "have mem"): 2, (0, "is on a Lost node", "are on Lost nodes"): 2},
            4,
            "0/4 devices fit: 2 are on Lost nodes, 2 have mem",
        ),  # equal counts: the earlier filter first
    ],
)
def test_explain(rejected: dict, total: int, expect: str) -> None:
    assert filters.explain(rejected, total) == expect


DISPLACEMENT_CASES = [
    ({}, {}, {}, None),
    ({"state": NODE_SUSPECT}, {}, {}, None),
    ({"cordoned": True}, {}, {}, None),
    ({"state": NODE_LOST}, {}, {}, "node n1 lost"),
    ({"name": "drained"}, {}, {}, "node drained draining"),
    ({}, {"health": "failed"}, {}, "device n1/nvidia:0 failed"),
    ({}, {"health": "degraded"}, {}, None),
    ({}, {"runnable": False}, {}, "no longer runnable"),
    ({}, {}, {"device": "cpu"}, "is gpu (want cpu)"),
    ({}, {}, {"labels": {"gpu": "h100"}}, "node n1 no longer has labels gpu=h100"),
    ({"zone": "eu-2"}, {}, {"zone": "eu-1"}, "node n1 is in zone eu-2 (want eu-1)"),
]


@pytest.mark.parametrize(("node_kw", "dev_kw", "dep_kw", "expect"), DISPLACEMENT_CASES)
def test_displacement(node_kw: dict, dev_kw: dict, dep_kw: dict, expect: str | None) -> None:
    n = replace(node("n1"), **node_kw)
    d = replace(n.devices[0], **dev_kw)
    got = filters.displacement(n.name, d.id, n, d, dep(**dep_kw), frozenset({"drained"}))
    assert got is None if expect is None else expect in got


@pytest.mark.parametrize(
    ("present", "expect"),
    [((False, True), "node n1 gone"), ((True, False), "device n1/nvidia:0 gone")],
)
def test_displacement_of_what_is_gone(present: tuple[bool, bool], expect: str) -> None:
    n = node("n1")
    got = filters.displacement(
        "n1", "nvidia:0", n if present[0] else None, n.devices[0] if present[1] else None, dep(), frozenset()
    )
    assert got == expect


# --- schedule(): strategies -------------------------------------------------------------------------------------

STRATEGY_CASES = [
    # binpack fills one device before the next
    (
        "binpack-fills",
        [node("n1", "two-gpu")],
        dep(replicas=3, gib=20),
        [(0, "n1/nvidia:0"), (1, "n1/nvidia:0"), (2, "n1/nvidia:0")],
    ),
    # binpack overflows to the next device once full
    (
        "binpack-overflows",
        [node("n1", "two-gpu")],
        dep(replicas=3, gib=30),
        [(0, "n1/nvidia:0"), (1, "n1/nvidia:0"), (2, "n1/nvidia:1")],
    ),
    # binpack takes the smallest device that fits
    ("binpack-smallest", [node("a", "dgx-a100"), node("b", "jetson-orin")], dep(gib=20), [(0, "b/jetson:0")]),
    # spread: one replica per node, then the most free device
    (
        "spread-nodes",
        [node("n1", "two-gpu"), node("n2", "two-gpu"), node("n3", "one-gpu")],
        dep(replicas=4, gib=10, strategy="spread"),
        [(0, "n1/nvidia:0"), (1, "n2/nvidia:0"), (2, "n3/nvidia:0"), (3, "n1/nvidia:1")],
    ),
    (
        "spread-most-free",
        [node("a", "one-gpu", {"nvidia:0": {"memory": 40}}), node("b", "one-gpu")],
        dep(gib=10, strategy="spread"),
        [(0, "b/nvidia:0")],
    ),
    # then lower utilization (None counts as 0), then names
    ("util", [node("a", devices={"nvidia:0": {"utilization": 0.7}}), node("b")], dep(), [(0, "b/nvidia:0")]),
    (
        "util-none-is-idle",
        [node("a", devices={"nvidia:0": {"utilization": 0.1}}), node("b")],
        dep(),
        [(0, "b/nvidia:0")],
    ),
    ("names", [node("b"), node("a")], dep(), [(0, "a/nvidia:0")]),
    # kind: cpu deployments go to cpu devices, "any" takes the tightest of either
    ("kind-cpu", [node("n", "gpu-and-cpu")], dep(device="cpu"), [(0, "n/cpu:0")]),
    ("kind-gpu", [node("n", "gpu-and-cpu")], dep(device="gpu"), [(0, "n/nvidia:0")]),
    ("kind-any", [node("n", "gpu-and-cpu")], dep(device="any", gib=30), [(0, "n/cpu:0")]),
    # labels and zone
    (
        "labels",
        [node("a", labels={"gpu": "l4"}), node("b", labels={"gpu": "a100"})],
        dep(labels={"gpu": "a100"}),
        [(0, "b/nvidia:0")],
    ),
    ("zone", [node("a", zone="eu-1"), node("b", zone="us-1")], dep(zone="us-1"), [(0, "b/nvidia:0")]),
    # filters for new replicas: Suspect, cordoned, draining ("d"), not runnable, failed devices take none
    (
        "skip-unfit",
        [
            node("a", state=NODE_SUSPECT),
            node("b", cordoned=True),
            node("d"),
            node("e", devices={"nvidia:0": {"runnable": False}}),
            node("f", devices={"nvidia:0": {"health": "failed"}}),
            node("z"),
        ],
        dep(),
        [(0, "z/nvidia:0")],
    ),
    # fractional sharing: 4 x 20 GiB on one 80 GiB GPU, the 5th elsewhere
    (
        "fractional",
        [node("a"), node("b")],
        dep(replicas=5, gib=20),
        [(0, "a/nvidia:0"), (1, "a/nvidia:0"), (2, "a/nvidia:0"), (3, "a/nvidia:0"), (4, "b/nvidia:0")],
    ),
]


@pytest.mark.parametrize(
    ("nodes", "spec", "expect"), [c[1:] for c in STRATEGY_CASES], ids=[c[0] for c in STRATEGY_CASES]
)
def test_placement(nodes: list[NodeView], spec: DeploymentSpec, expect: list[tuple[int, str]]) -> None:
    d = schedule(nodes, [spec], {}, draining=frozenset({"d"}))
    assert where(d, spec.name) == expect
    assert not d.pending and not d.moved and not d.preempted


def test_different_deployments_share_a_device() -> None:
    d = schedule([node("a"), node("b")], [dep("x", gib=30), dep("y", gib=30), dep("z", gib=30)], {})
    assert [r.node for name in "xyz" for r in d.replicas[name]] == ["a", "a", "b"]


# --- schedule(): stability, moves, scale ------------------------------------------------------------------------

M = dep("m", replicas=2, gib=30)
IN_FORCE = {"m": [rep(M, 0, "n1/nvidia:0"), rep(M, 1, "n2/nvidia:0")]}
STAY = [(0, "n1/nvidia:0"), (1, "n2/nvidia:0")]
MOVED = [(0, "n1/nvidia:0"), (1, "n1/nvidia:0")]  # replica 1 left n2 for n1 (n3 is cordoned: takes nothing new)

STABILITY_CASES: list[tuple[str, dict[str, Any] | None, set[str], dict[str, Any], list, str | None]] = [
    # (id, overrides of n2 (None: gone), draining, deployment fields, placement, why replica 1 moved or None)
    ("unchanged", {}, set(), {}, STAY, None),
    ("suspect-keeps", {"state": NODE_SUSPECT}, set(), {}, STAY, None),
    ("cordon-keeps", {"cordoned": True}, set(), {}, STAY, None),
    ("degraded-keeps", {"health": "degraded"}, set(), {}, STAY, None),
    ("lost-moves", {"state": NODE_LOST}, set(), {}, MOVED, "node n2 lost"),
    ("drain-moves", {"cordoned": True}, {"n2"}, {}, MOVED, "node n2 draining"),
    ("device-failed", {"health": "failed"}, set(), {}, MOVED, "device n2/nvidia:0 failed"),
    ("device-gone", {"devices": ()}, set(), {}, MOVED, "device n2/nvidia:0 gone"),
    ("node-gone", None, set(), {}, MOVED, "node n2 gone"),
    (
        "labels-changed",
        {"labels": {}},
        set(),
        {"labels": {"tier": "gold"}},
        MOVED,
        "node n2 no longer has labels tier=gold",
    ),
    ("zone-changed", {"zone": "z2"}, set(), {"zone": "z1"}, MOVED, "node n2 is in zone z2 (want z1)"),
]


def _cluster(n2: dict[str, Any] | None) -> list[NodeView]:
    out = [node(name, cordoned=name == "n3", labels={"tier": "gold"}, zone="z1") for name in ("n1", "n2", "n3")]
    if n2 is None:
        return [out[0], out[2]]
    kw = dict(n2)
    if (health := kw.pop("health", None)) is not None:
        kw["devices"] = tuple(replace(d, health=health) for d in out[1].devices)
    out[1] = replace(out[1], **kw)
    return out


@pytest.mark.parametrize(
    ("n2", "draining", "spec_kw", "expect", "moved"),
    [c[1:] for c in STABILITY_CASES],
    ids=[c[0] for c in STABILITY_CASES],
)
def test_stability_and_moves(
    n2: dict | None, draining: set[str], spec_kw: dict, expect: list, moved: str | None
) -> None:
    d = schedule(_cluster(n2), [replace(M, **spec_kw)], IN_FORCE, draining=frozenset(draining))
    assert where(d, "m") == expect
    assert not d.pending and not d.preempted
    assert d.moved == ([] if moved is None else [("m", f"{moved}: replica 1 moved n2/nvidia:0 -> n1/nvidia:0")])


def test_lost_node_with_no_room_left_is_moved_and_pending() -> None:
    d = schedule(
        _cluster({"state": NODE_LOST}),
        [replace(M, memory_bytes=60 * GiB)],
        {"m": [rep(M, 0, "n1/nvidia:0"), rep(M, 1, "n2/nvidia:0")]},
    )
    assert where(d, "m") == [(0, "n1/nvidia:0")]
    assert d.moved == [("m", "node n2 lost: replica 1 from n2/nvidia:0 awaits a device")]
    assert d.pending["m"].startswith("1/2 replicas placed: 0/3 devices fit:")


@pytest.mark.parametrize(
    ("replicas", "current", "expect"),
    [
        (
            4,
            [(0, "n2/nvidia:0"), (1, "n3/nvidia:0")],
            [(0, "n2/nvidia:0"), (1, "n3/nvidia:0"), (2, "n2/nvidia:0"), (3, "n2/nvidia:0")],
        ),  # scale up keeps existing (binpack: the new ones join the fullest device that fits)
        (
            3,
            [(0, "n2/nvidia:0"), (2, "n2/nvidia:0")],
            [(0, "n2/nvidia:0"), (1, "n2/nvidia:0"), (2, "n2/nvidia:0")],
        ),  # lowest free index first
        (1, [(0, "n2/nvidia:0"), (1, "n1/nvidia:0"), (2, "n2/nvidia:0")], [(0, "n2/nvidia:0")]),  # scale down
        (0, [(0, "n2/nvidia:0")], []),
        (2, [(0, "n2/nvidia:0"), (0, "n1/nvidia:0")], [(0, "n1/nvidia:0"), (1, "n1/nvidia:0")]),  # duplicate index
    ],
)
def test_scaling_and_indexes(replicas: int, current: list[tuple[int, str]], expect: list) -> None:
    spec = dep("m", replicas=replicas, gib=10)
    nodes = [node("n1"), node("n2"), node("n3")]
    d = schedule(nodes, [spec], {"m": [rep(spec, i, at) for i, at in current]})
    assert where(d, "m") == expect
    assert not d.moved and not d.pending


def test_scale_down_frees_memory_for_others() -> None:
    big, other = dep("big", replicas=1, gib=60), dep("other", gib=40)
    d = schedule([node("n1")], [big, other], {"big": [rep(big, 0, "n1/nvidia:0")]})
    assert where(d, "big") == [(0, "n1/nvidia:0")] and "other" in d.pending
    d = schedule([node("n1")], [replace(big, replicas=0), other], {"big": [rep(big, 0, "n1/nvidia:0")]})
    assert where(d, "big") == [] and where(d, "other") == [(0, "n1/nvidia:0")]


def test_deleted_deployment_frees_its_device() -> None:
    old, new = dep("old", gib=70), dep("new", gib=70)
    d = schedule([node("n1")], [new], {"old": [rep(old, 0, "n1/nvidia:0")]})
    assert "old" not in d.replicas and where(d, "new") == [(0, "n1/nvidia:0")] and not d.moved


def test_grown_replica_that_no_longer_fits_moves() -> None:
    a, b = dep("a", gib=40), dep("b", gib=40)
    current = {"a": [rep(a, 0, "n1/nvidia:0")], "b": [rep(b, 0, "n1/nvidia:0")]}
    d = schedule([node("n1"), node("n2")], [a, replace(b, memory_bytes=50 * GiB)], current)
    assert where(d, "a") == [(0, "n1/nvidia:0")] and where(d, "b") == [(0, "n2/nvidia:0")]
    assert d.moved == [("b", "device n1/nvidia:0 has no room for 50.0 GiB: replica 0 moved n1/nvidia:0 -> n2/nvidia:0")]


def test_nothing_moves_when_nothing_changed() -> None:
    nodes = [node("a", "dgx-a100"), node("b", "dgx-a100"), node("c", "jetson-orin"), node("d", "cpu-only")]
    deps = [
        dep(
            f"d{i}",
            replicas=1 + i % 3,
            gib=5 + 7 * i % 30,
            strategy=("binpack", "spread")[i % 2],
            device=("gpu", "any", "cpu")[i % 3],
            priority=i % 2,
        )
        for i in range(12)
    ]
    first = schedule(nodes, deps, {})
    again = schedule(nodes, deps, first.replicas)
    assert again == Decision(replicas=first.replicas, pending=first.pending)


def test_deterministic_whatever_the_input_order() -> None:
    nodes = [node(f"n{i}", ("dgx-a100", "jetson-orin", "cpu-only", "two-gpu")[i % 4]) for i in range(8)]
    deps = [
        dep(
            f"d{i}",
            replicas=2 + i % 4,
            gib=3 + 5 * i % 40,
            strategy=("binpack", "spread")[i % 2],
            device=("gpu", "any", "cpu")[i % 3],
            priority=i % 3,
        )
        for i in range(20)
    ]
    first = schedule(nodes, deps, {})
    rng = random.Random(1)
    for _ in range(3):
        n2, d2 = nodes[:], deps[:]
        rng.shuffle(n2)
        rng.shuffle(d2)
        assert schedule(n2, d2, {}) == first


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


# --- schedule(): pending reasons --------------------------------------------------------------------------------

PENDING_CASES = [
    ("no-nodes", [], dep(), "no nodes"),
    ("no-ready", [node("a", state=NODE_LOST), node("b", state=NODE_SUSPECT)], dep(), "no Ready node"),
    (
        "memory-and-kind",
        [node("a", "dgx-a100"), node("b", "cpu-only"), node("c", "jetson-orin")],
        dep(gib=100, device="gpu"),
        "0/11 devices fit: 9 have too little free memory (need 100.0 GiB, most free 80.0 GiB), "
        "2 are cpu devices (want gpu)",
    ),
    (
        "zone",
        [node("a", zone="eu-1"), node("b", "two-gpu", zone="us-1")],
        dep(gib=90, zone="eu-1"),
        "0/3 devices fit: 2 are outside zone eu-1, 1 has too little free memory (need 90.0 GiB, most free 80.0 GiB)",
    ),
    (
        "states",
        [node("a", cordoned=True), node("b", state=NODE_LOST), node("c")],
        dep(gib=81),
        "0/3 devices fit: 1 is on a Lost node, 1 is on a cordoned node, 1 has too little free memory "
        "(need 81.0 GiB, most free 80.0 GiB)",
    ),
    (
        "labels",
        [node("a", "two-gpu"), node("b", devices={"nvidia:0": {"health": "failed"}})],
        dep(labels={"gpu": "h100"}),
        "0/3 devices fit: 3 are on nodes without labels gpu=h100",
    ),
    ("failed", [node("b", devices={"nvidia:0": {"health": "failed"}})], dep(), "0/1 devices fit: 1 has failed"),
    (
        "not-runnable",
        [node("b", "two-gpu", devices={"nvidia:0": {"runnable": False}, "nvidia:1": {"runnable": False}})],
        dep(),
        "0/2 devices fit: 2 are not runnable (no ONNX Runtime provider)",
    ),
    (
        "partial",
        [node("a")],
        dep(replicas=3, gib=30),
        "2/3 replicas placed: 0/1 devices fit: 1 has too little free memory (need 30.0 GiB, most free 20.0 GiB)",
    ),
]


@pytest.mark.parametrize(("nodes", "spec", "reason"), [c[1:] for c in PENDING_CASES], ids=[c[0] for c in PENDING_CASES])
def test_pending_reason(nodes: list[NodeView], spec: DeploymentSpec, reason: str) -> None:
    d = schedule(nodes, [spec], {})
    assert d.pending == {spec.name: reason}


def test_draining_is_a_filter_for_new_replicas_too() -> None:
    d = schedule([node("a")], [dep()], {}, draining=frozenset({"a"}))
    assert d.pending == {"m": "0/1 devices fit: 1 is on a draining node"}


def test_a_node_in_an_unknown_state_loses_its_replicas() -> None:
    d = schedule([node("a", state="Unknown")], [dep()], {"m": [rep(dep(), 0, "a/nvidia:0")]})
    assert d.moved == [("m", "node a Unknown: replica 0 from a/nvidia:0 awaits a device")]
    assert d.pending == {"m": "no Ready node"}


@pytest.mark.parametrize("seed", range(8))
def test_any_decision_is_a_fixed_point(seed: int) -> None:
    """Random tight clusters with priorities, a lost node and a drain: applying a decision and scheduling the same
    input again keeps every replica and moves, preempts and places nothing more."""
    rng = random.Random(seed)
    shapes = list(SHAPES)
    nodes = [node(f"n{i}", rng.choice(shapes), zone=rng.choice(["z1", "z2"])) for i in range(6)]
    deps = [
        dep(
            f"d{i}",
            replicas=rng.randint(1, 4),
            gib=rng.choice([4, 10, 20, 30, 45]),
            device=rng.choice(["gpu", "cpu", "any"]),
            priority=rng.choice([0, 0, 5, 10]),
            zone=rng.choice(["", "", "z1"]),
            strategy=rng.choice(["binpack", "spread"]),
        )
        for i in range(rng.randint(12, 30))
    ]
    first = schedule(nodes, deps, {})
    lost = [replace(n, state=NODE_LOST) if n.name == "n0" else n for n in nodes]
    bumped = [replace(d, priority=20) if i % 5 == 0 else d for i, d in enumerate(deps)]
    for decision, inputs, draining in [
        (first, (nodes, deps), frozenset()),
        (schedule(lost, deps, first.replicas), (lost, deps), frozenset()),
        (schedule(nodes, bumped, first.replicas), (nodes, bumped), frozenset()),
        (schedule(nodes, deps, first.replicas, draining=frozenset({"n1"})), (nodes, deps), frozenset({"n1"})),
    ]:
        again = schedule(*inputs, decision.replicas, draining=draining)
        assert again == Decision(replicas=decision.replicas, pending=decision.pending)
        for name, reps in decision.replicas.items():
            spec = next(d for d in inputs[1] if d.name == name)
            indexes = [r.index for r in reps]  # a lost replica's index may stay free while later ones are kept
            assert indexes == sorted(set(indexes)) and all(0 <= i < spec.replicas for i in indexes)
            if name not in decision.pending:
                assert indexes == list(range(spec.replicas))
        used: dict[tuple[str, str], int] = {}
        for reps in decision.replicas.values():
            for r in reps:
                used[(r.node, r.device)] = used.get((r.node, r.device), 0) + r.memory
        totals = {(n.name, dv.id): dv.memory_total for n in inputs[0] for dv in n.devices}
        assert all(used[k] <= totals[k] for k in used)


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


def test_a_filter_memo_gives_the_same_decisions_and_follows_changed_views() -> None:
    rng = random.Random(7)
    nodes = [node(f"n{i}", rng.choice(list(SHAPES)), labels={"rack": f"r{i % 3}"}, zone=f"z{i % 2}")
             for i in range(12)]
    specs = [dep("a", 3, 20, device="gpu", strategy="spread"), dep("b", 2, 8, labels={"rack": "r1"}),
             dep("c", 2, 4, device="cpu", zone="z1")]
    memo = FilterMemo()
    current: dict[str, list[R]] = {}
    for step in range(4):
        if step == 2:  # a node's view changes (a new object): its answers are recomputed, not reused
            nodes[1] = replace(nodes[1], state=NODE_LOST)
        if step == 3:
            specs = specs[:1]  # the signatures of deployments that are gone are dropped
        plain = schedule(nodes, specs, current)
        assert schedule(nodes, specs, current, memo=memo) == plain
        current = plain.replicas
    assert len(memo.answers) == 1
