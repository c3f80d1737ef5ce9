"""The controller's live view of the nodes: devices, latest samples, what runs where, link state.

Plain Python and an injectable clock: the link servicer feeds it, the failure
detector ages it, the scheduler reads ``views()``, the router reads ``endpoints()``.

``views()`` runs on every reconcile, so each node's view is cached and rebuilt only when something the scheduler
reads changed: a Hello (devices, labels, providers), the node's state or cordon, a device's health, or a live
reading that moved by a step (``UTIL_STEP``, ``MEMORY_STEP``), never on every telemetry delta. Live readings
only break ties between devices that fit equally, so a view that lags them by less than a step decides the same.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xpud.proto import link_pb2 as lpb
from xpud.proto import telemetry_pb2 as tpb
from xpud.proto.samples import apply_delta

from .core import NODE_LOST, NODE_READY, NODE_SUSPECT, DeviceView, NodeView

UTIL_STEP = 0.1  # a device's utilization must move this much (0..1) before its node's view is rebuilt
MEMORY_STEP = 16  # ... or its memory in use by 1/MEMORY_STEP of the device's total
Reading = tuple[str, int | None, float | None]  # health, memory_used, utilization: what a DeviceView holds live

HEALTH = {tpb.HEALTH_OK: "ok", tpb.HEALTH_DEGRADED: "degraded", tpb.HEALTH_FAILED: "failed",
          tpb.HEALTH_UNKNOWN: "unknown", tpb.HEALTH_UNSPECIFIED: "unknown"}
GPU_PROVIDERS = {
    "nvidia": ("CUDAExecutionProvider", "TensorrtExecutionProvider"),
    "amd": ("ROCMExecutionProvider", "MIGraphXExecutionProvider"),
}


@dataclass
class NodeState:
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    zone: str = ""
    devices: dict[str, tpb.DeviceInfo] = field(default_factory=dict)
    samples: dict[str, tpb.DeviceSample] = field(default_factory=dict)
    providers: list[str] = field(default_factory=list)
    endpoint: str = ""
    agent_version: str = ""
    incarnation: str = ""
    state: str = NODE_SUSPECT
    cordoned: bool = False
    connected: bool = False
    last_seen: float = 0.0  # controller clock
    last_seen_wall: float = 0.0
    instances: dict[str, lpb.InstanceStatus] = field(default_factory=dict)
    generation_observed: int = 0
    session: Any = None  # the link session pushing this node's desired state
    revision: int = 0  # bumped when what the scheduler sees of this node changed (see the module docstring)
    view: NodeView | None = None  # the cached view, valid while view_key matches (revision, state, cordoned)
    view_key: tuple[int, str, bool] = (-1, "", False)
    readings: dict[str, Reading] = field(default_factory=dict)  # the live readings `view` holds, per device


def reading(sample: tpb.DeviceSample | None) -> Reading:
    if sample is None:
        return "unknown", None, None
    return (HEALTH.get(sample.health, "unknown"),
            sample.memory_used if sample.HasField("memory_used") else None,
            sample.utilization if sample.HasField("utilization") else None)


def moved(held: Reading | None, now: Reading, memory_total: int) -> bool:
    """Has a device's live state moved far enough from what its cached view holds to rebuild the view?"""
    if held is None or held[0] != now[0] or (held[1] is None) != (now[1] is None) \
            or (held[2] is None) != (now[2] is None):
        return True
    if held[1] is not None and now[1] is not None and abs(held[1] - now[1]) * MEMORY_STEP >= memory_total:
        return True
    return held[2] is not None and now[2] is not None and abs(held[2] - now[2]) >= UTIL_STEP


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
    wanted = GPU_PROVIDERS.get(device.vendor, ("CUDAExecutionProvider",))
    return any(p in providers for p in wanted)


class Pool:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.nodes: dict[str, NodeState] = {}
        self._by_name: list[NodeState] = []  # self.nodes sorted by name (nodes are added, never removed)

    def node(self, name: str) -> NodeState:
        if name not in self.nodes:
            self.nodes[name] = NodeState(name)
        return self.nodes[name]

    def hello(self, node: NodeState, hello: lpb.Hello, wall: float) -> None:
        node.labels, node.zone = dict(hello.labels), hello.zone
        node.devices = {d.id: d for d in hello.devices}
        node.samples = {k: v for k, v in node.samples.items() if k in node.devices}
        node.providers = list(hello.execution_providers)
        node.endpoint, node.agent_version, node.incarnation = hello.inference_endpoint, hello.agent_version, \
            hello.incarnation
        node.instances = {i.deployment: i for i in hello.instances}
        node.generation_observed = hello.generation
        node.revision += 1
        self.seen(node, wall)

    def seen(self, node: NodeState, wall: float) -> None:
        node.last_seen, node.last_seen_wall = self.clock(), wall
        node.connected = True

    def telemetry(self, node: NodeState, batch: lpb.Telemetry) -> None:
        for delta in batch.samples:
            sample = node.samples[delta.device_id] = merge_delta(node.samples.get(delta.device_id), delta)
            if node.view_key[0] != node.revision:
                continue  # the view is rebuilt anyway
            device = node.devices.get(delta.device_id)
            if device is not None and moved(node.readings.get(delta.device_id), reading(sample), device.memory_total):
                node.revision += 1

    def status(self, node: NodeState, report: lpb.StatusReport) -> None:
        node.instances = {i.deployment: i for i in report.instances}
        node.generation_observed = report.generation

    def views(self) -> list[NodeView]:
        """Every node's view, sorted by name; only the views whose node changed are rebuilt (O(nodes) compares)."""
        if len(self._by_name) != len(self.nodes):
            self._by_name = sorted(self.nodes.values(), key=lambda n: n.name)
        out = []
        for node in self._by_name:
            key = (node.revision, node.state, node.cordoned)
            if node.view is None or node.view_key != key:
                node.view, node.view_key = self._view(node), key
            out.append(node.view)
        return out

    @staticmethod
    def _view(node: NodeState) -> NodeView:
        devices = []
        node.readings = {}
        for d in node.devices.values():
            if d.HasField("partitionable") and d.partitionable:
                continue  # a GPU in MIG mode is scheduled through its MIG devices
            health, memory_used, utilization = node.readings[d.id] = reading(node.samples.get(d.id))
            devices.append(DeviceView(
                node=node.name, id=d.id, kind=d.kind, memory_total=d.memory_total,
                runnable=runnable(d, node.providers), health=health, memory_used=memory_used,
                utilization=utilization,
            ))
        return NodeView(node.name, node.state, node.cordoned, dict(node.labels), node.zone, tuple(devices))

    def endpoints(self, deployment: str) -> list[str]:
        return sorted(
            n.endpoint for n in self.nodes.values()
            if n.state != NODE_LOST and n.endpoint and deployment in n.instances
            and n.instances[deployment].state == "READY"
        )

    def age(self, interval: float, lease: float) -> list[tuple[NodeState, str]]:
        """Suspect after 2 missed intervals, Lost after the lease; returns the nodes whose state changed."""
        now = self.clock()
        changed = []
        for node in self.nodes.values():
            silent = now - node.last_seen
            if node.state != NODE_LOST and silent >= lease:
                node.state, node.connected = NODE_LOST, False
                changed.append((node, NODE_LOST))
            elif node.state == NODE_READY and silent >= 2 * interval:
                node.state = NODE_SUSPECT
                changed.append((node, NODE_SUSPECT))
        return changed
