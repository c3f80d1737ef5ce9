"""Plain types of the control plane's core: what the scheduler reads and what it decides.

No I/O, no clock, no protobuf: the link and admin servicers convert at the edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

NODE_READY, NODE_SUSPECT, NODE_LOST = "Ready", "Suspect", "Lost"
DEVICE_KINDS = ("gpu", "cpu", "any")
STRATEGIES = ("binpack", "spread")


@dataclass(frozen=True)
class DeviceView:
    """One device of one node as the scheduler sees it."""

    node: str
    id: str  # node-unique device id ("nvidia:0", "sim:1", "cpu:0")
    kind: str  # "gpu" | "cpu" | ...
    memory_total: int  # bytes
    runnable: bool = True  # the node can run ONNX Runtime on it (a GPU EP for a GPU, or a simulated device)
    health: str = "ok"  # ok, degraded, failed, unknown
    health_state: str = "healthy"  # the agent's judgement: healthy, suspect, unhealthy, recovering
    memory_used: int | None = None  # live reading, bytes
    utilization: float | None = None  # live reading, 0..1
    model: str = ""  # the device model its plugin names ("NVIDIA H100 80GB HBM3"): what placement profiles key on


@dataclass(frozen=True)
class NodeView:
    name: str
    state: str = NODE_READY  # Ready, Suspect, Lost
    cordoned: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    zone: str = ""
    devices: tuple[DeviceView, ...] = ()


@dataclass(frozen=True)
class DeploymentSpec:
    name: str
    model: str
    version: str
    replicas: int
    memory_bytes: int  # per replica (already estimated when the user gave none)
    device: str = "any"  # gpu, cpu, any
    priority: int = 0  # higher first; may preempt lower ones when nothing fits
    labels: Mapping[str, str] = field(default_factory=dict)
    zone: str = ""
    device_model: str = ""  # only devices of this model (set by the scheduler on a class of its own, `profiles`)
    strategy: str = "binpack"  # binpack or spread
    max_batch_size: int = 0
    # (version, percent) per served version, summing to 100 (`traffic.py`); empty: `version` alone, at 100
    traffic: tuple[tuple[str, int], ...] = ()
    max_inflight: int = 0  # requests in flight per ready replica through the router; beyond: its queue. 0: no bound


@dataclass(frozen=True)
class Replica:
    """One replica of a deployment placed on one device."""

    deployment: str
    index: int
    node: str
    device: str
    memory: int


@dataclass
class Decision:
    """What the scheduler decided: every replica's device, what is pending and why, what was evicted."""

    replicas: dict[str, list[Replica]] = field(default_factory=dict)  # deployment -> placed replicas
    pending: dict[str, str] = field(default_factory=dict)  # deployment -> why (some) replicas have no device
    preempted: list[tuple[str, str]] = field(default_factory=list)  # (deployment, reason) evicted for a higher one
    moved: list[tuple[str, str]] = field(default_factory=list)  # (deployment, reason) re-placed elsewhere
