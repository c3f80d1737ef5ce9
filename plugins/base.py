"""The device-plugin interface: static facts, dynamic samples, and the plugin protocol.

Plugins return these plain dataclasses and nothing else (no protobuf, no
OpenTelemetry). A field a device does not support is ``None`` (absent), never 0.
Units are fixed here once: bytes, ratios in 0..1, degrees Celsius, watts,
joules, megahertz, bytes per second.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol, runtime_checkable

ENTRY_POINT_GROUP = "xpud.plugins"


class Health(enum.StrEnum):
    """Health of one device (or of a plugin, for the inventory)."""

    OK = "ok"
    DEGRADED = "degraded"  # works, but something needs attention (XID, ECC, throttling)
    FAILED = "failed"  # unusable: fallen off the bus, plugin crashed or timed out
    UNKNOWN = "unknown"


class PluginUnavailable(Exception):
    """Raised by ``discover`` when the plugin's hardware or library is not on this host.

    This is the normal answer on a machine without that vendor's devices and is
    not an error: the inventory logs it once at info level and goes on.
    """


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """A slice of a physical device that is schedulable on its own (NVIDIA MIG, AMD partitions)."""

    parent_id: str  # DeviceInfo.id of the physical device
    profile: str  # e.g. "1g.10gb"
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Static facts about one device, found once by ``discover``."""

    id: str  # node-unique and stable across restarts: "nvidia:0", "nvidia:0/mig:1", "cpu:0", "sim:3"
    vendor: str  # "nvidia", "amd", "intel", "sim", ...
    kind: str  # "gpu", "cpu", "npu", ...
    model: str
    plugin: str  # name of the plugin that owns the device
    uuid: str | None = None
    index: int | None = None
    memory_total: int | None = None  # bytes
    driver_version: str | None = None
    firmware_version: str | None = None
    compute_capability: str | None = None  # "8.0"
    pci_bus_id: str | None = None
    numa_node: int | None = None
    cores: int | None = None  # CPU logical cores, GPU SMs / CUs where known
    partition: PartitionInfo | None = None  # set for a MIG instance or other slice
    partitionable: bool | None = None  # MIG mode enabled on a physical GPU
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    pid: int
    name: str | None = None
    memory_used: int | None = None  # bytes on this device


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """Something that happened on a device since the previous sample (XID, ECC, lost)."""

    kind: str  # "xid", "ecc", "lost", "plugin", ...
    message: str
    code: int | None = None  # e.g. the XID number
    timestamp: float | None = None  # unix seconds


@dataclass(slots=True)
class DeviceSample:
    """Dynamic state of one device at one instant.

    Slots and a fixed field list keep ``changed_fields`` (the delta the agent
    sends to the controller) a single pass of attribute compares.
    """

    device_id: str
    timestamp: float  # unix seconds
    health: Health = Health.OK
    health_reason: str | None = None
    utilization: float | None = None  # ratio 0..1 of time the device was busy
    memory_utilization: float | None = None  # ratio 0..1 of memory-controller busy time
    memory_used: int | None = None  # bytes
    memory_free: int | None = None  # bytes
    temperature: float | None = None  # Celsius, die/core
    temperature_memory: float | None = None  # Celsius, HBM/DRAM
    power_draw: float | None = None  # watts
    power_limit: float | None = None  # watts
    energy: float | None = None  # joules since driver load (monotonic)
    clock_sm: float | None = None  # MHz (graphics/SM clock, CPU frequency)
    clock_memory: float | None = None  # MHz
    fan_speed: float | None = None  # ratio 0..1 of maximum
    ecc_volatile_corrected: int | None = None
    ecc_volatile_uncorrected: int | None = None
    ecc_aggregate_corrected: int | None = None
    ecc_aggregate_uncorrected: int | None = None
    pcie_tx: float | None = None  # bytes/s
    pcie_rx: float | None = None  # bytes/s
    throttle_reasons: tuple[str, ...] | None = None  # active reasons; () when none
    events: tuple[DeviceEvent, ...] = ()  # since the previous sample
    processes: tuple[ProcessInfo, ...] | None = None
    extra: dict[str, float] = field(default_factory=dict)  # vendor-specific numbers (power rails, EMC)
    # set by the agent's health state machine after sampling, never by a plugin: healthy, suspect, unhealthy,
    # recovering, and why it entered that state
    health_state: str | None = None
    health_state_reason: str | None = None


SAMPLE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(DeviceSample) if f.name not in ("device_id",))


def changed_fields(previous: DeviceSample | None, current: DeviceSample) -> dict[str, Any]:
    """Fields of ``current`` that differ from ``previous`` (all fields when there is none).

    A field that became absent is reported with the value ``None``; events are
    always reported when non-empty since they are per-sample by definition.
    """
    if previous is None:
        return {name: getattr(current, name) for name in SAMPLE_FIELDS}
    delta: dict[str, Any] = {}
    for name in SAMPLE_FIELDS:
        value = getattr(current, name)
        if name == "events":
            if value:
                delta[name] = value
        elif value != getattr(previous, name):
            delta[name] = value
    return delta


@runtime_checkable
class DevicePlugin(Protocol):
    """What every plugin implements. Registered under the ``xpud.plugins`` entry-point group.

    The entry point names a class (or factory) called as ``factory(options)`` with a
    mapping of plugin options from the agent configuration. ``discover`` and
    ``sample`` are blocking and are called off the event loop, one at a time per
    plugin, under a time budget. A simulator may also offer ``inference_check(device_id)
    -> Callable[[], None] | None``: the agent calls the check before each model run on that
    device (from the instance's thread), and it raises as the device's driver would.
    """

    name: ClassVar[str]

    def discover(self) -> list[DeviceInfo]:
        """Static facts of every device; raise ``PluginUnavailable`` when none can exist here."""
        ...

    def sample(self) -> list[DeviceSample]:
        """One sample per discovered device. A device that fails gets a sample with
        ``health=FAILED`` and a reason, never an exception for the whole plugin."""
        ...

    def close(self) -> None:
        """Release vendor libraries and handles."""
        ...


class LogOnce:
    """Logs a warning once per key (device, field), then stays quiet.

    Vendor libraries answer "not supported" for the same field every tick; the
    operator needs to read that once, not every second.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()

    def __call__(self, key: tuple[str, ...], msg: str, *args: object, level: int = logging.WARNING) -> bool:
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
        self._logger.log(level, msg, *args)
        return True

    def seen(self, key: tuple[str, ...]) -> bool:
        return key in self._seen


def option(options: Mapping[str, Any] | None, key: str, default: Any) -> Any:
    """Read a plugin option with a default (options may be None)."""
    if not options:
        return default
    return options.get(key, default)
