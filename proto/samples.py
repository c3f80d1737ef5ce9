"""Wire helpers for telemetry samples: apply a delta to the last full sample a peer holds."""

from __future__ import annotations

from . import telemetry_pb2 as pb

# Message-typed fields are replaced whole by a delta, never merged element by element.
_REPLACED = ("throttle_reasons", "processes")


def apply_delta(base: pb.DeviceSample | None, delta: pb.DeviceSample) -> pb.DeviceSample:
    """The sample a receiver holds after ``delta`` (a full sample replaces everything)."""
    if delta.full or base is None:
        out = pb.DeviceSample()
        out.CopyFrom(delta)
        out.full = True
        del out.cleared[:]
        return out
    out = pb.DeviceSample()
    out.CopyFrom(base)
    for name in delta.cleared:
        out.ClearField(name)
    for field, value in delta.ListFields():
        if field.name in ("cleared", "full"):
            continue
        if field.name in _REPLACED:
            getattr(out, field.name).CopyFrom(value)
        elif field.name == "extra":
            out.extra.clear()
            out.extra.update(value)
        elif field.name == "events":
            pass  # handled below: events belong to one sample
        else:
            setattr(out, field.name, value)
    del out.events[:]
    out.events.extend(delta.events)
    out.full = True
    return out
