"""Feasibility filters of the scheduler (the Filter half of a Filter/Score framework).

Each filter looks at one node or one device for one deployment and answers None (fits) or a Rejection: the
phrase a pending reason uses for one device and for many ("is a cpu device (want gpu)" / "are cpu devices
(want gpu)"). Node filters run first (a node that fails rules out all its devices), then device filters, then
the memory filter, whose answer changes as replicas are placed. `displacement` is the stability check: why a
replica already placed must leave its device, or None when it stays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .core import NODE_LOST, NODE_READY, NODE_SUSPECT, DeploymentSpec, DeviceView, NodeView

Rejection = tuple[str, str]  # (phrase for one device, phrase for many)
NodeFilter = Callable[[NodeView, DeploymentSpec, frozenset[str]], Rejection | None]
DeviceFilter = Callable[[DeviceView, DeploymentSpec], Rejection | None]

GiB, MiB = 1 << 30, 1 << 20


def fmt_bytes(n: int) -> str:
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{n} B"


def _want_labels(spec: DeploymentSpec) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(spec.labels.items()))


# --- node filters -----------------------------------------------------------------------------------------------


def node_ready(node: NodeView, spec: DeploymentSpec, draining: frozenset[str]) -> Rejection | None:
    if node.state == NODE_READY:
        return None
    return f"is on a {node.state} node", f"are on {node.state} nodes"


def node_not_cordoned(node: NodeView, spec: DeploymentSpec, draining: frozenset[str]) -> Rejection | None:
    return ("is on a cordoned node", "are on cordoned nodes") if node.cordoned else None


def node_not_draining(node: NodeView, spec: DeploymentSpec, draining: frozenset[str]) -> Rejection | None:
    return ("is on a draining node", "are on draining nodes") if node.name in draining else None


def labels_match(node: NodeView, spec: DeploymentSpec, draining: frozenset[str]) -> Rejection | None:
    if all(node.labels.get(k) == v for k, v in spec.labels.items()):
        return None
    want = _want_labels(spec)
    return f"is on a node without labels {want}", f"are on nodes without labels {want}"


def zone_matches(node: NodeView, spec: DeploymentSpec, draining: frozenset[str]) -> Rejection | None:
    if not spec.zone or node.zone == spec.zone:
        return None
    return f"is outside zone {spec.zone}", f"are outside zone {spec.zone}"


# --- device filters ---------------------------------------------------------------------------------------------


def kind_matches(device: DeviceView, spec: DeploymentSpec) -> Rejection | None:
    if spec.device == "any" or device.kind == spec.device:
        return None
    return f"is a {device.kind} device (want {spec.device})", f"are {device.kind} devices (want {spec.device})"


def runnable(device: DeviceView, spec: DeploymentSpec) -> Rejection | None:
    if device.runnable:
        return None
    return "is not runnable (no ONNX Runtime provider on its node)", "are not runnable (no ONNX Runtime provider)"


def healthy(device: DeviceView, spec: DeploymentSpec) -> Rejection | None:
    """Failed devices, and those the agent judges unhealthy or still recovering, take no new replicas."""
    if device.health == "failed":
        return "has failed", "have failed"
    if device.health_state in ("unhealthy", "recovering"):
        return f"is {device.health_state}", f"are {device.health_state}"
    return None


def model_matches(device: DeviceView, spec: DeploymentSpec) -> Rejection | None:
    """A deployment's class of one device model (`DeploymentSpec.device_model`, the profile preference)."""
    if not spec.device_model or device.model == spec.device_model:
        return None
    return f"is not a {spec.device_model}", f"are not {spec.device_model} devices"


def memory_fits(free: int, spec: DeploymentSpec, most_free: int | None = None) -> Rejection | None:
    if free >= spec.memory_bytes:
        return None
    need = f"need {fmt_bytes(spec.memory_bytes)}"
    if most_free is not None:
        need += f", most free {fmt_bytes(most_free)}"
    return f"has too little free memory ({need})", f"have too little free memory ({need})"


NODE_FILTERS: tuple[NodeFilter, ...] = (node_ready, node_not_cordoned, node_not_draining, labels_match, zone_matches)
DEVICE_FILTERS: tuple[DeviceFilter, ...] = (kind_matches, runnable, healthy, model_matches)
MEMORY_RANK = len(NODE_FILTERS) + len(DEVICE_FILTERS)  # the memory filter comes last

# A rejection tallied by `first_rejection`: (filter rank, one, many); the rank orders equal counts.
Tally = tuple[int, str, str]


def first_node_rejection(node: NodeView, spec: DeploymentSpec, draining: frozenset[str]) -> Tally | None:
    for rank, check in enumerate(NODE_FILTERS):
        if (r := check(node, spec, draining)) is not None:
            return rank, r[0], r[1]
    return None


def first_device_rejection(device: DeviceView, spec: DeploymentSpec) -> Tally | None:
    for rank, check in enumerate(DEVICE_FILTERS, start=len(NODE_FILTERS)):
        if (r := check(device, spec)) is not None:
            return rank, r[0], r[1]
    return None


def explain(rejected: Mapping[Tally, int], total: int, fit: int = 0) -> str:
    """'0/12 devices fit: 8 have too little free memory (need 24.0 GiB), 4 are cpu devices (want gpu)'."""
    if total == 0:
        return "no devices"
    parts = [
        f"{n} {one if n == 1 else many}"
        for (_rank, one, many), n in sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1]))
        if n
    ]
    return f"{fit}/{total} devices fit: " + ", ".join(parts)


# --- stability --------------------------------------------------------------------------------------------------


def displacement(
    node_name: str,
    device_id: str,
    node: NodeView | None,
    device: DeviceView | None,
    spec: DeploymentSpec,
    draining: frozenset[str],
) -> str | None:
    """Why a replica placed on node_name/device_id must leave it, or None when it stays.

    Cordoned and Suspect nodes keep their replicas; Lost, gone and draining ones do not; a device that is
    gone, failed, unhealthy or no longer runnable loses its replicas, and so does one whose node or kind no longer
    satisfies the deployment's labels, zone or device kind. Memory is checked by the caller.
    """
    where = f"{node_name}/{device_id}"
    if node is None:
        return f"node {node_name} gone"
    if node.state == NODE_LOST:
        return f"node {node_name} lost"
    if node.state not in (NODE_READY, NODE_SUSPECT):
        return f"node {node_name} {node.state}"
    if node_name in draining:
        return f"node {node_name} draining"
    if device is None:
        return f"device {where} gone"
    if device.health == "failed":
        return f"device {where} failed"
    if device.health_state == "unhealthy":  # a recovering device keeps what it has: nothing is placed there
        return f"device {where} unhealthy"
    if runnable(device, spec):
        return f"device {where} no longer runnable"
    if kind_matches(device, spec):
        return f"device {where} is {device.kind} (want {spec.device})"
    if labels_match(node, spec, draining):
        return f"node {node_name} no longer has labels {_want_labels(spec)}"
    if zone_matches(node, spec, draining):
        return f"node {node_name} is in zone {node.zone or '(none)'} (want {spec.zone})"
    return None
