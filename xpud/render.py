"""Human-readable and JSON views of devices and samples for the CLI."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from xpud.agent.telemetry.inventory import PluginStatus
from xpud.plugins.base import DeviceInfo, DeviceSample, Health

NA = "n/a"
GIB = 1024**3


def _gib(value: int | None) -> str:
    return NA if value is None else f"{value / GIB:.1f}"


def memory_cell(device: DeviceInfo, sample: DeviceSample | None) -> str:
    used = sample.memory_used if sample else None
    total = device.memory_total
    if used is None and total is None:
        return NA
    return f"{_gib(used)}/{_gib(total)} GiB"


def _pct(value: float | None) -> str:
    return NA if value is None else f"{value * 100:.0f}%"


def _unit(value: float | None, unit: str) -> str:
    return NA if value is None else f"{value:.0f} {unit}"


def health_cell(sample: DeviceSample | None) -> str:
    if sample is None:
        return Health.UNKNOWN.value
    if sample.health is Health.OK:
        return sample.health.value
    return f"{sample.health.value}: {sample.health_reason}" if sample.health_reason else sample.health.value


def device_rows(devices: Sequence[DeviceInfo], samples: Mapping[str, DeviceSample]) -> list[list[str]]:
    rows = []
    for d in devices:
        s = samples.get(d.id)
        power = NA
        if s is not None and s.power_draw is not None:
            power = f"{s.power_draw:.0f}/{s.power_limit:.0f} W" if s.power_limit else f"{s.power_draw:.0f} W"
        rows.append(
            [
                d.id,
                d.vendor,
                d.model,
                memory_cell(d, s),
                _pct(s.utilization if s else None),
                _unit(s.temperature if s else None, "C"),
                power,
                health_cell(s),
            ]
        )
    return rows


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    rows = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def devices_table(devices: Sequence[DeviceInfo], samples: Mapping[str, DeviceSample]) -> str:
    header = ["ID", "VENDOR", "MODEL", "MEMORY USED/TOTAL", "UTIL", "TEMP", "POWER", "HEALTH"]
    return table(header, device_rows(devices, samples))


def plugin_notes(statuses: Iterable[PluginStatus]) -> list[str]:
    return [f"plugin {s.name}: {s.health.value}: {s.reason}" for s in statuses if s.health is Health.FAILED]


def plain(value: Any) -> Any:
    """Dataclasses, enums, tuples and mappings as JSON-ready values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def devices_json(devices: Sequence[DeviceInfo], samples: Mapping[str, DeviceSample]) -> list[dict[str, Any]]:
    out = []
    for d in devices:
        item = plain(d)
        sample = samples.get(d.id)
        item["sample"] = None if sample is None else {k: v for k, v in plain(sample).items() if k != "device_id"}
        out.append(item)
    return out


def message_dict(message: Any) -> dict[str, Any]:
    """A proto message as `--json` prints it: field names as in the .proto, 64-bit integers as numbers (JSON's
    mapping writes them as strings), enums as the tables' words (`HEALTH_OK` -> "ok")."""
    from google.protobuf.json_format import MessageToDict

    out: dict[str, Any] = MessageToDict(message, preserving_proto_field_name=True)
    _numbers(out, message.DESCRIPTOR)
    return out


def _enum_word(enum_type: Any, name: str) -> str:
    """An enum value's name without the prefix every value of its type shares, in lower case."""
    names = [v.name for v in enum_type.values]
    prefix = names[0].rsplit("_", 1)[0] + "_" if names else ""
    while prefix and not all(n.startswith(prefix) for n in names):
        prefix = prefix[:-1].rsplit("_", 1)[0] + "_" if "_" in prefix[:-1] else ""
    return name[len(prefix):].lower() if name.startswith(prefix) else name.lower()


def _numbers(data: dict[str, Any], descriptor: Any) -> None:
    from google.protobuf.descriptor import FieldDescriptor as F

    wide = (F.CPPTYPE_INT64, F.CPPTYPE_UINT64)
    for field in descriptor.fields:
        if field.name not in data:
            continue
        value = data[field.name]
        convert: Any = None
        if field.cpp_type in wide:
            convert = int
        elif field.cpp_type == F.CPPTYPE_ENUM:
            convert = lambda v, t=field.enum_type: _enum_word(t, v) if isinstance(v, str) else v  # noqa: E731
        elif field.cpp_type == F.CPPTYPE_MESSAGE:
            entry = field.message_type
            if entry.GetOptions().map_entry:
                inner = entry.fields_by_name["value"]
                if inner.cpp_type == F.CPPTYPE_MESSAGE:
                    for v in value.values():
                        _numbers(v, inner.message_type)
                elif inner.cpp_type in wide:
                    data[field.name] = {k: int(v) for k, v in value.items()}
                continue
            if entry.full_name.startswith("google.protobuf."):
                continue
            for item in value if isinstance(value, list) else [value]:
                _numbers(item, entry)
            continue
        if convert is not None:
            data[field.name] = [convert(v) for v in value] if isinstance(value, list) else convert(value)
