"""Placement profiles: their maths (controller/profiles.py), their store rows, and the scheduler's preference for the
device model with the best measured throughput per GiB (binpack and spread kept within it)."""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest

from xpud.controller.control import Controller
from xpud.controller.core import DeploymentSpec, DeviceView, NodeView
from xpud.controller.planner import Planner
from xpud.controller.profiles import GiB, Profiles
from xpud.controller.routes import ReplicaEndpoint
from xpud.controller.scheduler import schedule
from xpud.controller.store import ArtifactStore, ProfileRecord, SqliteStore

OK, UNAVAILABLE, CANCELLED = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def replica(address: str = "a:1", device_model: str = "A", memory: int = 16 * GiB) -> ReplicaEndpoint:
    return ReplicaEndpoint(address, "n", ("sim:0",), "1", "", model="m", device_model=device_model,
                           device_memory=memory)


def test_throughput_is_successes_per_busy_second_of_a_replica() -> None:
    clock = Clock()
    p = Profiles(clock)
    r = replica()
    for _ in range(4):  # one at a time, 0.5 s each, idle 1 s between: busy 2 s
        p.begin(r)
        clock.now += 0.5
        p.end(r, OK, 0.5)
        clock.now += 1.0
    prof = p.held[("m", "1", "A")]
    assert (prof.requests, prof.ok, prof.errors) == (4, 4, 0)
    assert prof.busy_s == pytest.approx(2.0) and prof.throughput() == pytest.approx(2.0)
    assert prof.per_gib() == pytest.approx(2.0 / 16)
    assert prof.latency_s == pytest.approx(0.5)


def test_overlapping_forwards_count_busy_time_once_and_replicas_add_up() -> None:
    clock = Clock()
    p = Profiles(clock)
    r1, r2 = replica("a:1"), replica("a:2")
    for r in (r1, r1, r2):  # two in flight on r1 at once, one on r2, all for 1 s
        p.begin(r)
    clock.now += 1.0
    for r in (r1, r1, r2):
        p.end(r, OK, 1.0)
    prof = p.held[("m", "1", "A")]
    assert prof.busy_s == pytest.approx(2.0)  # 1 s per replica, not 3
    assert prof.throughput() == pytest.approx(1.5)  # per replica instance


def test_latency_is_an_ewma_of_successes_errors_counted_cancelled_not() -> None:
    clock = Clock()
    p = Profiles(clock)
    r = replica()
    for code, seconds in ((OK, 0.1), (OK, 0.2), (UNAVAILABLE, 5.0), (CANCELLED, 9.0)):
        p.begin(r)
        p.end(r, code, seconds)
    prof = p.held[("m", "1", "A")]
    assert (prof.requests, prof.ok, prof.errors) == (3, 2, 1)
    assert prof.latency_s == pytest.approx(0.1 + 0.1 * (0.2 - 0.1))
    p.end(r, OK, 1.0)  # one that `begin` was not told of: ignored
    assert prof.requests == 3


def test_changed_gives_what_moved_with_busy_time_in_flight_and_the_store_keeps_it(tmp_path: Path) -> None:
    clock = Clock()
    p = Profiles(clock)
    r = replica()
    p.begin(r)
    clock.now += 1.0
    p.end(r, OK, 1.0)
    p.begin(r)  # still in flight: its 2 s so far count
    clock.now += 2.0
    (record,) = p.changed()
    assert record == ProfileRecord("m", "1", "A", 16 * GiB, 1, 0, 1, 1.0, pytest.approx(3.0))
    assert p.changed() == []  # nothing moved since
    with SqliteStore(tmp_path) as store:
        store.put_profiles([record])
        store.put_profiles([ProfileRecord("m", "1", "A", 16 * GiB, 5, 1, 4, 0.5, 4.0)])  # replaced, not added
    with SqliteStore(tmp_path) as store:
        again = Profiles(clock)
        again.load(store.profiles())
    ((device_model, prof),) = again.of("m", "1")
    assert (device_model, prof.requests, prof.errors, prof.ok, prof.busy_s) == ("A", 5, 1, 4, 4.0)
    assert prof.throughput() == 1.0


def profiled(counts: dict[str, tuple[int, float, int]]) -> Profiles:
    """Profiles of m:1 by device model: (successes, busy seconds, memory GiB)."""
    p = Profiles(Clock())
    p.load(ProfileRecord("m", "1", name, gib * GiB, ok, 0, ok, 0.01, busy) for name, (ok, busy, gib) in counts.items())
    return p


def test_preference_ranks_device_models_by_throughput_per_gib() -> None:
    # A: 100 req/s on 80 GiB (1.25/GiB); B: 40 req/s on 16 GiB (2.5/GiB); C: too few requests to count
    p = profiled({"A": (1000, 10.0, 80), "B": (400, 10.0, 16), "C": (5, 0.001, 16)})
    assert p.preference() == {("m", "1"): ("B", "A")}
    assert profiled({"A": (1000, 10.0, 80)}).preference() == {}  # one device model: nothing to prefer


def test_a_ranking_stands_until_a_model_below_is_clearly_better() -> None:
    p = profiled({"A": (1000, 10.0, 16), "B": (990, 10.0, 16)})  # A 6.25/GiB, B 6.19/GiB
    assert p.preference() == {("m", "1"): ("A", "B")}
    p.held[("m", "1", "B")].ok = 1050  # B now 5 % better: within the margin, A stays ahead
    assert p.preference() == {("m", "1"): ("A", "B")}
    p.held[("m", "1", "B")].ok = 1200  # 20 % better: B first
    assert p.preference() == {("m", "1"): ("B", "A")}


async def test_the_controller_loads_profiles_at_start_and_writes_what_moved_when_it_closes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.put_profiles([ProfileRecord("m", "1", "A", 16 * GiB, 30, 1, 29, 0.01, 1.0)])
    controller = Controller(store, ArtifactStore(tmp_path / "artifacts"))
    await controller.start()
    profiles = controller.state.profiles
    assert profiles.held[("m", "1", "A")].requests == 30
    profiles.begin(replica())
    profiles.end(replica(), OK, 0.02)
    await controller.close()  # well before the periodic write
    (record,) = store.profiles()
    assert (record.requests, record.ok, record.errors) == (31, 30, 1)
    store.close()


# --- the scheduler's preference ---------------------------------------------------------------------------------


def gpu_node(name: str, model: str, devices: int = 2, gib: int = 16) -> NodeView:
    return NodeView(name, devices=tuple(DeviceView(name, f"sim:{i}", "gpu", gib * GiB, model=model)
                                        for i in range(devices)))


def spec(replicas: int, strategy: str = "binpack", gib: float = 4, version: str = "1") -> DeploymentSpec:
    return DeploymentSpec("d", "m", version, replicas, int(gib * GiB), device="gpu", strategy=strategy)


def placed(nodes: list[NodeView], d: DeploymentSpec, prefer: dict[tuple[str, str], tuple[str, ...]] | None
           ) -> list[str]:
    return [f"{r.node}/{r.device}" for r in schedule(nodes, [d], {}, prefer=prefer).replicas[d.name]]


def test_binpack_takes_the_preferred_device_model_then_packs_within_it() -> None:
    nodes = [gpu_node("a", "A"), gpu_node("b", "B")]
    assert placed(nodes, spec(3), None) == ["a/sim:0"] * 3  # no profile: names decide
    assert placed(nodes, spec(5), {("m", "1"): ("B", "A")}) == ["b/sim:0"] * 4 + ["b/sim:1"]
    # B full (4 GiB x 4 per device): the next best model, then packed there too
    assert placed(nodes, spec(10), {("m", "1"): ("B", "A")}) == ["b/sim:0"] * 4 + ["b/sim:1"] * 4 + ["a/sim:0"] * 2
    assert placed(nodes, spec(3, version="2"), {("m", "1"): ("B", "A")}) == ["a/sim:0"] * 3  # another version


def test_spread_keeps_one_replica_per_node_first_then_the_preferred_model() -> None:
    nodes = [gpu_node("a1", "A"), gpu_node("a2", "A"), gpu_node("b1", "B"), gpu_node("b2", "B")]
    prefer = {("m", "1"): ("B", "A")}
    assert placed(nodes, spec(2, "spread"), None) == ["a1/sim:0", "a2/sim:0"]
    assert placed(nodes, spec(2, "spread"), prefer) == ["b1/sim:0", "b2/sim:0"]
    # spread across nodes wins over the model: the 3rd and 4th go to A's nodes, the 5th back to B
    assert placed(nodes, spec(5, "spread"), prefer) == ["b1/sim:0", "b2/sim:0", "a1/sim:0", "a2/sim:0", "b1/sim:1"]


def test_a_preference_for_models_not_among_the_candidates_changes_nothing() -> None:
    nodes = [gpu_node("a", "A"), gpu_node("c", "C")]  # B is profiled but absent: only A is, of those ranked
    assert placed(nodes, spec(3), {("m", "1"): ("B", "A")}) == placed(nodes, spec(3), None) == ["a/sim:0"] * 3
    nodes = [gpu_node("c", "C"), gpu_node("d", "D")]
    assert placed(nodes, spec(3), {("m", "1"): ("B", "A")}) == ["c/sim:0"] * 3


def reference(nodes: list[NodeView], d: DeploymentSpec, prefer: tuple[str, ...]) -> list[str]:
    """Each pick by definition: binpack (class rank, free, names); spread (replicas on the node, class rank, most free,
    names), a class rank being the device model's place among the ranked ones present (the rest: after them)."""
    present = [m for m in prefer if any(dev.model == m for n in nodes for dev in n.devices)]
    rank = {m: i for i, m in enumerate(present)} if len(present) > 1 else {}
    free = {(n.name, dev.id): dev.memory_total for n in nodes for dev in n.devices}
    model = {(n.name, dev.id): dev.model for n in nodes for dev in n.devices}
    counts: dict[str, int] = {}
    out = []
    for _ in range(d.replicas):
        fits = [k for k, f in free.items() if f >= d.memory_bytes]
        if not fits:
            break

        def key(k: tuple[str, str]) -> tuple[object, ...]:
            r = rank.get(model[k], len(rank))
            if d.strategy == "spread":
                return counts.get(k[0], 0), r, -free[k], k
            return r, free[k], k

        best = min(fits, key=key)
        free[best] -= d.memory_bytes
        counts[best[0]] = counts.get(best[0], 0) + 1
        out.append(f"{best[0]}/{best[1]}")
    return out


@pytest.mark.parametrize("seed", range(40))
def test_picks_with_a_preference_match_their_definition(seed: int) -> None:
    rng = random.Random(seed)
    models = ["A", "B", "C", "D"]
    nodes = [NodeView(f"n{i}", devices=tuple(DeviceView(f"n{i}", f"sim:{j}", "gpu", rng.choice((8, 16, 24)) * GiB,
                                                         model=rng.choice(models))
                                             for j in range(rng.randint(1, 3))))
             for i in range(rng.randint(2, 8))]
    prefer = tuple(rng.sample(models, rng.randint(2, 3)))
    d = spec(rng.randint(1, 12), rng.choice(("binpack", "spread")), gib=rng.choice((2, 4, 6)))
    assert placed(nodes, d, {("m", "1"): prefer}) == reference(nodes, d, prefer)


def test_the_planner_passes_in_full_when_the_preference_changes() -> None:
    nodes = [gpu_node("a", "A"), gpu_node("b", "B")]
    planner, d = Planner(), spec(1)
    first = planner.schedule(nodes, [d], {}, prefer={("m", "1"): ("B", "A")})
    assert [r.node for r in first.replicas["d"]] == ["b"]
    planner.schedule(nodes, [d], first.replicas, prefer={("m", "1"): ("B", "A")})
    assert planner.last == "same"
    again = planner.schedule(nodes, [d], first.replicas, prefer={("m", "1"): ("A", "B")})
    assert planner.last == "full" and planner.why == "profile preference changed"
    assert again.replicas == first.replicas  # placed replicas stay where they are
    e = DeploymentSpec("e", "m", "1", 1, 4 * GiB, device="gpu")
    added = planner.schedule(nodes, [d, e], again.replicas, prefer={("m", "1"): ("A", "B")})
    assert planner.last == "added" and [r.node for r in added.replicas["e"]] == ["a"]
