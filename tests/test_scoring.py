"""The scheduler's ranking: primary keys, scorers, preemption keys, one table each; the pass's picks against them
by definition; a scorer added to `scoring.RANKING` changes the picks of `schedule()`."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from pool_shapes import GiB, dep, node, rep, where

from xpud.controller import scoring
from xpud.controller.core import STRATEGIES, DeploymentSpec, DeviceView, NodeView
from xpud.controller.core import Replica as R
from xpud.controller.planner import Planner
from xpud.controller.scheduler import schedule
from xpud.controller.scoring import LOAD_CANDIDATES, Candidate


@dataclass
class TableContext:
    """A `scoring.Context` over plain tables, for the scorers' own tests and the reference picks."""

    deployment: DeploymentSpec
    devices: dict[Candidate, DeviceView]
    frees: dict[Candidate, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    load: dict[Candidate, float] = field(default_factory=dict)

    def device(self, key: Candidate, /) -> DeviceView:
        return self.devices[key]

    def free(self, key: Candidate, /) -> int:
        return self.frees.get(key, self.devices[key].memory_total)

    def utilization(self, key: Candidate, /) -> float:
        return self.load.get(key, scoring.utilization(self.devices[key]))

    def on_node(self, node: str, /) -> int:
        return self.counts.get(node, 0)


# --- primary keys -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "a", "b"),  # (free GiB, replicas on the node): a ranks before b
    [
        ("binpack", (10, 0), (20, 0)),  # the least free memory first
        ("binpack", (10, 3), (20, 0)),  # replicas on the node do not count
        ("spread", (10, 0), (80, 1)),  # the fewest replicas on the node first
        ("spread", (80, 1), (10, 1)),  # then the most free memory
    ],
)
def test_primary_key_order(strategy: str, a: tuple[int, int], b: tuple[int, int]) -> None:
    key = scoring.STRATEGIES[strategy]
    assert key(a[0] * GiB, a[1]) < key(b[0] * GiB, b[1])


def test_every_strategy_a_deployment_may_name_has_a_primary_key() -> None:
    assert set(scoring.STRATEGIES) == set(STRATEGIES)  # what the Admin API accepts


def test_primary_keys_tie_only_where_the_strategy_does_not_care() -> None:
    assert scoring.binpack(10, 0) == scoring.binpack(10, 5)
    assert scoring.spread(10, 1) != scoring.spread(10, 2)


# --- scorers ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("device", "expect"), [({}, 0.0), ({"utilization": 0.25}, 0.25)])
def test_utilization_unknown_counts_as_idle(device: dict, expect: float) -> None:
    assert scoring.utilization(DeviceView("n", "d", "gpu", 1, **device)) == expect


@pytest.mark.parametrize(
    ("util_a", "util_b", "load", "best"),
    [
        (0.1, 0.5, {}, "a"),
        (0.5, 0.1, {}, "b"),
        (None, 0.1, {}, "a"),  # unknown counts as idle
        (0.1, 0.5, {"a": 0.9}, "b"),  # a live load reading counts over the view's
    ],
)
def test_least_busy(util_a: float | None, util_b: float | None, load: dict[str, float], best: str) -> None:
    devices = {(n, "d"): DeviceView(n, "d", "gpu", GiB, utilization=u) for n, u in (("a", util_a), ("b", util_b))}
    ctx = TableContext(dep(), devices, load={(n, "d"): u for n, u in load.items()})
    assert min(devices, key=lambda k: scoring.least_busy(k, ctx)) == (best, "d")


def test_suspect_devices_rank_after_the_others() -> None:
    devices = {("a", "d"): DeviceView("a", "d", "gpu", GiB, health_state="suspect", utilization=0.0),
               ("b", "d"): DeviceView("b", "d", "gpu", GiB, utilization=0.9)}
    ctx = TableContext(dep(), devices)
    assert min(devices, key=lambda k: tuple(s(k, ctx) for s in scoring.RANKING)) == ("b", "d")


def test_the_ranking_table_holds_plain_scorers() -> None:
    assert scoring.RANKING == (scoring.not_suspect, scoring.least_busy)


# --- preemption -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),  # a ranks before b
    [
        (scoring.victim_key(0, 0, "x"), scoring.victim_key(1, 9, "a")),  # lowest priority evicted first
        (scoring.victim_key(0, 3, "x"), scoring.victim_key(0, 1, "a")),  # then the most recent (highest index)
        (scoring.preemption_key([0, 0], 90, 0.0, "a", "a"), scoring.preemption_key([5], 10, 0.0, "a", "a")),
        (scoring.preemption_key([0], 90, 0.0, "a", "a"), scoring.preemption_key([0, 0], 10, 0.0, "a", "a")),
        (scoring.preemption_key([0], 10, 0.9, "z", "z"), scoring.preemption_key([0], 90, 0.0, "a", "a")),
        (scoring.preemption_key([0], 10, 0.1, "z", "z"), scoring.preemption_key([0], 10, 0.5, "a", "a")),
        (scoring.preemption_key([0], 10, (0.1, 2.0), "z", "z"), scoring.preemption_key([0], 10, (0.1, 3.0), "a", "a")),
        (scoring.preemption_key([0], 10, 0.1, "a", "z"), scoring.preemption_key([0], 10, 0.1, "b", "a")),
    ],
)
def test_preemption_order(a: tuple, b: tuple) -> None:
    assert a < b


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


# --- the pass's picks against the tables, by definition ---------------------------------------------------------


def _reference_pick(ctx: TableContext, options: list[Candidate]) -> Candidate:
    """The pick by definition: the devices with the best primary key of the strategy, the first LOAD_CANDIDATES
    of those by names, the best of these by the RANKING chain (ties: names)."""
    primary = scoring.STRATEGIES[ctx.deployment.strategy]
    keys = {k: primary(ctx.free(k), ctx.on_node(k[0])) for k in options}
    best = min(keys.values())
    group = sorted(k for k in options if keys[k] == best)[:LOAD_CANDIDATES]
    return min(group, key=lambda k: tuple(scorer(k, ctx) for scorer in scoring.RANKING))


def _replay(nodes: list[NodeView], spec: DeploymentSpec, rng: random.Random, size: int) -> None:
    """A filler deployment placed first, then `spec`: each of its picks equals `_reference_pick` there."""
    filler = dep("a-filler", replicas=rng.randint(0, size + 1), gib=rng.choice([10, 30]), strategy="spread")
    base = schedule(nodes, [filler], {})
    devices = {(n.name, dv.id): dv for n in nodes for dv in n.devices}
    ctx = TableContext(spec, devices, frees={k: dv.memory_total for k, dv in devices.items()})
    for r in base.replicas["a-filler"]:
        ctx.frees[(r.node, r.device)] -= r.memory
    out = schedule(nodes, [filler, spec], base.replicas)
    for r in out.replicas["b-new"]:  # b-new's choices one at a time
        options = [k for k in devices if ctx.free(k) >= spec.memory_bytes]
        assert (r.node, r.device) == _reference_pick(ctx, options)
        ctx.frees[(r.node, r.device)] -= r.memory
        ctx.counts[r.node] = ctx.counts.get(r.node, 0) + 1


@pytest.mark.parametrize("strategy", sorted(scoring.STRATEGIES))
@pytest.mark.parametrize("size", [5, 40])
def test_picks_follow_the_primary_key_and_the_ranking(strategy: str, size: int) -> None:
    """Random device states (with up to 5 nodes, a plain min(); with 40, ties larger than LOAD_CANDIDATES)."""
    rng = random.Random(7)
    for _ in range(60 if size == 5 else 15):
        nodes = [
            node(f"n{i:02d}", "two-gpu",
                 {f"nvidia:{j}": {"utilization": rng.choice([None, 0.1, 0.5])} for j in range(2)})
            for i in range(rng.randint(1, size))
        ]
        spec = dep("b-new", replicas=rng.randint(1, 3 if size == 5 else 50), gib=rng.choice([5, 20, 50]),
                   strategy=strategy)
        _replay(nodes, spec, rng, size)


def test_live_load_ranks_the_first_candidates_of_a_large_tie() -> None:
    """In a pool larger than LOAD_CANDIDATES, load ranks the first candidates (by names) of those that fit
    equally: the least busy of those, not the idlest of all."""
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


# --- a scorer added to the table --------------------------------------------------------------------------------

# Measured throughput per GiB by (model, device id): a stand-in for a device model's profile.
THROUGHPUT_PER_GIB = {("resnet", "nvidia:0"): 3.0, ("resnet", "nvidia:1"): 9.0}


def best_throughput(candidate: Candidate, context: scoring.Context) -> float:
    """The device with the best measured throughput per GiB for the deployment's model first."""
    return -THROUGHPUT_PER_GIB.get((context.deployment.model, context.device(candidate).id), 0.0)


# Two two-GPU nodes; a's first device holds 40 GiB. Live load: a/0 0.0, a/1 0.2, b/0 0.1, b/1 0.3.
MIXED = [node("a", "two-gpu", {"nvidia:0": {"memory": 40, "utilization": 0.0}, "nvidia:1": {"utilization": 0.2}}),
         node("b", "two-gpu", {"nvidia:0": {"utilization": 0.1}, "nvidia:1": {"utilization": 0.3}})]

ADDED_CASES = [
    # (id, where the scorer goes in the table, deployment, picks without it, picks with it)
    ("binpack-primary-first", "first", dep("resnet", 1, 10), [(0, "a/nvidia:0")], [(0, "a/nvidia:0")]),
    ("binpack-group-reordered", "first", dep("resnet", 1, 50), [(0, "b/nvidia:0")], [(0, "a/nvidia:1")]),
    ("spread-group-reordered", "first", dep("resnet", 2, 50, strategy="spread"),
     [(0, "b/nvidia:0"), (1, "a/nvidia:1")], [(0, "a/nvidia:1"), (1, "b/nvidia:1")]),  # still one per node
    ("last-breaks-ties-only", "last", dep("resnet", 1, 50), [(0, "b/nvidia:0")], [(0, "b/nvidia:0")]),
]


@pytest.mark.parametrize(("where_in", "spec", "without", "with_it"), [c[1:] for c in ADDED_CASES],
                         ids=[c[0] for c in ADDED_CASES])
def test_a_scorer_added_to_the_table_changes_the_picks(
    monkeypatch: pytest.MonkeyPatch, where_in: str, spec: DeploymentSpec, without: list, with_it: list
) -> None:
    """Ranked before live load, the throughput scorer reorders the devices that tie on the strategy's primary key
    (never across it: binpack and spread still apply as asked); after it, it only breaks live load's ties."""
    assert where(schedule(MIXED, [spec], {}), spec.name) == without
    table = (best_throughput, *scoring.RANKING) if where_in == "first" else (*scoring.RANKING, best_throughput)
    monkeypatch.setattr(scoring, "RANKING", table)
    assert where(schedule(MIXED, [spec], {}), spec.name) == with_it
    planner = Planner()  # the Planner's passes, full or added, read the same table
    planner.schedule(MIXED, [], {})
    assert where(planner.schedule(MIXED, [spec], {}), spec.name) == with_it and planner.last == "added"


def test_preemption_ranks_its_devices_by_the_same_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    low = dep("low", 1, 70)
    nodes = [node("a", devices={"nvidia:0": {"utilization": 0.0}}),
             node("b", devices={"nvidia:0": {"utilization": 0.5}})]
    current = {"low": [rep(low, 0, "a/nvidia:0")], "low2": [rep(dep("low2", 1, 70), 0, "b/nvidia:0")]}
    deps = [low, dep("low2", 1, 70), dep("hi", 1, 70, priority=5)]
    assert where(schedule(nodes, deps, current), "hi") == [(0, "a/nvidia:0")]  # the least busy device
    monkeypatch.setattr(scoring, "RANKING", (lambda c, ctx: 0.0 if c[0] == "b" else 1.0, *scoring.RANKING))
    assert where(schedule(nodes, deps, current), "hi") == [(0, "b/nvidia:0")]
