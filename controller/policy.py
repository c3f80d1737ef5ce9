"""Routing policies: which ready replica of a deployment gets a request.

The router hands a policy the request and the deployment's `DeploymentRoutes` (pushed by the controller); on an
UNAVAILABLE answer it asks again with the replicas tried so far, and it reports every call's outcome. A policy
that weighs load, latency, zones or versions reads them from there: the request's parameters, the replicas'
fields, `done`; `RoundRobin` needs none of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from .routes import DeploymentRoutes, ReplicaEndpoint, RouteUpdate


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """One request to route."""

    deployment: str
    method: str  # the OIP RPC it is forwarded as: ModelInfer, ModelMetadata, ModelConfig
    message: Any  # the OIP request as received (a policy may read its parameters)


class RoutingPolicy(Protocol):
    def choose(self, request: RouteRequest, routes: DeploymentRoutes,
               tried: Sequence[ReplicaEndpoint] = ()) -> ReplicaEndpoint | None:
        """The replica for ``request`` among ``routes.replicas`` (never empty), other than those ``tried`` already
        (they answered UNAVAILABLE); None when there is no other to try."""
        ...

    def done(self, request: RouteRequest, replica: ReplicaEndpoint, code: grpc.StatusCode, seconds: float) -> None:
        """The call to ``replica`` ended with ``code`` (OK or the agent's status) after ``seconds``."""
        ...

    def update(self, changed: RouteUpdate) -> None:
        """The table changed (None: the deployment is gone): drop what is kept for what is no longer listed."""
        ...


class RoundRobin:
    """Each deployment's replicas in turn, in the table's order; a retry goes to the next one after the one that
    failed (skipping those tried)."""

    def __init__(self) -> None:
        self._turns: dict[str, int] = {}  # per deployment, the next turn

    def choose(self, request: RouteRequest, routes: DeploymentRoutes,
               tried: Sequence[ReplicaEndpoint] = ()) -> ReplicaEndpoint | None:
        replicas = routes.replicas
        if not replicas:
            return None
        if not tried:
            turn = self._turns.get(routes.name, 0)
            self._turns[routes.name] = turn + 1
            return replicas[turn % len(replicas)]
        start = replicas.index(tried[-1]) + 1 if tried[-1] in replicas else 0
        for step in range(len(replicas)):
            candidate = replicas[(start + step) % len(replicas)]
            if candidate not in tried:
                return candidate
        return None

    def done(self, request: RouteRequest, replica: ReplicaEndpoint, code: grpc.StatusCode, seconds: float) -> None:
        pass

    def update(self, changed: RouteUpdate) -> None:
        for name, routes in changed.items():
            if routes is None:
                self._turns.pop(name, None)
