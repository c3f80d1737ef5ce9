"""The router's endpoint table: every deployment's ready replicas, kept up to date by the controller.

The controller tells the table when a node's routable state may have changed (its Hello, a StatusReport, Lost,
heard from again) and after each scheduling pass (deployments added or deleted).
The table works out which deployments' routes changed and pushes only those to its listeners (the router): one
node's update costs that node's instances and the deployments they touch, never a walk over the pool.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from xpud.proto.status import StatusError

from . import traffic
from .core import NODE_LOST
from .pool import NodeState
from .traffic import Split, Weights, version_order

READY, UNAVAILABLE = "READY", "UNAVAILABLE"
Reason = Callable[[str], str | None]  # why a deployment has no ready replica; None: it does not exist (any more)


@dataclass(frozen=True, slots=True)
class ReplicaEndpoint:
    """One ready replica of a deployment: where the router sends its requests, and what a policy may weigh."""

    address: str  # host:port of the agent's OIP endpoint
    node: str
    devices: tuple[str, ...]  # the device ids the instance runs on
    version: str  # the model version the agent loaded (the deployment's, as resolved when it was pushed)
    zone: str  # the node's zone, from its Hello
    tls: bool = False  # the endpoint takes mTLS: the router dials it with the controller's certificate
    model: str = ""  # the model the instance serves (the deployment's), for the placement profiles (`profiles`)
    device_model: str = ""  # its first device's model and memory in bytes, from the node's Hello
    device_memory: int = 0
    # its node serves several versions of the deployment: a request forwarded there names this one
    pinned: bool = False


@dataclass(frozen=True, slots=True)
class DeploymentRoutes:
    """One deployment as the router serves it: its ready replicas by address, and why there are none."""

    name: str
    replicas: tuple[ReplicaEndpoint, ...] = ()
    why: str = ""  # why no replica is ready, when no `ask` is given
    ask: Reason | None = field(default=None, compare=False, repr=False)  # asked for the reason when it is read
    split: Split | None = None  # a deployment served in several versions: how requests are split (`traffic`)
    by_version: Mapping[str, DeploymentRoutes] = field(default_factory=dict, compare=False, repr=False)
    max_inflight: int = 0  # per ready replica (the router's admission queue); 0: no bound

    @property
    def state(self) -> str:
        return READY if self.replicas else UNAVAILABLE

    @property
    def reason(self) -> str:
        """Why no replica is ready ("" while one is): asked of the controller when read (an error answer, the
        repository index), so that no pass pays for the reasons of deployments nobody calls."""
        if self.replicas:
            return ""
        return (self.ask(self.name) or "") if self.ask is not None else self.why


def for_request(routes: DeploymentRoutes, message: Any) -> DeploymentRoutes:
    """The routes a request may take: with a split, those of the version `traffic.choose` picks (an unpinned
    request whose version has no ready replica yet takes any ready one); else all of them."""
    if routes.split is None:
        return routes
    version = traffic.choose(routes.name, message, routes.split, routes.by_version)
    chosen = routes.by_version.get(version)
    if chosen is not None:
        return chosen
    if version in routes.split.versions and not (getattr(message, "model_version", "") or
                                                 getattr(message, "version", "")):
        return routes
    raise StatusError(grpc.StatusCode.UNAVAILABLE, f"deployment {routes.name!r} has no ready replica of version "
                      f"{version!r} yet")


RouteUpdate = Mapping[str, DeploymentRoutes | None]  # the deployments whose routes changed; None: deleted
Listener = Callable[[RouteUpdate], None]


def node_replicas(node: NodeState, skip: Collection[str] = ()) -> dict[str, ReplicaEndpoint]:
    """What a node serves now, by deployment (one served in several versions here: its highest version's; see
    `node_endpoints` for all of them)."""
    return {name: r for (name, _), r in node_endpoints(node, skip).items() if node.instances[name].version == r.version}


Served = tuple[str, str]  # (deployment, version)


def node_endpoints(node: NodeState, skip: Collection[str] = ()) -> dict[Served, ReplicaEndpoint]:
    """What a node serves now, by deployment and version: its READY instances, while it has an endpoint and is not
    Lost; `skip`: deployments dropped from its desired state that it still reports (no new request goes there)."""
    if node.state == NODE_LOST or not node.endpoint:
        return {}
    served = {}
    for inst in node.every_instance():
        name = inst.deployment
        if inst.state == READY and name not in skip:
            first = node.devices.get(inst.devices[0]) if inst.devices else None
            served[(name, inst.version)] = ReplicaEndpoint(
                node.endpoint, node.name, tuple(inst.devices), inst.version, node.zone, node.endpoint_tls,
                inst.model, first.model if first else "", first.memory_total if first else 0,
                name in node.versions)
    return served


def _versioned(name: str, served: tuple[ReplicaEndpoint, ...], ask: Reason, split: Weights,
               max_inflight: int = 0) -> DeploymentRoutes:
    """A deployment served in several versions: its routes, and per version the routes of that version's replicas."""
    versions: dict[str, list[ReplicaEndpoint]] = {}
    for r in served:
        versions.setdefault(r.version, []).append(r)
    by_version = {v: DeploymentRoutes(name, tuple(rs), ask=ask) for v, rs in versions.items()}
    return DeploymentRoutes(name, served, ask=ask, split=Split.of(split), by_version=by_version,
                            max_inflight=max_inflight)


def _order(replica: ReplicaEndpoint) -> tuple[str, str, tuple[int, int, str]]:
    return replica.address, replica.node, version_order(replica.version)


def _without(replicas: tuple[ReplicaEndpoint, ...], gone: ReplicaEndpoint) -> tuple[ReplicaEndpoint, ...]:
    at = bisect_left(replicas, _order(gone), key=_order)
    if at == len(replicas) or replicas[at] != gone:
        return replicas
    held = list(replicas)
    del held[at]
    return tuple(held)


def _with(replicas: tuple[ReplicaEndpoint, ...], new: ReplicaEndpoint) -> tuple[ReplicaEndpoint, ...]:
    held = list(replicas)
    held.insert(bisect_left(replicas, _order(new), key=_order), new)
    return tuple(held)


class RouteTable:
    """Every known deployment's `DeploymentRoutes`, updated one node or one pass at a time and pushed to listeners.

    Replicas of a deployment the table does not know yet (a node reports it before the pass that creates it, or
    still runs a deleted one) are kept aside and published once a pass lists the deployment. Why a deployment has
    no ready replica is asked only when the router reads it (`DeploymentRoutes.reason`); the table itself asks
    only when a deployment loses its last replica (None: it was deleted meanwhile, and leaves the table now)."""

    def __init__(self, reason: Reason, unrouted: Mapping[str, Collection[str]] | None = None) -> None:
        self.reason = reason
        self.unrouted = unrouted if unrouted is not None else {}  # per node, deployments it serves but is not sent
        self.routes: dict[str, DeploymentRoutes] = {}  # what the listeners hold
        self._served: dict[str, tuple[ReplicaEndpoint, ...]] = {}  # per deployment, known or not: ready replicas
        self._on_node: dict[str, dict[Served, ReplicaEndpoint]] = {}  # per node, what it serves (`node_endpoints`)
        self._listeners: list[Listener] = []
        self._splits: dict[str, Weights] = {}  # per deployment served in several versions, its weights
        self._limits: dict[str, int] = {}  # per deployment with a bound on requests in flight, that bound

    def subscribe(self, listener: Listener) -> None:
        """``listener`` gets the whole table now, then each change."""
        self._listeners.append(listener)
        listener(dict(self.routes))

    def node(self, node: NodeState) -> RouteUpdate:
        """The node's routable state may have changed: re-read what it serves, push the deployments whose ready
        replicas changed."""
        before, now = self._on_node.pop(node.name, {}), node_endpoints(node, self.unrouted.get(node.name, ()))
        if now:
            self._on_node[node.name] = now
        update: dict[str, DeploymentRoutes | None] = {}
        for key in before.keys() | now.keys():
            name = key[0]
            old, new = before.get(key), now.get(key)
            if old == new:
                continue
            served = self._served.get(name, ())
            if old is not None:
                served = _without(served, old)
            if new is not None:
                served = _with(served, new)
            if served:
                self._served[name] = served
            else:
                self._served.pop(name, None)
            if name in self.routes:
                self._refresh(name, update)
        return self._push(update)

    def deployments(self, names: Collection[str], splits: Mapping[str, Weights] | None = None,
                    limits: Mapping[str, int] | None = None) -> RouteUpdate:
        """After a scheduling pass, ``names`` being every deployment (``splits``: the weights of those served in
        several versions): add the new ones, drop the deleted ones, refresh those whose split changed."""
        update: dict[str, DeploymentRoutes | None] = {name: None for name in self.routes if name not in names}
        for name in update:
            del self.routes[name]
        splits = dict(splits or {})
        limits = dict(limits or {})
        resplit = {n for n in splits.keys() | self._splits.keys() if splits.get(n) != self._splits.get(n)}
        resplit |= {n for n in limits.keys() | self._limits.keys() if limits.get(n) != self._limits.get(n)}
        self._splits, self._limits = splits, limits
        for name in names:
            if name not in self.routes or name in resplit:
                self._refresh(name, update, force=name in resplit)
        return self._push(update)

    def _refresh(self, name: str, update: dict[str, DeploymentRoutes | None], force: bool = False) -> None:
        served = self._served.get(name, ())
        if not served and self.reason(name) is None:  # deleted before its pass: gone from the router now
            if self.routes.pop(name, None) is not None:
                update[name] = None
            return
        held = self.routes.get(name)  # a deployment's tuple is new exactly when its replicas changed
        if held is None or held.replicas is not served or force:
            split, limit = self._splits.get(name), self._limits.get(name, 0)
            self.routes[name] = update[name] = \
                DeploymentRoutes(name, served, ask=self.reason, max_inflight=limit) if split is None \
                else _versioned(name, served, self.reason, split, limit)

    def _push(self, update: dict[str, DeploymentRoutes | None]) -> RouteUpdate:
        if update:
            for listener in self._listeners:
                listener(update)
        return update
