"""The controller's state in memory: what the scheduling pass reads and writes, and the nodes feed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .core import DeploymentSpec, Replica
from .drift import Drift
from .handover import Handover
from .pool import Pool
from .profiles import Profiles
from .shares import Shares

RoutesChanged = Callable[[set[str]], None]  # the nodes whose routable state changed (empty: everything)


@dataclass
class State:
    pool: Pool
    specs: dict[str, DeploymentSpec] = field(default_factory=dict)  # the deployments in force
    placement: dict[str, list[Replica]] = field(default_factory=dict)  # as last committed (plus adoptions)
    pending: dict[str, str] = field(default_factory=dict)  # deployment -> why (some) replicas have no device
    generations: dict[str, int] = field(default_factory=dict)  # node -> last desired-state generation
    shares: Shares = field(default_factory=Shares)  # each node's share of the placement, and what it was sent
    draining: set[str] = field(default_factory=set)  # nodes whose replicas move off
    joined: set[str] = field(default_factory=set)  # nodes whose running instances the next pass adopts
    handover: Handover = field(default_factory=Handover)  # old replicas kept while their replacements load
    drift: Drift = field(default_factory=Drift)  # replicas that stay FAILED or unreported, devices avoided
    unrouted: dict[str, set[str]] = field(default_factory=dict)  # node -> deployments dropped from it, not routed
    routes_changed: list[RoutesChanged] = field(default_factory=list)
    profiles: Profiles = field(default_factory=Profiles)  # what the router measured per model version, device model

    def routes(self, nodes: set[str]) -> None:
        """Tell the hooks which nodes' routable state changed (an empty set: everything)."""
        for hook in self.routes_changed:
            hook(nodes)
