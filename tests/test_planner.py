"""The Planner: the same decisions as schedule() over random sequences of controller passes, with its shortcuts;
the Scheduler's public API that it moves a kept state on with."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace

import pytest
from pool_shapes import dep, node, where

from xpud.controller.core import NODE_LOST, NODE_SUSPECT, DeploymentSpec
from xpud.controller.core import Replica as R
from xpud.controller.planner import Planner
from xpud.controller.scheduler import Scheduler, schedule


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


# --- the Scheduler's API for a kept state -----------------------------------------------------------------------

BASE = [node("a", "two-gpu", labels={"rack": "r1"}), node("b", "gpu-and-cpu"), node("c", "cpu-only")]
BASE_DEPS = [dep("x", 2, 30, device="gpu", labels={"rack": "r1"}), dep("y", 1, 8, device="cpu")]


def _with(nodes: list, name: str, **kw: object) -> list:
    return [replace(n, **kw) if n.name == name else n for n in nodes]


def _health(nodes: list, name: str, device: str, health: str) -> list:
    out = []
    for n in nodes:
        if n.name == name:
            n = replace(n, devices=tuple(replace(d, health=health) if d.id == device else d for d in n.devices))
        out.append(n)
    return out


BIGGER_CPU = replace(BASE[1].devices[1], memory_total=1 << 37)
KEEPS_CASES = [
    # (id, the nodes after the change, the node that changed, whether every replica on it stays)
    ("cordoned", _with(BASE, "a", cordoned=True), "a", True),
    ("suspect", _with(BASE, "a", state=NODE_SUSPECT), "a", True),
    ("lost", _with(BASE, "a", state=NODE_LOST), "a", False),
    ("relabelled-still-matching", _with(BASE, "a", labels={"rack": "r1", "row": "2"}), "a", True),
    ("relabelled-away", _with(BASE, "a", labels={"rack": "r2"}), "a", False),
    ("failed-device-with-replicas", _health(BASE, "a", "nvidia:0", "failed"), "a", False),
    ("failed-device-without", _health(BASE, "a", "nvidia:1", "failed"), "a", True),
    ("device-memory-changed", _with(BASE, "b", devices=(BASE[1].devices[0], BIGGER_CPU)), "b", False),
    ("device-without-replicas-gone", _with(BASE, "b", devices=BASE[1].devices[1:]), "b", True),
]


@pytest.mark.parametrize(("nodes", "name", "keeps"), [c[1:] for c in KEEPS_CASES], ids=[c[0] for c in KEEPS_CASES])
def test_keeps_replicas(nodes: list, name: str, keeps: bool) -> None:
    s = Scheduler(BASE, BASE_DEPS, frozenset())
    placed = s.run({})
    assert where(placed, "x") == [(0, "a/nvidia:0"), (1, "a/nvidia:0")] and where(placed, "y") == [(0, "b/cpu:0")]
    old, new = (next(n for n in ns if n.name == name) for ns in (BASE, nodes))
    assert s.keeps_replicas(old, new) is keeps


MOVE_ON_CASES = [
    # (id, the nodes of the next pass, the deployment added)
    ("nothing-changed", BASE, dep("z", 3, 20, device="gpu")),
    ("live-load", _with(BASE, "b", devices=tuple(replace(d, utilization=0.9) for d in BASE[1].devices)),
     dep("z", 2, 10, device="any")),
    ("joined", [*BASE, node("d", "dgx-a100")], dep("z", 3, 20, device="gpu", strategy="spread")),
    ("cordoned", _with(BASE, "b", cordoned=True), dep("z", 2, 20, device="any")),
    ("failed-device-without", _health(BASE, "a", "nvidia:1", "failed"), dep("z", 2, 20, device="gpu")),
]


@pytest.mark.parametrize(("nodes", "spec"), [c[1:] for c in MOVE_ON_CASES], ids=[c[0] for c in MOVE_ON_CASES])
def test_a_kept_state_moved_on_places_what_a_new_pass_places(nodes: list, spec: DeploymentSpec) -> None:
    s = Scheduler(BASE, BASE_DEPS, frozenset())
    first = s.run({})
    before = {n.name: n for n in BASE}
    for view in nodes:
        old = before.get(view.name)
        if old is view:
            continue
        if old is not None and old.devices != view.devices and all(
                a.health == b.health for a, b in zip(old.devices, view.devices, strict=True)):
            s.update_live(view)  # only live readings moved
        else:
            assert old is None or s.keeps_replicas(old, view)
            s.refresh(old, view)
    s.set_load(None)
    s.add_deployment(spec)
    assert s.place_new(spec)
    assert s.replicas() == schedule(nodes, [*BASE_DEPS, spec], first.replicas).replicas


def test_place_new_says_when_a_replica_does_not_fit() -> None:
    s = Scheduler(BASE, BASE_DEPS, frozenset())
    s.run({})
    big = dep("big", 3, 80, device="gpu")  # a's second GPU only: the full pass decides the rest
    s.add_deployment(big)
    assert not s.place_new(big)


def test_build_pool_builds_each_pool_and_spread_order_once() -> None:
    s = Scheduler(BASE, BASE_DEPS, frozenset())
    s.run({})
    gpu = dep("any-gpu", device="gpu")
    assert s.build_pool(gpu) and not s.build_pool(gpu)
    assert ("gpu", (), "", "") in s.pools and s.pools[("gpu", (), "", "")].desc is None
    assert s.build_pool(gpu, spread=True) and not s.build_pool(gpu, spread=True)
    fresh = dep("fresh", device="any", zone="z9")
    assert s.build_pool(fresh, spread=True) and not s.build_pool(fresh, spread=True)
