"""Routing policies, by table: which replica each request of a sequence gets."""

from __future__ import annotations

import random
from collections import Counter

import grpc
import pytest

from xpud.controller.policy import EJECTED, HEALTHY, ZONE_PARAMETER, P2CEwma, RoundRobin, RouteRequest, RoutingPolicy
from xpud.controller.routes import DeploymentRoutes, ReplicaEndpoint
from xpud.proto.oip import pb


def routes(name: str, *addresses: str) -> DeploymentRoutes:
    return DeploymentRoutes(name, tuple(ReplicaEndpoint(a, f"node-{a}", ("cpu:0",), "1", "") for a in addresses))


def request(deployment: str) -> RouteRequest:
    return RouteRequest(deployment, "ModelInfer", None)


def picks(policy: RoutingPolicy, table: DeploymentRoutes, count: int) -> list[str]:
    out = []
    for _ in range(count):
        chosen = policy.choose(request(table.name), table)
        assert chosen is not None
        out.append(chosen.address)
    return out


@pytest.mark.parametrize(("addresses", "count", "expected"), [
    (("a",), 3, ["a", "a", "a"]),
    (("a", "b"), 5, ["a", "b", "a", "b", "a"]),
    (("a", "b", "c"), 7, ["a", "b", "c", "a", "b", "c", "a"]),
])
def test_round_robin_takes_the_replicas_in_turn(addresses: tuple[str, ...], count: int, expected: list[str]) -> None:
    assert picks(RoundRobin(), routes("web", *addresses), count) == expected


def test_round_robin_turns_per_deployment_and_survives_table_updates() -> None:
    policy = RoundRobin()
    web, api = routes("web", "a", "b", "c"), routes("api", "x", "y")
    assert picks(policy, web, 2) == ["a", "b"]
    assert picks(policy, api, 1) == ["x"]  # its own turn
    grown = routes("web", "a", "b", "c", "d")
    policy.update({"web": grown})  # a replica more: the turn goes on
    assert picks(policy, grown, 3) == ["c", "d", "a"]
    policy.update({"web": None})  # deleted: created again, it starts over
    assert picks(policy, web, 1) == ["a"] and picks(policy, api, 1) == ["y"]


@pytest.mark.parametrize(("addresses", "tried", "expected"), [
    (("a", "b"), ("a",), "b"),
    (("a", "b"), ("b",), "a"),
    (("a", "b", "c"), ("b",), "c"),  # the one after the failed one
    (("a", "b", "c"), ("c",), "a"),  # round the end
    (("a", "b", "c"), ("b", "c"), "a"),  # skipping those tried
    (("a", "b", "c"), ("gone",), "a"),  # the failed one left the table meanwhile: from the start
    (("a",), ("a",), None),  # none other to try
    (("a", "b"), ("a", "b"), None),
])
def test_round_robin_retries_on_the_next_replica(addresses: tuple[str, ...], tried: tuple[str, ...],
                                                 expected: str | None) -> None:
    table = routes("web", *addresses)
    failed = [ReplicaEndpoint(a, f"node-{a}", ("cpu:0",), "1", "") for a in tried]
    policy = RoundRobin()
    chosen = policy.choose(request("web"), table, failed)
    assert (chosen.address if chosen is not None else None) == expected
    assert picks(policy, table, 1) == [addresses[0]]  # a retry takes no turn


def test_round_robin_ignores_outcomes() -> None:
    policy, table = RoundRobin(), routes("web", "a", "b")
    policy.done(request("web"), table.replicas[0], grpc.StatusCode.UNAVAILABLE, 0.5)
    assert picks(policy, table, 2) == ["a", "b"]


# -- P2CEwma: power of two choices by in-flight x latency EWMA, with outlier ejection --------------------------

OK, FAIL = grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def p2c(**kwargs: object) -> tuple[P2CEwma, Clock, list[tuple[str, str, str]]]:
    clock, events = Clock(), []
    policy = P2CEwma(rng=random.Random(7), clock=clock, emit=lambda *e: events.append(e), **kwargs)  # type: ignore[arg-type]
    return policy, clock, events


def serve(policy: P2CEwma, table: DeploymentRoutes, count: int, latency: dict[str, float],
          codes: dict[str, grpc.StatusCode] | None = None) -> Counter[str]:
    """`count` requests one after another, each answered by its replica in its `latency` with its code."""
    got: Counter[str] = Counter()
    for _ in range(count):
        chosen = policy.choose(request(table.name), table)
        assert chosen is not None
        got[chosen.address] += 1
        policy.done(request(table.name), chosen, (codes or {}).get(chosen.address, OK), latency[chosen.address])
    return got


def feed(policy: P2CEwma, table: DeploymentRoutes, times: int, latency: dict[str, float]) -> None:
    """Every replica's estimate fed `times` samples, whatever p2c would pick (nothing left in flight)."""
    first = policy.choose(request(table.name), table)  # the policy learns the table
    assert first is not None
    policy.done(request(table.name), first, OK, latency[first.address])
    for _ in range(times):
        for replica in table.replicas:
            policy.done(request(table.name), replica, OK, latency[replica.address])


def test_p2c_sends_sequential_traffic_to_the_faster_replica() -> None:
    policy, _, _ = p2c()
    got = serve(policy, routes("web", "fast", "slow"), 200, {"fast": 0.001, "slow": 0.010})
    assert got["slow"] <= 5 and got["fast"] >= 195  # the slow one is tried, then scored out


def test_p2c_spreads_calls_in_flight_by_latency() -> None:
    policy, _, _ = p2c()
    table = routes("web", "a", "b")
    serve(policy, table, 20, {"a": 0.001, "b": 0.003})
    policy.done(request("web"), table.replicas[1], OK, 0.003)  # both known
    held = Counter(p.address for p in (policy.choose(request("web"), table) for _ in range(40)) if p)
    assert 26 <= held["a"] <= 34  # score (in_flight + 1) x ewma: about three in flight on a for one on b
    assert policy.stats("web", "a").in_flight == held["a"]  # type: ignore[union-attr]


def test_p2c_with_equal_replicas_balances_in_flight() -> None:
    policy, _, _ = p2c()
    table = routes("web", "a", "b", "c", "d")
    held = Counter(p.address for p in (policy.choose(request("web"), table) for _ in range(400)) if p)
    assert all(80 <= n <= 120 for n in held.values()), held


def test_p2c_retries_elsewhere_and_counts_in_flight_per_call() -> None:
    policy, _, _ = p2c()
    table = routes("web", "a", "b")
    first = policy.choose(request("web"), table)
    assert first is not None
    second = policy.choose(request("web"), table, (first,))
    assert second is not None and second != first
    assert policy.choose(request("web"), table, (first, second)) is None
    policy.done(request("web"), first, FAIL, 0.001)
    policy.done(request("web"), second, OK, 0.001)
    assert [policy.stats("web", a).in_flight for a in ("a", "b")] == [0, 0]  # type: ignore[union-attr]


def test_consecutive_failures_eject_then_a_probe_returns_it() -> None:
    policy, clock, events = p2c(eject_errors=5, backoff_s=5.0, probe_every=20)
    table = routes("web", "good", "bad")
    serve(policy, table, 100, {"good": 0.001, "bad": 0.001}, {"bad": FAIL})
    assert [e[0] for e in events] == ["ReplicaEjected"] and "5 failures in a row" in events[0][2]
    assert events[0][1] == "web" and "bad" in events[0][2] and "5 s" in events[0][2]
    assert policy.stats("web", "bad").state == EJECTED  # type: ignore[union-attr]
    assert serve(policy, table, 100, {"good": 0.001, "bad": 0.001})["bad"] == 0  # out until the back-off ends
    clock.t += 5.0
    got = serve(policy, table, 100, {"good": 0.001, "bad": 0.001}, {"bad": FAIL})  # half-open: a trickle of probes
    assert got["bad"] == 1 and [e[0] for e in events] == ["ReplicaEjected", "ReplicaEjected"]
    assert "10 s" in events[1][2] and "probe failed" in events[1][2]  # the back-off doubled
    clock.t += 10.0
    got = serve(policy, table, 100, {"good": 0.001, "bad": 0.001})
    assert events[-1][0] == "ReplicaReturned" and policy.stats("web", "bad").state == HEALTHY  # type: ignore[union-attr]
    assert got["bad"] >= 20  # back in rotation


def test_the_back_off_starts_over_after_a_healthy_period() -> None:
    policy, clock, events = p2c(eject_errors=2, backoff_s=5.0, reset_s=60.0, probe_every=1)
    table = routes("web", "good", "bad")
    for wait in (5.0, 10.0):  # ejected twice: 5 s, then 10 s
        serve(policy, table, 20, {"good": 0.001, "bad": 0.001}, {"bad": FAIL})
        clock.t += wait
        serve(policy, table, 20, {"good": 0.001, "bad": 0.001})
    clock.t += 61.0
    serve(policy, table, 40, {"good": 0.001, "bad": 0.001}, {"bad": FAIL})
    ejected = [e[2] for e in events if e[0] == "ReplicaEjected"]
    assert [m.split(" for ")[1].split(":")[0] for m in ejected] == ["5 s", "10 s", "5 s"]


def test_the_last_healthy_replica_is_never_ejected() -> None:
    policy, _, events = p2c(eject_errors=3)
    table = routes("web", "a", "b")
    got = serve(policy, table, 50, {"a": 0.001, "b": 0.001}, {"a": FAIL, "b": FAIL})
    assert len(events) == 1 and sum(got.values()) == 50  # one ejected, the other keeps serving
    single = routes("solo", "x")
    serve(policy, single, 20, {"x": 0.001}, {"x": FAIL})
    assert policy.stats("solo", "x").state == HEALTHY and len(events) == 1  # type: ignore[union-attr]


def test_when_every_replica_left_is_ejected_they_still_serve() -> None:
    policy, _, _ = p2c(eject_errors=3)
    table = routes("web", "a", "b")
    serve(policy, table, 30, {"a": 0.001, "b": 0.001}, {"a": FAIL})
    b = next(r for r in table.replicas if r.address == "b")
    assert policy.choose(request("web"), table, (b,)) == table.replicas[0]  # the retry may go to the ejected one


def test_a_latency_outlier_is_ejected_and_a_starved_replica_is_tried_again() -> None:
    policy, _, events = p2c(outlier_factor=5.0, min_samples=20, stale_s=10.0)
    table = routes("web", "a", "b", "c")
    feed(policy, table, 30, {"a": 0.001, "b": 0.001, "c": 0.050})
    assert [e[0] for e in events] == ["ReplicaEjected"] and "over 5 x its peers' median 1.0 ms" in events[0][2]
    assert "c" in events[0][2]
    calm, _, noted = p2c()
    feed(calm, table, 40, {"a": 0.001, "b": 0.001, "c": 0.001})
    feed(calm, table, 3, {"a": 0.001, "b": 0.001, "c": 0.020})  # a burst of slow calls: not an outlier
    feed(calm, table, 40, {"a": 0.001, "b": 0.001, "c": 0.004})  # 4 x, but 3 ms more: not worth an ejection
    assert noted == []
    quiet, clock, _ = p2c()
    two = routes("web", "fast", "slow")
    serve(quiet, two, 50, {"fast": 0.001, "slow": 0.020})
    assert serve(quiet, two, 50, {"fast": 0.001, "slow": 0.020})["slow"] == 0
    clock.t += 60.0  # unfed for long enough, the slow one's estimate decays below the fast one's
    assert serve(quiet, two, 50, {"fast": 0.001, "slow": 0.020})["slow"] >= 1


def test_cancelled_calls_teach_nothing_and_updates_drop_what_left() -> None:
    policy, _, _ = p2c(eject_errors=2)
    table = routes("web", "a", "b")
    serve(policy, table, 10, {"a": 0.001, "b": 0.001}, {"a": grpc.StatusCode.CANCELLED, "b": grpc.StatusCode.CANCELLED})
    assert all(policy.stats("web", x).samples == 0 for x in "ab")  # type: ignore[union-attr]
    policy.update({"web": routes("web", "b")})
    assert policy.stats("web", "a") is None and policy.stats("web", "b") is not None
    policy.done(request("web"), table.replicas[0], OK, 0.001)  # a call to one that left ends quietly
    policy.update({"web": None})
    assert policy.stats("web", "b") is None


def test_near_ties_go_to_the_replica_whose_devices_are_less_busy() -> None:
    busy = {"a": 0.9, "b": 0.1}
    policy = P2CEwma(rng=random.Random(7), load=lambda r: busy.get(r.address))
    table = routes("web", "a", "b")
    feed(policy, table, 10, {"a": 0.0010, "b": 0.00102})
    assert serve(policy, table, 50, {"a": 0.0010, "b": 0.00102}) == Counter({"b": 50})  # within 5 %: less busy
    busy.clear()  # unknown: the score decides
    assert serve(policy, table, 50, {"a": 0.0010, "b": 0.00102}) == Counter({"a": 50})


# -- zone affinity: the request's xpud-zone, else the router's zone; spill-over when saturated or gone -----------


def zoned(name: str, zones: dict[str, str], max_inflight: int = 0) -> DeploymentRoutes:
    return DeploymentRoutes(name, tuple(ReplicaEndpoint(a, f"node-{a}", ("cpu:0",), "1", z) for a, z in zones.items()),
                            max_inflight=max_inflight)


def in_zone(deployment: str, zone: str | None) -> RouteRequest:
    message = pb.ModelInferRequest(model_name=deployment)
    if zone is not None:
        message.parameters[ZONE_PARAMETER].string_param = zone
    return RouteRequest(deployment, "ModelInfer", message)


def held(policy: RoutingPolicy, table: DeploymentRoutes, zone: str | None, count: int) -> list[str]:
    """`count` requests held in flight (none told done): each pick's address."""
    out = []
    for _ in range(count):
        chosen = policy.choose(in_zone(table.name, zone), table)
        assert chosen is not None
        out.append(chosen.address)
    return out


@pytest.mark.parametrize("make", [lambda **kw: P2CEwma(rng=random.Random(3), **kw), RoundRobin],
                         ids=["p2c", "round-robin"])
def test_a_zone_is_preferred_until_its_replicas_are_saturated_then_requests_spill_over(make) -> None:
    table = zoned("web", {"a1": "a", "b1": "b", "b2": "b", "c1": "c"})
    policy = make(zone_bound=3)
    got = Counter(held(policy, table, "b", 6))  # b's two replicas take three each
    assert got == {"b1": 3, "b2": 3}
    got = Counter(held(policy, table, "b", 4))  # both saturated: the others take the rest
    assert set(got) <= {"a1", "c1"} and sum(got.values()) == 4
    policy.done(in_zone("web", "b"), table.replicas[1], OK, 0.001)  # one call on b1 ends: b again
    assert held(policy, table, "b", 1) == ["b1"]
    assert set(held(make(zone_bound=3), table, "nowhere", 8)) == {"a1", "b1", "b2", "c1"}  # no such zone: any


@pytest.mark.parametrize("make", [lambda **kw: P2CEwma(rng=random.Random(3), **kw), RoundRobin],
                         ids=["p2c", "round-robin"])
def test_the_request_zone_wins_over_the_router_zone_and_max_inflight_is_the_bound(make) -> None:
    table = zoned("web", {"a1": "a", "b1": "b"})
    policy = make(zone="a")
    assert held(policy, table, None, 5) == ["a1"] * 5  # the router's zone (bound 16)
    assert held(policy, table, "b", 5) == ["b1"] * 5  # the request's zone wins
    bounded = zoned("web", {"a1": "a", "b1": "b"}, max_inflight=2)
    policy = make(zone="a", zone_bound=100)
    assert held(policy, bounded, None, 4) == ["a1", "a1", "b1", "b1"]  # --max-inflight bounds a1 at 2
    assert held(make(), table, "", 4).count("a1") == 2  # no zone at all: both, as before


def test_zone_affinity_keeps_ejection_working() -> None:
    policy, clock, events = p2c(eject_errors=3, backoff_s=5.0, probe_every=10)
    table = zoned("web", {"a1": "a", "b1": "b"})

    def serve_in(zone: str, count: int, codes: dict[str, grpc.StatusCode]) -> Counter[str]:
        got: Counter[str] = Counter()
        for _ in range(count):
            chosen = policy.choose(in_zone("web", zone), table)
            assert chosen is not None
            got[chosen.address] += 1
            policy.done(in_zone("web", zone), chosen, codes.get(chosen.address, OK), 0.001)
        return got

    got = serve_in("b", 20, {"b1": FAIL})
    assert got["b1"] == 3 and got["a1"] == 17  # three failures eject b's replica; the rest go to a
    assert [e[0] for e in events] == ["ReplicaEjected"] and "b1" in events[0][2]
    clock.t += 5.0
    got = serve_in("b", 40, {})  # its back-off over: a probe returns it, and b's requests go back to b
    assert events[-1][0] == "ReplicaReturned"
    assert got["b1"] >= 25, got
