"""The scheduler's feasibility filters and its stability check, one table each."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pool_shapes import GiB, dep, node

from xpud.controller import filters
from xpud.controller.core import NODE_LOST, NODE_SUSPECT, DeviceView

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
    (filters.healthy, {"health_state": "suspect"}, {}, None),  # allowed, ranked after the others
    (filters.healthy, {"health_state": "unhealthy"}, {}, "are unhealthy"),
    (filters.healthy, {"health_state": "recovering"}, {}, "are recovering"),
    (filters.healthy, {"health": "degraded", "health_state": "healthy"}, {}, None),
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
    ({}, {"health_state": "unhealthy"}, {}, "device n1/nvidia:0 unhealthy"),
    ({}, {"health_state": "suspect"}, {}, None),
    ({}, {"health_state": "recovering"}, {}, None),  # nothing is placed there; what is there stays
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
