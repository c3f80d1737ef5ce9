"""Each node's share of the placement (what its DesiredState carries), kept up to date in proportion to what changed.

Building every node's share from the whole placement each pass would cost more than the scheduler at scale, so
`Shares` keeps, per deployment, the placement its part was built from; a pass rebuilds the parts of deployments
whose replicas, spec or model changed, and only the nodes those touch get a new share. A node whose share may
differ from what it was sent (touched, or on a new stream) is *stale* until it has been sent its share or found
equal to it; a node that cannot be sent to (no stream, lost) stays stale until it can.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from .core import DeploymentSpec, Replica
from .store import ModelRecord
from .traffic import replica_versions, version_order, weights


class Assignment(NamedTuple):
    """One deployment's part of a node's share, or one version's part when the node serves several versions of it
    (a ModelAssignment as a plain, comparable tuple)."""

    deployment: str
    model: str
    version: str
    digest: str
    size: int
    devices: tuple[str, ...]
    max_batch_size: int
    priority: int


Share = tuple[Assignment, ...]  # a node's share of the placement, by deployment name (then version)
FindModel = Callable[[str, str], "ModelRecord | None"]  # (model, version) -> record, as `Catalog.find`


class _Part(NamedTuple):
    """What one deployment's part of the shares was built from, and the part (per node, one Assignment per version
    its replicas there carry: one, but for a traffic split with several of its replicas on one node)."""

    replicas: list[Replica]
    spec: DeploymentSpec | None
    models: tuple[ModelRecord | None, ...]  # per weighted version (`traffic.weights`)
    per_node: dict[str, tuple[Assignment, ...]]


def _models(spec: DeploymentSpec, find: FindModel) -> tuple[ModelRecord | None, ...]:
    """The records a deployment's part is built from: one per weighted version, then during a rollout its source
    and its target."""
    out = tuple(find(spec.model, v) for v, _ in weights(spec))
    if spec.rollout is not None:
        out += (find(spec.rollout.model, spec.rollout.version), find(spec.model, spec.rollout.target))
    return out


def _per_node(name: str, replicas: Sequence[Replica], spec: DeploymentSpec | None,
              models: tuple[ModelRecord | None, ...]) -> dict[str, tuple[Assignment, ...]]:
    if spec is None or not models or None in models:  # deleted meanwhile, or a model gone: nothing to run
        return {}
    by_version = {v: m for (v, _), m in zip(weights(spec), models, strict=False) if m is not None}
    versions = replica_versions(spec) if spec.traffic else []
    held: dict[str, dict[str, list[str]]] = {}  # per node, per version its replicas there carry: their devices
    for r in replicas:
        version = versions[r.index] if r.index < len(versions) else spec.version
        held.setdefault(r.node, {}).setdefault(version, []).append(r.device)
    out = {}
    rollout = spec.rollout
    for node, per_version in held.items():
        if rollout is not None:  # one version: the source until the node's turn, then the target (`rollout.py`)
            if node == rollout.down:
                continue
            model = models[-1] if node in rollout.updated else models[-2]
            parts = [(model, [d for devices in per_version.values() for d in devices])]
        else:  # each version its replicas carry, on their devices (a version without a record: the first's)
            parts = [(by_version.get(v, models[0]), devices) for v, devices in per_version.items()]
        assigned: dict[str, Assignment] = {}
        for model, devices in parts:
            assert model is not None
            held_here = assigned.get(model.version)
            if held_here is not None:  # two versions resolved to one record: one assignment on all their devices
                devices = [*held_here.devices, *devices]
            assigned[model.version] = Assignment(name, model.name, model.version, model.digest, model.size,
                                                 tuple(sorted(devices)), spec.max_batch_size, max(spec.priority, 0))
        out[node] = tuple(assigned[v] for v in sorted(assigned, key=version_order))
    return out


class Shares:
    def __init__(self) -> None:
        self.now: dict[str, Share] = {}  # per node with one, its share of the placement as last updated
        self.sent: dict[str, Share] = {}  # per node, the share it was last sent
        self.stale: set[str] = set()  # nodes whose share may differ from what they were sent
        self._parts: dict[str, _Part] = {}  # per deployment
        self._on_node: dict[str, set[str]] = {}  # per node, the deployments with a part in its share

    def update(self, placement: Mapping[str, Sequence[Replica]], specs: Mapping[str, DeploymentSpec],
               find: FindModel) -> None:
        """Bring the shares up to `placement`; the nodes whose share changed become stale."""
        touched: set[str] = set()
        for name in [n for n in self._parts if n not in placement]:
            touched |= self._set(name, None)
        for name, replicas in placement.items():
            spec = specs.get(name)
            models = _models(spec, find) if spec is not None else ()
            held = self._parts.get(name)
            if held is not None and held.spec == spec and held.models == models and held.replicas == replicas:
                continue  # the common case: list equality is by identity first, and replicas are reused
            touched |= self._set(name, _Part(list(replicas), spec, models, _per_node(name, replicas, spec, models)))
        for node in touched:
            names = self._on_node.get(node)
            if names:
                self.now[node] = tuple(a for d in sorted(names) for a in self._parts[d].per_node[node])
            else:
                self.now.pop(node, None)
                self._on_node.pop(node, None)
        self.stale |= touched

    def _set(self, name: str, part: _Part | None) -> set[str]:
        """Replace one deployment's part; returns the nodes whose assignment of it changed."""
        old = self._parts.pop(name).per_node if name in self._parts else {}
        new = part.per_node if part is not None else {}
        if part is not None:
            self._parts[name] = part
        touched = set()
        for node in old.keys() | new.keys():
            if old.get(node) == new.get(node):
                continue
            touched.add(node)
            if node in new:
                self._on_node.setdefault(node, set()).add(name)
            else:
                self._on_node[node].discard(name)
        return touched

    def changed(self, reachable: Callable[[str], bool]) -> dict[str, Share]:
        """The stale nodes that can be sent to and whose share differs from what they were sent, in name order;
        the stale ones found equal are stale no more."""
        out = {}
        for node in sorted(self.stale):
            if not reachable(node):
                continue
            share = self.now.get(node, ())
            if self.sent.get(node) != share:
                out[node] = share
            else:
                self.stale.discard(node)
        return out

    def mark_sent(self, node: str, share: Share) -> None:
        self.sent[node] = share
        self.stale.discard(node)

    def new_stream(self, node: str) -> None:
        """A node on a new stream is sent its share again, even an empty one."""
        self.sent.pop(node, None)
        self.stale.add(node)
