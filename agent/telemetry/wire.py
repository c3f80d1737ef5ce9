"""Plugin dataclasses -> wire messages (the edge where proto enters the agent)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xpud.plugins.base import (
    SAMPLE_FIELDS,
    DeviceEvent,
    DeviceInfo,
    DeviceSample,
    Health,
    ProcessInfo,
    changed_fields,
)
from xpud.proto import telemetry_pb2 as pb

HEALTH = {
    Health.OK: pb.HEALTH_OK,
    Health.DEGRADED: pb.HEALTH_DEGRADED,
    Health.FAILED: pb.HEALTH_FAILED,
    Health.UNKNOWN: pb.HEALTH_UNKNOWN,
}

HEALTH_STATE = {
    "healthy": pb.DEVICE_HEALTH_HEALTHY,
    "suspect": pb.DEVICE_HEALTH_SUSPECT,
    "unhealthy": pb.DEVICE_HEALTH_UNHEALTHY,
    "recovering": pb.DEVICE_HEALTH_RECOVERING,
}


def device_info_to_proto(d: DeviceInfo) -> pb.DeviceInfo:
    msg = pb.DeviceInfo(id=d.id, vendor=d.vendor, kind=d.kind, model=d.model, plugin=d.plugin, extra=dict(d.extra))
    for name in ("uuid", "index", "memory_total", "driver_version", "firmware_version", "compute_capability",
                 "pci_bus_id", "numa_node", "cores", "partitionable"):
        value = getattr(d, name)
        if value is not None:
            setattr(msg, name, value)
    if d.partition is not None:
        p = d.partition
        msg.partition.parent_id, msg.partition.profile = p.parent_id, p.profile
        if p.gpu_instance_id is not None:
            msg.partition.gpu_instance_id = p.gpu_instance_id
        if p.compute_instance_id is not None:
            msg.partition.compute_instance_id = p.compute_instance_id
    return msg


def _event(e: DeviceEvent) -> pb.DeviceEvent:
    msg = pb.DeviceEvent(kind=e.kind, message=e.message)
    if e.code is not None:
        msg.code = e.code
    if e.timestamp is not None:
        msg.timestamp = e.timestamp
    return msg


def _process(p: ProcessInfo) -> pb.ProcessInfo:
    msg = pb.ProcessInfo(pid=p.pid)
    if p.name is not None:
        msg.name = p.name
    if p.memory_used is not None:
        msg.memory_used = p.memory_used
    return msg


def sample_to_proto(sample: DeviceSample, changed: Mapping[str, Any] | None = None) -> pb.DeviceSample:
    """A full sample (``changed`` None) or a delta holding only ``changed`` (see base.changed_fields)."""
    full = changed is None
    values = {name: getattr(sample, name) for name in SAMPLE_FIELDS} if changed is None else changed
    msg = pb.DeviceSample(device_id=sample.device_id, timestamp=sample.timestamp, full=full)
    for name, value in values.items():
        if name == "timestamp":
            continue
        if value is None:
            if not full:
                msg.cleared.append(name)
        elif name == "health":
            msg.health = HEALTH[value]
        elif name == "health_state":
            msg.health_state = HEALTH_STATE[value]
        elif name == "events":
            msg.events.extend(_event(e) for e in value)
        elif name == "processes":
            msg.processes.SetInParent()
            msg.processes.processes.extend(_process(p) for p in value)
        elif name == "throttle_reasons":
            msg.throttle_reasons.SetInParent()
            msg.throttle_reasons.reasons.extend(value)
        elif name == "extra":
            if value or full:
                msg.extra.update(value)
            else:
                msg.cleared.append("extra")
        else:
            setattr(msg, name, value)
    return msg


def encode_sample(sample: DeviceSample, acknowledged: DeviceSample | None) -> pb.DeviceSample | None:
    """What to send for ``sample`` given what the peer holds: a delta, or a full sample when
    there is nothing to diff against or most fields changed (a full one is then no bigger);
    None when nothing but the timestamp moved."""
    if acknowledged is None:
        return sample_to_proto(sample)
    changed = changed_fields(acknowledged, sample)
    if not changed.keys() - {"timestamp"}:
        return None
    if len(changed) > len(SAMPLE_FIELDS) // 2:
        return sample_to_proto(sample)
    return sample_to_proto(sample, changed)
