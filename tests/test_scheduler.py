"""schedule(): strategies, stability, moves and scale, pending reasons, fixed points, the filter memo."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest
from pool_shapes import SHAPES, GiB, dep, node, rep, where

from xpud.controller.core import NODE_LOST, NODE_SUSPECT, Decision, DeploymentSpec, NodeView
from xpud.controller.core import Replica as R
from xpud.controller.memo import FilterMemo
from xpud.controller.scheduler import schedule

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
