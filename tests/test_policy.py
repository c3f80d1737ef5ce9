"""Routing policies, by table: which replica each request of a sequence gets."""

from __future__ import annotations

import grpc
import pytest

from xpud.controller.policy import RoundRobin, RouteRequest, RoutingPolicy
from xpud.controller.routes import DeploymentRoutes, ReplicaEndpoint


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
