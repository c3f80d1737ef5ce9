"""The placement function: filters, scorers and whole schedule() calls, table-driven over small hardware shapes."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest

from xpud.controller import filters, scoring
from xpud.controller.core import NODE_LOST, NODE_SUSPECT, Decision, DeploymentSpec, DeviceView, NodeView
from xpud.controller.core import Replica as R
from xpud.controller.scheduler import LOAD_CANDIDATES, FilterMemo, Planner, schedule

GiB = 1 << 30

# One JSON-like fixture per hardware shape: (device id, kind, memory in GiB).
SHAPES: dict[str, list[dict[str, Any]]] = {
    "dgx-a100": [{"id": f"nvidia:{i}", "kind": "gpu", "memory": 80} for i in range(8)],
    "cpu-only": [{"id": "cpu:0", "kind": "cpu", "memory": 64}],
    "jetson-orin": [{"id": "jetson:0", "kind": "gpu", "memory": 32}, {"id": "cpu:0", "kind": "cpu", "memory": 8}],
    "one-gpu": [{"id": "nvidia:0", "kind": "gpu", "memory": 80}],
    "two-gpu": [{"id": f"nvidia:{i}", "kind": "gpu", "memory": 80} for i in range(2)],
    "gpu-and-cpu": [{"id": "nvidia:0", "kind": "gpu", "memory": 24}, {"id": "cpu:0", "kind": "cpu", "memory": 64}],
}


def node(name: str, shape: str = "one-gpu", devices: dict[str, dict[str, Any]] | None = None, **kw: Any) -> NodeView:
    """A node of one shape; `devices` overrides fields of single devices by id (utilization, health, ...)."""
    devs = []
    for d in SHAPES[shape]:
        extra = dict((devices or {}).get(d["id"], {}))
        memory = extra.pop("memory", d["memory"])
        devs.append(DeviceView(name, d["id"], d["kind"], int(memory * GiB), **extra))
    return NodeView(name, devices=tuple(devs), **kw)


def dep(name: str = "m", replicas: int = 1, gib: float = 10, **kw: Any) -> DeploymentSpec:
    return DeploymentSpec(name, model=name, version="1", replicas=replicas, memory_bytes=int(gib * GiB), **kw)


def where(decision: Decision, name: str) -> list[tuple[int, str]]:
    return [(r.index, f"{r.node}/{r.device}") for r in decision.replicas[name]]


def rep(d: DeploymentSpec, index: int, at: str) -> R:
    n, dev = at.split("/")
    return R(d.name, index, n, dev, d.memory_bytes)


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


# --- scorers ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),  # a ranks before b
    [
        (scoring.binpack_key(10, 0.9, "z", "z"), scoring.binpack_key(20, 0.0, "a", "a")),  # least free first
        (scoring.binpack_key(10, 0.1, "z", "z"), scoring.binpack_key(10, 0.5, "a", "a")),  # then least busy
        (scoring.binpack_key(10, 0.0, "a", "b"), scoring.binpack_key(10, 0.0, "b", "a")),  # then node name
        (scoring.binpack_key(10, 0.0, "a", "a"), scoring.binpack_key(10, 0.0, "a", "b")),  # then device id
        (scoring.spread_key(0, 10, 0.9, "z", "z"), scoring.spread_key(1, 80, 0.0, "a", "a")),  # fewest on node
        (scoring.spread_key(1, 80, 0.9, "z", "z"), scoring.spread_key(1, 10, 0.0, "a", "a")),  # then most free
        (scoring.spread_key(1, 80, 0.1, "z", "z"), scoring.spread_key(1, 80, 0.2, "a", "a")),  # then least busy
        (scoring.victim_key(0, 0, "x"), scoring.victim_key(1, 9, "a")),  # lowest priority evicted first
        (scoring.victim_key(0, 3, "x"), scoring.victim_key(0, 1, "a")),  # then the most recent (highest index)
        (scoring.preemption_key([0, 0], 90, 0.0, "a", "a"), scoring.preemption_key([5], 10, 0.0, "a", "a")),
        (scoring.preemption_key([0], 90, 0.0, "a", "a"), scoring.preemption_key([0, 0], 10, 0.0, "a", "a")),
        (scoring.preemption_key([0], 10, 0.0, "z", "z"), scoring.preemption_key([0], 90, 0.0, "a", "a")),
    ],
)
def test_score_order(a: tuple, b: tuple) -> None:
    assert a < b


@pytest.mark.parametrize(("device", "expect"), [({}, 0.0), ({"utilization": 0.25}, 0.25)])
def test_utilization_unknown_counts_as_idle(device: dict, expect: float) -> None:
    assert scoring.utilization(DeviceView("n", "d", "gpu", 1, **device)) == expect


def _victims(*gib: int) -> list[R]:
    return [R(f"v{i}", 0, "n", "d", g * GiB) for i, g in enumerate(gib)]


@pytest.mark.parametrize(
    ("free", "need", "victims", "expect"),
    [
        (0, 10, (10, 10), ["v0"]),
        (5, 10, (5, 10), ["v0"]),
        (0, 10, (4, 4), None),  # even all are too few
        (0, 10, (4, 20), ["v1"]),  # v0 is given back: v1 alone frees enough
        (0, 10, (4, 4, 4), ["v0", "v1", "v2"]),
        (10, 10, (4,), []),
    ],
)
def test_pick_victims(free: int, need: int, victims: tuple[int, ...], expect: list[str] | None) -> None:
    got = scoring.pick_victims(free * GiB, need * GiB, _victims(*victims))
    assert (None if got is None else [v.deployment for v in got]) == expect


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


def _reference_pick(options: list[tuple[tuple[Any, ...], tuple[str, str]]]) -> tuple[str, str]:
    """The pick by definition: among the options with the best score key up to utilization (key minus its last
    three fields: util, node, device), the first LOAD_CANDIDATES by names, the least busy of those."""
    best = min(key[:-3] for key, _ in options)
    group = sorted((key[-2:], key[-3]) for key, _ in options if key[:-3] == best)[:LOAD_CANDIDATES]
    return min(group, key=lambda g: (g[1], g[0]))[0]


@pytest.mark.parametrize("size", [5, 40])
def test_fast_path_matches_the_score_keys_by_definition(size: int) -> None:
    """Random device states: the sorted-list pick equals `_reference_pick` over every feasible device's score
    key (with up to 5 nodes, a plain min(); with 40, ties larger than LOAD_CANDIDATES)."""
    rng = random.Random(7)
    for _ in range(60 if size == 5 else 15):
        nodes = [
            node(f"n{i:02d}", "two-gpu",
                 {f"nvidia:{j}": {"utilization": rng.choice([None, 0.1, 0.5])} for j in range(2)})
            for i in range(rng.randint(1, size))
        ]
        filler = dep("a-filler", replicas=rng.randint(0, size + 1), gib=rng.choice([10, 30]), strategy="spread")
        spec = dep("b-new", replicas=rng.randint(1, 3 if size == 5 else 50), gib=rng.choice([5, 20, 50]),
                   strategy=rng.choice(["binpack", "spread"]))
        base = schedule(nodes, [filler], {})
        used: dict[tuple[str, str], int] = {}
        for r in base.replicas["a-filler"]:
            used[(r.node, r.device)] = used.get((r.node, r.device), 0) + r.memory
        out = schedule(nodes, [filler, spec], base.replicas)
        on_node: dict[str, int] = {}
        for r in out.replicas["b-new"]:  # replay b-new's choices one at a time against the reference
            options = []
            for n in nodes:
                for dv in n.devices:
                    free = dv.memory_total - used.get((n.name, dv.id), 0)
                    if free >= spec.memory_bytes:
                        u = scoring.utilization(dv)
                        key = (
                            scoring.spread_key(on_node.get(n.name, 0), free, u, n.name, dv.id)
                            if spec.strategy == "spread"
                            else scoring.binpack_key(free, u, n.name, dv.id)
                        )
                        options.append((key, (n.name, dv.id)))
            assert (r.node, r.device) == _reference_pick(options)
            used[(r.node, r.device)] = used.get((r.node, r.device), 0) + r.memory
            on_node[r.node] = on_node.get(r.node, 0) + 1


def test_live_load_ranks_the_first_candidates_of_a_large_tie() -> None:
    """In a pool larger than LOAD_CANDIDATES, load ranks the first candidates (by names) of those that fit
    equally: the least busy of n000..n063, not the idlest of all."""
    k = LOAD_CANDIDATES
    nodes = [node(f"n{i:03d}", devices={"nvidia:0": {"utilization": 1 - i / 200}}) for i in range(k + 20)]
    for strategy in ("binpack", "spread"):
        d = schedule(nodes, [dep("a", 1, 10, strategy=strategy)], {})
        assert where(d, "a") == [(0, f"n{k - 1:03d}/nvidia:0")], strategy
    small = nodes[:10]  # within the window, every device is ranked
    assert where(schedule(small, [dep("a", 1, 10)], {}), "a") == [(0, "n009/nvidia:0")]


def test_a_load_mapping_ranks_over_the_views_readings() -> None:
    nodes = [node("a", devices={"nvidia:0": {"utilization": 0.1}}),
             node("b", devices={"nvidia:0": {"utilization": 0.5}})]
    assert where(schedule(nodes, [dep()], {}), "m") == [(0, "a/nvidia:0")]
    load = {("a", "nvidia:0"): 0.9}  # b is not in it: its view's reading counts
    assert where(schedule(nodes, [dep()], {}, load=load), "m") == [(0, "b/nvidia:0")]
    planner = Planner()  # the Planner reads the load it is given at each pass, with nothing re-sorted
    nodes.append(node("c", devices={"nvidia:0": {"utilization": 0.0}}))
    first = planner.schedule(nodes, [dep("x", 1, 80)], {})  # fills c
    added = planner.schedule(nodes, [dep("x", 1, 80), dep()], first.replicas, load=load)
    assert planner.last == "added" and where(added, "m") == [(0, "b/nvidia:0")]
    assert where(first, "x") == [(0, "c/nvidia:0")]


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


def _planner_sequence(seed: int) -> Counter[str]:
    """Random sequences of controller passes: deployments added (alone or several), scaled, removed, unchanged
    passes, nodes changing, joining (a join storm's passes), going Suspect and back, cordoned or relabelled, devices'
    health changing; each
    pass the Planner's decision equals a plain schedule() of the same input."""
    rng = random.Random(seed)
    nodes = [node(f"n{i}", rng.choice(["dgx-a100", "two-gpu", "gpu-and-cpu", "cpu-only"]),
                  labels={"rack": f"r{i % 3}"}, zone=f"z{i % 2}") for i in range(10)]
    planner = Planner()
    specs: dict[str, DeploymentSpec] = {}
    current: dict[str, list[R]] = {}
    for step in range(60):
        action = rng.choice(["add", "add", "add", "same", "same", "scale", "remove", "remove", "node", "add2",
                             "load", "load", "join", "join", "flip", "flip", "cordon", "relabel", "health",
                             "health"])
        if action in ("add", "add2"):
            for _ in range(1 if action == "add" else 2):
                name = f"d{step}{_}"
                specs[name] = dep(name, rng.randint(0, 3), rng.choice([2, 8, 20, 70]),
                                  device=rng.choice(["gpu", "cpu", "any"]), strategy=rng.choice(["binpack", "spread"]),
                                  priority=rng.choice([0, 0, 1, 5]),
                                  labels={"rack": "r1"} if rng.random() < 0.2 else {})
        elif action == "scale" and specs:
            name = rng.choice(sorted(specs))
            specs[name] = replace(specs[name], replicas=rng.randint(0, 5))
        elif action == "remove" and specs:
            specs.pop(rng.choice(sorted(specs)))
        elif action == "node":
            i = rng.randrange(len(nodes))
            nodes[i] = replace(nodes[i], state=rng.choice([NODE_LOST, NODE_SUSPECT, "Ready"]))
        elif action == "join":  # new nodes after the others (as the controller's views) or anywhere, Ready or not
            for k in range(rng.randint(1, 3)):
                nodes.insert(rng.choice([len(nodes), rng.randint(0, len(nodes))]), node(
                    f"j{step}-{k}", rng.choice(["dgx-a100", "two-gpu", "gpu-and-cpu", "cpu-only"]),
                    labels={"rack": f"r{rng.randrange(3)}"}, zone=f"z{rng.randrange(2)}",
                    state=rng.choice(["Ready", "Ready", NODE_SUSPECT])))
        elif action == "flip":  # missed two intervals, or heard from again
            i = rng.randrange(len(nodes))
            if nodes[i].state != NODE_LOST:
                nodes[i] = replace(nodes[i], state=NODE_SUSPECT if nodes[i].state == "Ready" else "Ready")
        elif action == "cordon":
            i = rng.randrange(len(nodes))
            nodes[i] = replace(nodes[i], cordoned=not nodes[i].cordoned)
        elif action == "relabel":
            i = rng.randrange(len(nodes))
            nodes[i] = replace(nodes[i], labels={"rack": f"r{rng.randrange(3)}"})
        elif action == "health":  # a device's health becomes known, degrades, fails or recovers
            i = rng.randrange(len(nodes))
            k = rng.randrange(len(nodes[i].devices))
            devices = list(nodes[i].devices)
            devices[k] = replace(devices[k], health=rng.choice(["ok", "unknown", "degraded", "failed"]))
            nodes[i] = replace(nodes[i], devices=tuple(devices))
        if action == "load" or rng.random() < 0.3:  # live readings move on a few nodes (new view objects)
            for i in rng.sample(range(len(nodes)), 3):
                devices = tuple(replace(d, utilization=rng.choice([None, 0.0, 0.3, 0.9]),
                                        memory_used=rng.randint(0, d.memory_total)) for d in nodes[i].devices)
                nodes[i] = replace(nodes[i], devices=devices)
        views = list(nodes)
        while rng.random() < 0.3 and planner.warm():  # the controller builds plain pools between passes
            pass
        plain = schedule(views, list(specs.values()), current)
        got = planner.schedule(views, list(specs.values()), current)
        assert got == plain, (step, action)
        current = {k: list(v) for k, v in plain.replicas.items() if v}
    return planner.passes + Counter(refreshed=planner.refreshed)


@pytest.mark.parametrize("seed", range(6))
def test_planner_decides_what_schedule_decides(seed: int) -> None:
    _planner_sequence(seed)


def test_planner_takes_its_shortcuts_in_those_sequences() -> None:
    passes = sum((_planner_sequence(seed) for seed in range(6)), Counter())
    assert passes["full"] and passes["same"] and passes["added"] and passes["refreshed"], passes


def test_planner_warms_the_pools_of_plain_signatures_one_at_a_time() -> None:
    nodes = [node(f"n{i}", "gpu-and-cpu", labels={"x": "y"}) for i in range(4)]
    planner = Planner()
    assert not planner.warm()  # nothing kept yet
    d1 = planner.schedule(nodes, [dep("a", 2, 10, device="gpu", labels={"x": "y"})], {})
    built = 0
    while planner.warm():
        built += 1
    assert built == 6  # gpu, cpu, any: none was in use; then their spread orders
    both = [dep("a", 2, 10, device="gpu", labels={"x": "y"}), dep("b", 3, 10, device="cpu")]
    d2 = planner.schedule(nodes, both, d1.replicas)
    assert planner.last == "added" and d2 == schedule(nodes, both, d1.replicas)


def test_planner_adds_a_deployment_without_a_full_pass() -> None:
    nodes = [node(f"n{i}", "two-gpu") for i in range(4)]
    planner = Planner()
    first = [dep("a", 3, 30, device="gpu", strategy="spread")]
    d1 = planner.schedule(nodes, first, {})
    d2 = planner.schedule(nodes, first, d1.replicas)  # nothing changed: the last decision
    both = [*first, dep("b", 2, 60, device="gpu")]
    d3 = planner.schedule(nodes, both, d2.replicas)  # one deployment added: only it is placed
    assert planner.passes == {"full": 1, "same": 1, "added": 1}
    assert d2 == d1 and d3 == schedule(nodes, both, d1.replicas)
    # It needs preemption (a higher priority, no room left): a full pass decides, and evicts
    urgent = [*both, dep("c", 4, 80, device="gpu", priority=9)]
    d4 = planner.schedule(nodes, urgent, d3.replicas)
    assert d4 == schedule(nodes, urgent, d3.replicas) and d4.preempted
    assert planner.passes["full"] == 2
