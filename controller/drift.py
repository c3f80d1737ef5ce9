"""Drift past a grace: a replica that its node keeps reporting FAILED, or does not report at all once it has applied
the desired state that carries it, is re-placed on another device after `grace` seconds (a `Replaced` event), and
that device is avoided for the deployment for `avoid_for` seconds (so the next pass does not put it back there).

The agent heals what it can first (a model unloaded by hand loads again, ReplicaFailed then ReplicaRecovered);
this is for what it cannot heal there. In memory only, on the pool's clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

from .core import NODE_READY, Replica
from .pool import Pool
from .shares import Share
from .store import Event

GRACE = 30.0  # seconds a replica may stay FAILED or unreported on its node before it is re-placed
AVOID_FOR = 300.0  # seconds the device it failed on is avoided for its deployment
Key = tuple[str, str]  # (node, device id)
Spot = tuple[str, str, str]  # (deployment, node, device id)


def failing(pool: Pool, replica: Replica, generation: int, version: str = "") -> str | None:
    """Why the replica does not serve on its Ready node (None: it serves, loads, or cannot be judged now); `version`:
    the one its node was given for it, when the node serves several versions of its deployment."""
    node = pool.nodes.get(replica.node)
    if node is None or node.state != NODE_READY:
        return None  # Suspect: wait; Lost or gone: the scheduler moves it anyway
    inst = node.instance(replica.deployment, version)
    if inst is None:
        if node.generation_observed >= generation > 0:
            return f"not reported by its node (generation {node.generation_observed} applied)"
        return None  # the node has not applied the desired state that carries it yet
    if inst.state == "FAILED":
        return f"FAILED: {inst.reason or 'no reason given'}"
    return None


class Drift:
    def __init__(self, grace: float = GRACE, avoid_for: float = AVOID_FOR) -> None:
        self.grace, self.avoid_for = grace, avoid_for
        self.since: dict[Spot, float] = {}  # when each replica's spot was first seen not serving
        self.avoided: dict[Spot, float] = {}  # spots avoided, until when
        self.watched: set[str] = set()  # nodes that reported their instances since the last check

    def check(self, placement: Mapping[str, Sequence[Replica]], shares: Mapping[str, Share], pool: Pool,
              generations: Mapping[str, int], now: float) -> list[Event]:
        """Before a pass: note the replicas that do not serve, on the nodes that reported since the last call and
        those already noted (never a walk over the pool); those past the grace are avoided from now on (the pass
        re-places them). Returns the events."""
        events: list[Event] = []
        seen = set()
        nodes, self.watched = self.watched | {node for _, node, _ in self.since}, set()
        for node in sorted(nodes):
            share = shares.get(node, ())
            several = {a.deployment for a, b in pairwise(share) if a.deployment == b.deployment}
            for a in share:
                split = a.deployment in several  # one assignment per version here: each its replicas' devices
                for r in placement.get(a.deployment, ()):
                    if r.node != node or (split and r.device not in a.devices):
                        continue
                    name = a.deployment
                    why = failing(pool, r, generations.get(r.node, 0), a.version if split else "")
                    if why is None:
                        continue
                    spot = (name, r.node, r.device)
                    seen.add(spot)
                    since = self.since.setdefault(spot, now)
                    if now - since >= self.grace and spot not in self.avoided:
                        self.avoided[spot] = now + self.avoid_for
                        events.append(("Replaced", name, f"replica {r.index} on {r.node}/{r.device} {why} for "
                                       f"{self.grace:g} s: placed elsewhere, avoiding that device for "
                                       f"{self.avoid_for:g} s"))
        self.since = {spot: t for spot, t in self.since.items() if spot in seen}
        return events

    def avoid(self, now: float) -> dict[str, frozenset[Key]]:
        """The devices each deployment avoids now (those past their time are forgotten)."""
        self.avoided = {spot: until for spot, until in self.avoided.items() if until > now}
        out: dict[str, set[Key]] = {}
        for name, node, device in self.avoided:
            out.setdefault(name, set()).add((node, device))
        return {name: frozenset(keys) for name, keys in out.items()}

    def next_deadline(self) -> float | None:
        """When a pass is next due: a grace ending, or an avoided device coming back."""
        times = [t + self.grace for spot, t in self.since.items() if spot not in self.avoided]
        return min([*times, *self.avoided.values()], default=None)
