"""The controller's live view of the nodes: devices, latest samples, what runs where, link state.

Plain Python and an injectable clock: the link servicer feeds it, the failure
detector ages it, the scheduler reads ``views()``, the router reads ``endpoints()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from xpud.proto import link_pb2 as lpb
from xpud.proto import telemetry_pb2 as tpb
from xpud.proto.samples import apply_delta

from .core import NODE_LOST, NODE_READY, NODE_SUSPECT, DeviceView, NodeView

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
        self.seen(node, wall)

    def seen(self, node: NodeState, wall: float) -> None:
        node.last_seen, node.last_seen_wall = self.clock(), wall
        node.connected = True

    def telemetry(self, node: NodeState, batch: lpb.Telemetry) -> None:
        for sample in batch.samples:
            node.samples[sample.device_id] = apply_delta(node.samples.get(sample.device_id), sample)

    def status(self, node: NodeState, report: lpb.StatusReport) -> None:
        node.instances = {i.deployment: i for i in report.instances}
        node.generation_observed = report.generation

    def views(self) -> list[NodeView]:
        out = []
        for node in sorted(self.nodes.values(), key=lambda n: n.name):
            devices = []
            for d in node.devices.values():
                if d.HasField("partitionable") and d.partitionable:
                    continue  # a GPU in MIG mode is scheduled through its MIG devices
                s = node.samples.get(d.id)
                devices.append(DeviceView(
                    node=node.name, id=d.id, kind=d.kind, memory_total=d.memory_total,
                    runnable=runnable(d, node.providers),
                    health=HEALTH.get(s.health, "unknown") if s is not None else "unknown",
                    memory_used=s.memory_used if s is not None and s.HasField("memory_used") else None,
                    utilization=s.utilization if s is not None and s.HasField("utilization") else None,
                ))
            out.append(NodeView(node.name, node.state, node.cordoned, dict(node.labels), node.zone, tuple(devices)))
        return out

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
