"""Builders for the scheduler's tests: nodes of recorded hardware shapes, deployments, replicas."""

from __future__ import annotations

from typing import Any

from xpud.controller.core import Decision, DeploymentSpec, DeviceView, NodeView, Replica

GiB = 1 << 30

# One JSON-like fixture per hardware shape: (device id, kind, memory in GiB).
SHAPES: dict[str, list[dict[str, Any]]] = {
    "dgx-a100": [{"id": f"nvidia:{i}", "kind": "gpu", "memory": 80} for i in range(8)],
    "cpu-only": [{"id": "cpu:0", "kind": "cpu", "memory": 64}],
    "jetson-orin": [{"id": "jetson:0", "kind": "gpu", "memory": 32}, {"id": "cpu:0", "kind": "cpu", "memory": 8}],
    "one-gpu": [{"id": "nvidia:0", "kind": "gpu", "memory": 80}],
    "two-gpu": [{"id": f"nvidia:{i}", "kind": "gpu", "memory": 80} for i in range(2)],
    "gpu-and-cpu": [{"id": "nvidia:0", "kind": "gpu", "memory": 24}, {"id": "cpu:0", "kind": "cpu", "memory": 64}],
}


def node(name: str, shape: str = "one-gpu", devices: dict[str, dict[str, Any]] | None = None, **kw: Any) -> NodeView:
    """A node of one shape; `devices` overrides fields of single devices by id (utilization, health, ...)."""
    devs = []
    for d in SHAPES[shape]:
        extra = dict((devices or {}).get(d["id"], {}))
        memory = extra.pop("memory", d["memory"])
        devs.append(DeviceView(name, d["id"], d["kind"], int(memory * GiB), **extra))
    return NodeView(name, devices=tuple(devs), **kw)


def dep(name: str = "m", replicas: int = 1, gib: float = 10, **kw: Any) -> DeploymentSpec:
    return DeploymentSpec(name, model=name, version="1", replicas=replicas, memory_bytes=int(gib * GiB), **kw)


def where(decision: Decision, name: str) -> list[tuple[int, str]]:
    return [(r.index, f"{r.node}/{r.device}") for r in decision.replicas[name]]


def rep(d: DeploymentSpec, index: int, at: str) -> Replica:
    n, dev = at.split("/")
    return Replica(d.name, index, n, dev, d.memory_bytes)
