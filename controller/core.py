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
class Rollout:
    """A rolling update in progress (`rollout.py`): the deployment's nodes move from the source model version to
    the spec's one node at a time, each loading the new version beside the old one (or, with no room, after it)."""

    model: str  # the source: what the nodes not yet updated keep serving
    version: str
    target: str  # the version rolled out (resolved: never "" for latest)
    updated: tuple[str, ...] = ()  # nodes given the target, in order
    down: str = ""  # a node whose old version unloads before the target loads there (no room beside it)
    started: float = 0.0  # unix time
    paused: str = ""  # why it waits (no room, a failed load); "" while it moves
    rollback: bool = False  # started by `xpud rollback`


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
    max_unavailable: int = -1  # replicas a rolling update may take down at once; -1: 0 where memory allows, else 1
    rollout: Rollout | None = None  # a rolling update in progress
    previous: tuple[str, ...] = ()  # (model, version) served before the last rollout: what `xpud rollback` restores
    # the auto-rollback guard of the last traffic change (`rollback.py`): the error rate that undoes it (0: none)
    # and the weights it replaced, which it puts back
    auto_rollback_error_rate: float = 0.0
    rollback_traffic: tuple[tuple[str, int], ...] = ()


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
