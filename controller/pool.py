"""The controller's live view of the nodes: devices, latest samples, what runs where, link state.

Plain Python and an injectable clock: the link servicer feeds it, the failure
detector ages it, the scheduler reads ``views()``, the router's endpoint table (`routes`) reads each node's
instances when the controller says the node changed.

``views()`` runs on every reconcile, so each node's view is cached and rebuilt only when something the
scheduler's filters read changed: a Hello (devices, labels, providers), the node's state or cordon, a device's
health; never on telemetry that only moves live readings. Live load reaches the scheduler through ``load``
instead, read from the latest samples at the moment a pick compares devices (``scheduler.LOAD_CANDIDATES``), so
the views of 10,000 busy nodes stay put while their utilization moves every second.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from xpud.proto import link_pb2 as lpb
from xpud.proto import telemetry_pb2 as tpb
from xpud.proto.devices import gpu_providers
from xpud.proto.samples import apply_delta

from .core import NODE_LOST, NODE_READY, NODE_SUSPECT, DeviceView, NodeView
from .traffic import version_order

HEALTH = {tpb.HEALTH_OK: "ok", tpb.HEALTH_DEGRADED: "degraded", tpb.HEALTH_FAILED: "failed",
          tpb.HEALTH_UNKNOWN: "unknown", tpb.HEALTH_UNSPECIFIED: "unknown"}
# the agent's health state machine; unspecified: an agent that does not judge, taken as healthy
HEALTH_STATE = {tpb.DEVICE_HEALTH_HEALTHY: "healthy", tpb.DEVICE_HEALTH_SUSPECT: "suspect",
                tpb.DEVICE_HEALTH_UNHEALTHY: "unhealthy", tpb.DEVICE_HEALTH_RECOVERING: "recovering"}
# (node, device id, state before, state now, the agent's reason): what `Pool.telemetry` saw move
HealthMove = tuple[str, str, str, str, str]


@dataclass
class NodeState:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    zone: str = ""
    devices: dict[str, tpb.DeviceInfo] = field(default_factory=dict)
    samples: dict[str, tpb.DeviceSample] = field(default_factory=dict)
    providers: list[str] = field(default_factory=list)
    endpoint: str = ""
    endpoint_tls: bool = False  # its OIP endpoint takes mTLS (the agent's certificate names the node)
    agent_version: str = ""
    incarnation: str = ""
    connected: bool = False
    last_seen: float = 0.0  # controller clock
    last_seen_wall: float = 0.0
    # per deployment, its instance here; one served in several versions: its highest version's (`versions`)
    instances: dict[str, lpb.InstanceStatus] = field(default_factory=dict)
    # per deployment served here in more than one version (a traffic split), each version's instance
    versions: dict[str, dict[str, lpb.InstanceStatus]] = field(default_factory=dict)
    generation_observed: int = 0
    session: Any = None  # the link session pushing this node's desired state
    revision: int = 0  # bumped when what the scheduler sees of this node changed (see the module docstring)
    view: NodeView | None = None  # the cached view, valid while view_key matches (revision, state, cordoned)
    view_key: tuple[int, str, bool] = (-1, "", False)
    # each device's (health, health state) as last checked (a change bumps)
    health: dict[str, tuple[str, str]] = field(default_factory=dict)
    changed: set[str] | None = field(default=None, repr=False)  # the pool's names of nodes to view again
    _state: str = field(default=NODE_SUSPECT, repr=False)
    _cordoned: bool = field(default=False, repr=False)

    # state and cordon are set from several places (link, detector, admin): setting them marks the view stale
    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, value: str) -> None:
        if value != self._state:
            self._state = value
            self.touch()

    @property
    def cordoned(self) -> bool:
        return self._cordoned

    @cordoned.setter
    def cordoned(self, value: bool) -> None:
        if value != self._cordoned:
            self._cordoned = value
            self.touch()

    def touch(self) -> None:
        """What the scheduler sees of this node may have changed: `Pool.views` looks at it again."""
        if self.changed is not None:
            self.changed.add(self.name)

    def instance(self, deployment: str, version: str = "") -> lpb.InstanceStatus | None:
        """The deployment's instance here; of `version` when one is given (None: it serves no such version)."""
        several = self.versions.get(deployment)
        if several is not None and version:
            return several.get(version)
        inst = self.instances.get(deployment)
        return inst if inst is None or not version or inst.version == version else None

    def instances_of(self, deployment: str) -> list[lpb.InstanceStatus]:
        """Every instance of one deployment here: one per version it serves."""
        several = self.versions.get(deployment)
        if several is not None:
            return list(several.values())
        inst = self.instances.get(deployment)
        return [inst] if inst is not None else []

    def instance_count(self) -> int:
        return len(self.instances) + sum(len(held) - 1 for held in self.versions.values())

    def every_instance(self) -> list[lpb.InstanceStatus]:
        """Every instance reported, one per (deployment, version)."""
        return [i for name, inst in self.instances.items()
                for i in (self.versions[name].values() if name in self.versions else (inst,))]

    def report(self, instances: Iterable[lpb.InstanceStatus]) -> None:
        """Take what the node reports it runs: one instance per deployment, or per version of a deployment."""
        by: dict[str, lpb.InstanceStatus] = {}
        several: dict[str, dict[str, lpb.InstanceStatus]] = {}
        for i in instances:
            held = by.get(i.deployment)
            if held is None:  # the usual case: one instance of the deployment
                by[i.deployment] = i
                continue
            several.setdefault(i.deployment, {held.version: held})[i.version] = i
            if version_order(i.version) >= version_order(held.version):
                by[i.deployment] = i
        self.instances = by
        self.versions = {name: held for name, held in several.items() if len(held) > 1}

    def bump(self) -> None:
        """What the scheduler sees of this node changed (devices, labels, health...): its view is rebuilt."""
        self.revision += 1
        self.touch()


def health(sample: tpb.DeviceSample | None) -> str:
    return "unknown" if sample is None else HEALTH.get(sample.health, "unknown")


def health_state(sample: tpb.DeviceSample | None) -> str:
    return "healthy" if sample is None else HEALTH_STATE.get(sample.health_state, "healthy")


class LiveLoad:
    """Each device's utilization from its node's latest sample, looked up by (node, device id) when the scheduler
    asks (``scheduler.Load``); None when the node or the reading is unknown."""

    __slots__ = ("nodes",)

    def __init__(self, nodes: dict[str, NodeState]) -> None:
        self.nodes = nodes

    def get(self, key: tuple[str, str]) -> float | None:
        node = self.nodes.get(key[0])
        sample = node.samples.get(key[1]) if node is not None else None
        return sample.utilization if sample is not None and sample.HasField("utilization") else None


def merge_delta(held: tpb.DeviceSample | None, delta: tpb.DeviceSample) -> tpb.DeviceSample:
    """``apply_delta``, in place on the held sample when the delta only sets scalar fields (the common case:
    MergeFrom sets exactly the fields present in the delta, and HEALTH_UNSPECIFIED is not merged), which costs a
    fifth of a copy. Full samples, cleared fields, events, maps and replaced messages take ``apply_delta``."""
    if held is None or delta.full or delta.cleared or delta.events or delta.extra \
            or delta.HasField("throttle_reasons") or delta.HasField("processes"):
        return apply_delta(held, delta)
    if held.events:
        del held.events[:]  # events belong to the sample that carried them
    held.MergeFrom(delta)
    return held


def runnable(device: tpb.DeviceInfo, providers: list[str]) -> bool:
    """Can ONNX Runtime run on this device here? A GPU needs its vendor's EP; CPUs and simulated GPUs always can."""
    if device.kind != "gpu" or device.vendor == "sim":
        return True
    return any(p in providers for p in gpu_providers(device.vendor))


class Pool:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.nodes: dict[str, NodeState] = {}
        self.load = LiveLoad(self.nodes)
        self.instances_reported: set[str] = set()  # nodes that reported their instances since `take_reported`
        self._views: list[NodeView] = []  # every node's view, in the order the nodes were added (never removed)
        self._at: dict[str, int] = {}  # a node's position there
        self._added: list[str] = []  # nodes created since the last views()
        self._changed: set[str] = set()  # nodes touched since the last views()
        # nodes known from before a controller restart that have not spoken since, and the clock time until which
        # they are not declared Lost (see `nodes.Nodes.joined`)
        self.returning: set[str] = set()
        self.returning_until = 0.0
        self.health_moves: list[HealthMove] = []  # devices whose health state moved, since the caller took them

    def node(self, name: str) -> NodeState:
        if name not in self.nodes:
            self.nodes[name] = NodeState(name, changed=self._changed)
            self._added.append(name)
        return self.nodes[name]

    def hello(self, node: NodeState, hello: lpb.Hello, wall: float) -> None:
        node.labels, node.zone = dict(hello.labels), hello.zone
        node.devices = {d.id: d for d in hello.devices}
        node.samples = {k: v for k, v in node.samples.items() if k in node.devices}
        node.providers = list(hello.execution_providers)
        node.endpoint, node.agent_version, node.incarnation = hello.inference_endpoint, hello.agent_version, \
            hello.incarnation
        node.endpoint_tls = hello.inference_tls
        node.report(hello.instances)
        node.generation_observed = hello.generation
        self.instances_reported.add(node.name)
        node.bump()
        self.seen(node, wall)

    def seen(self, node: NodeState, wall: float) -> None:
        node.last_seen, node.last_seen_wall = self.clock(), wall
        node.connected = True
        if self.returning:
            self.returning.discard(node.name)

    def telemetry(self, node: NodeState, batch: lpb.Telemetry) -> bool:
        """Merge a batch of samples; True when a device's health changed (what the scheduler must act on)."""
        changed = False
        for delta in batch.samples:
            sample = node.samples[delta.device_id] = merge_delta(node.samples.get(delta.device_id), delta)
            # only a change of health rebuilds the view (live load is read through `load`); UNSPECIFIED: not sent
            if (delta.full or delta.cleared or delta.health or delta.health_state) and delta.device_id in node.health:
                now = (health(sample), health_state(sample))
                before = node.health[delta.device_id]
                if before != now:
                    node.bump()
                    node.health[delta.device_id] = now
                    changed = True
                    if before[1] != now[1]:
                        self.health_moves.append((node.name, delta.device_id, before[1], now[1],
                                                  sample.health_state_reason))
        return changed

    def status(self, node: NodeState, report: lpb.StatusReport) -> None:
        node.report(report.instances)
        node.generation_observed = report.generation
        self.instances_reported.add(node.name)

    def take_reported(self) -> set[str]:
        """The nodes that reported their instances (Hello, StatusReport) since the last call."""
        reported, self.instances_reported = self.instances_reported, set()
        return reported

    def views(self) -> list[NodeView]:
        """Every node's view, in the order the nodes were added (a new list): a pass after joins then finds the
        views it had at the same places, the new ones after them (`planner.Planner`). Only the nodes added or
        touched since the last call are looked at again, and their views rebuilt if what the scheduler reads
        changed."""
        views, at = self._views, self._at
        for name in self._added:
            at[name] = len(views)
            views.append(self._current(self.nodes[name]))
        self._added.clear()
        for name in self._changed:
            views[at[name]] = self._current(self.nodes[name])
        self._changed.clear()
        return list(views)

    def _current(self, node: NodeState) -> NodeView:
        key = (node.revision, node.state, node.cordoned)
        if node.view is None or node.view_key != key:
            node.view, node.view_key = self._view(node), key
        return node.view

    @staticmethod
    def _view(node: NodeState) -> NodeView:
        devices = []
        node.health = {}
        for d in node.devices.values():
            if d.HasField("partitionable") and d.partitionable:
                continue  # a GPU in MIG mode is scheduled through its MIG devices
            sample = node.samples.get(d.id)
            now = node.health[d.id] = (health(sample), health_state(sample))
            devices.append(DeviceView(node=node.name, id=d.id, kind=d.kind, memory_total=d.memory_total,
                                      runnable=runnable(d, node.providers), health=now[0],
                                      health_state=now[1], model=d.model))  # no live readings
        return NodeView(node.name, node.state, node.cordoned, dict(node.labels), node.zone, tuple(devices))

    def age(self, interval: float, lease: float) -> list[tuple[NodeState, str]]:
        """Suspect after 2 missed intervals, Lost after the lease (a node still `returning` only after
        `returning_until`); returns the nodes whose state changed."""
        now = self.clock()
        changed = []
        recent = now - min(2 * interval, lease)  # heard from since: nothing to change (most nodes, every time)
        for node in self.nodes.values():
            if node.last_seen > recent:
                continue
            silent = now - node.last_seen
            if node.state != NODE_LOST and silent >= lease:
                if now < self.returning_until and node.name in self.returning:
                    continue  # its agent is still among those coming back after a controller restart
                node.state, node.connected = NODE_LOST, False
                changed.append((node, NODE_LOST))
            elif node.state == NODE_READY and silent >= 2 * interval:
                node.state = NODE_SUSPECT
                changed.append((node, NODE_SUSPECT))
        return changed
