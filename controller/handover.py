"""Make-before-break across nodes: a replica moved off a node where it still serves stays in that node's desired
state, and routable, until the replica that replaces it reports READY on its node, or a grace bound passes.

A move keeps the old replica when it still works where it is: its node is draining (`xpud drain`), or its device
is unhealthy but not failed, on a node still heard from (Ready or Suspect). A Lost or gone node, a gone or failed
device, and every other cause (preemption and a device with no room above all: the memory is the new owner's)
drop it at once, as before. While kept, its memory stays held on its device (`reserved`), so the scheduler places
nothing into it. The retiring set lives in memory only: a controller restart drops it (the agents' reports then
show what still runs, and the old copies are unloaded with the next push).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .core import NODE_READY, NODE_SUSPECT, DeploymentSpec, NodeView, Replica
from .pool import Pool
from .store import Event

GRACE = 60.0  # seconds a moved replica's old copy waits for the new one to report READY before it is dropped
Key = tuple[str, str]  # (node, device id)


@dataclass(frozen=True)
class Retiring:
    """An old replica kept on its node while its replacement loads."""

    replica: Replica
    deadline: float  # pool clock time past which it is dropped whatever the new one does
    cause: str  # why it moved ("node n1 draining", "device n1/sim:0 unhealthy")


def alive(node: NodeView | None, device_id: str) -> bool:
    """Whether a replica on node/device_id can still serve: the node is heard from, the device there, not failed."""
    if node is None or node.state not in (NODE_READY, NODE_SUSPECT):
        return False
    device = next((d for d in node.devices if d.id == device_id), None)
    return device is not None and device.health != "failed"


def still_serves(node: NodeView | None, device_id: str, draining: frozenset[str]) -> str | None:
    """Why a replica displaced from node/device_id may be kept while its replacement loads (None: drop it now)."""
    if node is None or not alive(node, device_id):
        return None
    if node.name in draining:
        return f"node {node.name} draining"
    if any(d.id == device_id and d.health_state == "unhealthy" for d in node.devices):
        return f"device {node.name}/{device_id} unhealthy"
    return None


def _ready(pool: Pool, replica: Replica, placement: Sequence[Replica]) -> bool:
    """Whether the replica's node reports its deployment READY with every device placed there (an instance that
    still reports its former devices while it reloads on new ones does not count; a node serving several versions
    of it: their READY instances together)."""
    node = pool.nodes.get(replica.node)
    ready = [i for i in node.instances_of(replica.deployment) if i.state == "READY"] if node is not None else []
    if not ready:
        return False
    want = Counter(r.device for r in placement if r.node == replica.node)
    have = Counter(d for inst in ready for d in inst.devices)
    return all(have[dev] >= n for dev, n in want.items())


class Handover:
    """The old replicas kept while their replacements load, by deployment."""

    def __init__(self, grace: float = GRACE) -> None:
        self.grace = grace
        self.retiring: dict[str, list[Retiring]] = {}

    def reserved(self) -> dict[Key, int]:
        """Memory the kept replicas hold, by device: the scheduler places nothing into it."""
        out: dict[Key, int] = {}
        for kept in self.retiring.values():
            for k in kept:
                key = (k.replica.node, k.replica.device)
                out[key] = out.get(key, 0) + k.replica.memory
        return out

    def desired(self, placement: dict[str, list[Replica]]) -> dict[str, list[Replica]]:
        """The placement with the kept replicas added: what the nodes' desired states carry."""
        if not self.retiring:
            return placement
        out = dict(placement)
        for name, kept in self.retiring.items():
            out[name] = [*placement.get(name, []), *(k.replica for k in kept)]
        return out

    def next_deadline(self) -> float | None:
        return min((k.deadline for kept in self.retiring.values() for k in kept), default=None)

    def update(self, old: Mapping[str, Sequence[Replica]], placement: Mapping[str, Sequence[Replica]],
               specs: Mapping[str, DeploymentSpec], views: Sequence[NodeView], draining: frozenset[str],
               pool: Pool, now: float) -> tuple[list[Event], list[Retiring]]:
        """After a pass moved `old` to `placement`: keep the old replicas of cross-node moves that still serve, then
        drop the kept ones whose replacement is READY (or that cannot be kept any more, or past their deadline).
        Returns the events and the replicas dropped while they still served (their routes go before the push)."""
        by_name: dict[str, NodeView] | None = None
        for name, before in old.items():
            replicas = placement.get(name, ())
            if not before or replicas is before or (spec := specs.get(name)) is None:
                continue
            now_at = {r.index: r for r in replicas}
            for r in before:
                new = now_at.get(r.index)
                if r.index >= spec.replicas or new == r or (new is not None and new.node == r.node):
                    continue  # scaled down, kept, or moved on its node (the agent makes before it breaks there)
                if by_name is None:
                    by_name = {v.name: v for v in views}
                cause = still_serves(by_name.get(r.node), r.device, draining)
                if cause is not None and not any(k.replica.index == r.index for k in self.retiring.get(name, [])):
                    self.retiring.setdefault(name, []).append(Retiring(r, now + self.grace, cause))
        events: list[Event] = []
        dropped: list[Retiring] = []
        for name in list(self.retiring):
            kept, spec, replicas = [], specs.get(name), placement.get(name, ())
            for k in self.retiring[name]:
                r = k.replica
                new = next((p for p in replicas if p.index == r.index), None)
                if by_name is None:
                    by_name = {v.name: v for v in views}
                if spec is None or r.index >= spec.replicas or (new is not None and new.node == r.node):
                    continue  # deleted, scaled down, or placed on its node again: nothing to hand over
                if not alive(by_name.get(r.node), r.device):
                    events.append(("HandoverAborted", name, f"replica {r.index} on {r.node}/{r.device} dropped at "
                                   "once: its node or device no longer serves it"))
                    continue
                if new is not None and _ready(pool, new, replicas):
                    events.append(("HandedOver", name, f"replica {r.index} READY on {new.node}/{new.device}: "
                                   f"its old copy on {r.node}/{r.device} is dropped ({k.cause})"))
                    dropped.append(k)
                    continue
                if now >= k.deadline:
                    where = f"{new.node}/{new.device}" if new is not None else "no device"
                    events.append(("HandoverExpired", name, f"replica {r.index} on {r.node}/{r.device} dropped "
                                   f"after {self.grace:g} s ({k.cause}): its replacement on {where} is not READY"))
                    dropped.append(k)
                    continue
                kept.append(k)
            if kept:
                self.retiring[name] = kept
            else:
                del self.retiring[name]
        return events, dropped

