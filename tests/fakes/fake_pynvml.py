"""A fake ``pynvml`` module driven by a JSON scenario (cf. gpustat's NvidiaDriverMock, ray's mock_pynvml).

The exception classes and constants are the REAL ones from nvidia-ml-py, so
``except pynvml.NVMLError_NotSupported`` in plugin code catches what this fake
raises. Scenario keys (see ``scenarios/*.json``):

* ``driver_version``; ``no_driver``: "driver_not_loaded" | "library_not_found" | "no_permission" (nvmlInit fails)
* ``bytes_strings``: return names, UUIDs and versions as ``bytes`` (old bindings)
* ``missing_functions``: NVML functions that raise ``NVMLError_FunctionNotFound`` (an old driver)
* ``absent_functions``: functions the module does not have at all (old bindings; ``hasattr`` is False)
* ``events_supported`` (default true); ``events``: queued ``{"gpu", "type": "xid"|"dbe"|"sbe", "data"}``
* ``sample_marker``: the function whose calls count "sample calls" for ``lost_after_calls``
* ``device_defaults`` merged into every entry of ``devices``. Per device: ``name``, ``uuid``, ``pci_bus_id``,
  ``numa_node``, ``vbios``, ``cuda_cc``, ``sm_count``, ``memory`` {total, used}, ``utilization`` {gpu, memory},
  ``temperature``, ``power_usage_mw``, ``power_limit_mw``, ``energy_mj``, ``clocks`` {sm, mem}, ``fan_percent``,
  ``ecc`` {volatile|aggregate: {corrected, uncorrected}}, ``pcie_kbps`` {tx, rx}, ``clocks_event_reasons``,
  ``processes`` [{pid ("self" = this process), used_memory}], ``supported_event_types``, ``not_supported``
  (function names), ``no_permission`` (function names), ``lost`` (from the start), ``lost_after_calls``,
  ``mig_mode`` [current, pending], ``max_mig_devices``, ``mig_devices`` [{slot, uuid, gpu_instance_id,
  compute_instance_id, gi_slices, ci_slices, sm_count, memory_mb, memory, processes, ...}].

A missing value key means the device does not support that query (``NVMLError_NotSupported``).
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml as _real

SCENARIOS = Path(__file__).parent / "scenarios"
MIB = 1 << 20
EVENT_BITS = {"sbe": 0x1, "dbe": 0x2, "xid": 0x8}
NO_INSTANCE = 0xFFFFFFFF
# What NVML answers for a MIG device handle; everything else raises NotSupported.
MIG_SUPPORTED = frozenset({
    "nvmlDeviceGetUUID", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetAttributes", "nvmlDeviceGetGpuInstanceId",
    "nvmlDeviceGetComputeInstanceId", "nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetName",
})
_NO_DRIVER = {
    "driver_not_loaded": _real.NVMLError_DriverNotLoaded,
    "library_not_found": _real.NVMLError_LibraryNotFound,
    "no_permission": _real.NVMLError_NoPermission,
}
EXPORTS: dict[str, Any] = {
    name: getattr(_real, name)
    for name in dir(_real)
    if name.startswith("NVMLError") or name == "NVMLLibraryMismatchError"
    or (name.startswith(("NVML_", "nvml")) and not callable(getattr(_real, name)))
}


@dataclass(frozen=True)
class FakeHandle:
    index: int
    mig_slot: int | None = None


@dataclass(eq=False)
class FakeEventSet:
    registered: dict[int, int]  # gpu index -> event mask
    freed: bool = False


def _api(func: Callable[..., Any]) -> Callable[..., Any]:
    """Count the call, then apply missing functions, init state, lost GPUs and not-supported lists."""
    name = func.__name__

    @functools.wraps(func)
    def wrapper(self: FakeNvml, *args: Any) -> Any:
        self.calls[name] += 1
        if name in self.missing:
            raise _real.NVMLError_FunctionNotFound()
        if name != "nvmlInit" and not self.initialized:
            raise _real.NVMLError_Uninitialized()
        if args and isinstance(args[0], FakeHandle):
            self._check(args[0], name)
        return func(self, *args)

    return wrapper


class FakeNvml:
    """Module-like: ``fake.nvmlInit()``, ``fake.NVMLError_NotSupported``, ``fake.NVML_CLOCK_SM`` ..."""

    def __init__(self, scenario: dict[str, Any]) -> None:
        self.__dict__.update(EXPORTS)
        self.scenario = copy.deepcopy(scenario)
        defaults = self.scenario.get("device_defaults", {})
        self.devices: list[dict[str, Any]] = [{**copy.deepcopy(defaults), **d} for d in self.scenario["devices"]]
        self.missing: set[str] = set(self.scenario.get("missing_functions", []))
        self.absent: set[str] = set(self.scenario.get("absent_functions", []))
        self.sample_marker: str = self.scenario.get("sample_marker", "nvmlDeviceGetUtilizationRates")
        self.calls: Counter[str] = Counter()
        self.initialized = False
        self.init_count = self.shutdown_count = 0
        self.lost: set[int] = {i for i, d in enumerate(self.devices) if d.get("lost")}
        self.event_sets: list[FakeEventSet] = []
        self.queue: list[dict[str, Any]] = list(self.scenario.get("events", []))
        self._marker_calls: Counter[int] = Counter()

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("nvml") and name in object.__getattribute__(self, "absent"):
            raise AttributeError(name)
        return object.__getattribute__(self, name)

    # -- test controls -----------------------------------------------------------------------------------------
    def lose_gpu(self, index: int) -> None:
        """From now on every call on GPU ``index`` (and its MIG devices) raises NVMLError_GpuIsLost."""
        self.lost.add(index)

    def inject_xid(self, index: int, code: int, gpu_instance_id: int | None = None,
                   compute_instance_id: int | None = None) -> None:
        self.inject_event(index, "xid", code, gpu_instance_id, compute_instance_id)

    def inject_event(self, index: int, kind: str, data: int = 0, gpu_instance_id: int | None = None,
                     compute_instance_id: int | None = None) -> None:
        self.queue.append({"gpu": index, "type": kind, "data": data, "gpu_instance_id": gpu_instance_id,
                           "compute_instance_id": compute_instance_id})

    # -- helpers -----------------------------------------------------------------------------------------------
    def _spec(self, handle: FakeHandle) -> dict[str, Any]:
        dev = self.devices[handle.index]
        if handle.mig_slot is None:
            return dev
        return next(m for m in dev.get("mig_devices", []) if m["slot"] == handle.mig_slot)

    def _check(self, handle: FakeHandle, name: str) -> None:
        gpu = handle.index
        if gpu in self.lost:
            raise _real.NVMLError_GpuIsLost()
        after = self.devices[gpu].get("lost_after_calls")
        if name == self.sample_marker and handle.mig_slot is None and after is not None:
            self._marker_calls[gpu] += 1
            if self._marker_calls[gpu] > after:
                self.lost.add(gpu)
                raise _real.NVMLError_GpuIsLost()
        spec = self._spec(handle)
        if name in spec.get("not_supported", ()) or (handle.mig_slot is not None and name not in MIG_SUPPORTED):
            raise _real.NVMLError_NotSupported()
        if name in spec.get("no_permission", ()):
            raise _real.NVMLError_NoPermission()

    def _value(self, handle: FakeHandle, *path: str) -> Any:
        value: Any = self._spec(handle)
        for key in path:
            if not isinstance(value, dict) or value.get(key) is None:
                raise _real.NVMLError_NotSupported()
            value = value[key]
        return value

    def _str(self, value: str) -> str | bytes:
        return value.encode() if self.scenario.get("bytes_strings") else value

    # -- library -----------------------------------------------------------------------------------------------
    @_api
    def nvmlInit(self) -> None:
        error = _NO_DRIVER.get(self.scenario.get("no_driver") or "")
        if error is not None:
            raise error()
        self.initialized = True
        self.init_count += 1

    @_api
    def nvmlShutdown(self) -> None:
        self.initialized = False
        self.shutdown_count += 1

    @_api
    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        return self._str(self.scenario["driver_version"])

    @_api
    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    @_api
    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        if not 0 <= index < len(self.devices):
            raise _real.NVMLError_InvalidArgument()
        if index in self.lost:
            raise _real.NVMLError_GpuIsLost()
        return FakeHandle(index)

    # -- static facts ------------------------------------------------------------------------------------------
    @_api
    def nvmlDeviceGetName(self, h: FakeHandle) -> str | bytes:
        return self._str(self.devices[h.index]["name"])

    @_api
    def nvmlDeviceGetUUID(self, h: FakeHandle) -> str | bytes:
        return self._str(self._value(h, "uuid"))

    @_api
    def nvmlDeviceGetVbiosVersion(self, h: FakeHandle) -> str | bytes:
        return self._str(self._value(h, "vbios"))

    @_api
    def nvmlDeviceGetCudaComputeCapability(self, h: FakeHandle) -> tuple[int, int]:
        major, minor = self._value(h, "cuda_cc")
        return (major, minor)

    @_api
    def nvmlDeviceGetPciInfo(self, h: FakeHandle) -> SimpleNamespace:
        bus_id = self._value(h, "pci_bus_id")
        domain, bus, rest = bus_id.split(":")
        return SimpleNamespace(busId=bus_id.encode(), busIdLegacy=bus_id[4:].encode(), domain=int(domain, 16),
                               bus=int(bus, 16), device=int(rest.split(".")[0], 16), pciDeviceId=0x20B210DE)

    @_api
    def nvmlDeviceGetNumaNodeId(self, h: FakeHandle) -> int:
        return int(self._value(h, "numa_node"))

    @_api
    def nvmlDeviceGetMemoryInfo(self, h: FakeHandle) -> SimpleNamespace:
        total, used = self._value(h, "memory", "total"), self._value(h, "memory", "used")
        return SimpleNamespace(total=total, used=used, free=total - used)

    @_api
    def nvmlDeviceGetAttributes(self, h: FakeHandle) -> SimpleNamespace:
        spec = self._spec(h)
        mb = spec["memory_mb"] if h.mig_slot is not None else self._value(h, "memory", "total") // MIB
        return SimpleNamespace(multiprocessorCount=self._value(h, "sm_count"), sharedCopyEngineCount=1,
                               sharedDecoderCount=0, sharedEncoderCount=0, sharedJpegCount=0, sharedOfaCount=0,
                               gpuInstanceSliceCount=spec.get("gi_slices", 0),
                               computeInstanceSliceCount=spec.get("ci_slices", 0), memorySizeMB=mb)

    # -- MIG ---------------------------------------------------------------------------------------------------
    @_api
    def nvmlDeviceGetMigMode(self, h: FakeHandle) -> list[int]:
        return list(self._value(h, "mig_mode"))

    @_api
    def nvmlDeviceGetMaxMigDeviceCount(self, h: FakeHandle) -> int:
        mode = self._value(h, "mig_mode")
        return int(self._spec(h).get("max_mig_devices", 7 if mode[0] else 0))

    @_api
    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: FakeHandle, slot: int) -> FakeHandle:
        if h.mig_slot is not None or slot >= self.nvmlDeviceGetMaxMigDeviceCount(h):
            raise _real.NVMLError_InvalidArgument()
        if not any(m["slot"] == slot for m in self.devices[h.index].get("mig_devices", [])):
            raise _real.NVMLError_NotFound()
        return FakeHandle(h.index, slot)

    @_api
    def nvmlDeviceGetGpuInstanceId(self, h: FakeHandle) -> int:
        if h.mig_slot is None:
            raise _real.NVMLError_InvalidArgument()
        return int(self._value(h, "gpu_instance_id"))

    @_api
    def nvmlDeviceGetComputeInstanceId(self, h: FakeHandle) -> int:
        if h.mig_slot is None:
            raise _real.NVMLError_InvalidArgument()
        return int(self._value(h, "compute_instance_id"))

    # -- dynamic values ----------------------------------------------------------------------------------------
    @_api
    def nvmlDeviceGetUtilizationRates(self, h: FakeHandle) -> SimpleNamespace:
        return SimpleNamespace(gpu=self._value(h, "utilization", "gpu"), memory=self._value(h, "utilization", "memory"))

    @_api
    def nvmlDeviceGetTemperature(self, h: FakeHandle, sensor: int) -> int:
        return int(self._value(h, "temperature"))

    @_api
    def nvmlDeviceGetPowerUsage(self, h: FakeHandle) -> int:
        return int(self._value(h, "power_usage_mw"))

    @_api
    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeHandle) -> int:
        return int(self._value(h, "power_limit_mw"))

    @_api
    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeHandle) -> int:
        return int(self._value(h, "energy_mj"))

    @_api
    def nvmlDeviceGetClockInfo(self, h: FakeHandle, clock_type: int) -> int:
        names = {_real.NVML_CLOCK_SM: "sm", _real.NVML_CLOCK_MEM: "mem", _real.NVML_CLOCK_GRAPHICS: "graphics"}
        if clock_type not in names:
            raise _real.NVMLError_InvalidArgument()
        return int(self._value(h, "clocks", names[clock_type]))

    @_api
    def nvmlDeviceGetFanSpeed(self, h: FakeHandle) -> int:
        return int(self._value(h, "fan_percent"))

    @_api
    def nvmlDeviceGetTotalEccErrors(self, h: FakeHandle, error_type: int, counter_type: int) -> int:
        counter = {_real.NVML_VOLATILE_ECC: "volatile", _real.NVML_AGGREGATE_ECC: "aggregate"}[counter_type]
        kind = {_real.NVML_MEMORY_ERROR_TYPE_CORRECTED: "corrected",
                _real.NVML_MEMORY_ERROR_TYPE_UNCORRECTED: "uncorrected"}[error_type]
        return int(self._value(h, "ecc", counter, kind))

    @_api
    def nvmlDeviceGetPcieThroughput(self, h: FakeHandle, counter: int) -> int:
        return int(self._value(h, "pcie_kbps", {_real.NVML_PCIE_UTIL_TX_BYTES: "tx"}.get(counter, "rx")))

    @_api
    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeHandle) -> int:
        return int(self._value(h, "clocks_event_reasons"))

    @_api
    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: FakeHandle) -> int:
        return int(self._value(h, "clocks_event_reasons"))

    @_api
    def nvmlDeviceGetComputeRunningProcesses(self, h: FakeHandle) -> list[SimpleNamespace]:
        spec = self._spec(h)
        if "processes" not in spec:
            raise _real.NVMLError_NotSupported()
        gi, ci = spec.get("gpu_instance_id", NO_INSTANCE), spec.get("compute_instance_id", NO_INSTANCE)
        return [
            SimpleNamespace(pid=os.getpid() if p["pid"] == "self" else int(p["pid"]),
                            usedGpuMemory=p.get("used_memory"), gpuInstanceId=gi, computeInstanceId=ci)
            for p in spec["processes"]
        ]

    # -- events ------------------------------------------------------------------------------------------------
    @_api
    def nvmlDeviceGetSupportedEventTypes(self, h: FakeHandle) -> int:
        return int(self._spec(h).get("supported_event_types", 0xB))

    @_api
    def nvmlEventSetCreate(self) -> FakeEventSet:
        if not self.scenario.get("events_supported", True):
            raise _real.NVMLError_NotSupported()
        event_set = FakeEventSet(registered={})
        self.event_sets.append(event_set)
        return event_set

    @_api
    def nvmlDeviceRegisterEvents(self, h: FakeHandle, mask: int, event_set: FakeEventSet) -> None:
        if h.mig_slot is not None or mask & ~self.nvmlDeviceGetSupportedEventTypes(h):
            raise _real.NVMLError_NotSupported()
        event_set.registered[h.index] = event_set.registered.get(h.index, 0) | mask

    @_api
    def nvmlEventSetWait_v2(self, event_set: FakeEventSet, timeout_ms: int) -> SimpleNamespace:
        return self._next_event(event_set)

    @_api
    def nvmlEventSetWait(self, event_set: FakeEventSet, timeout_ms: int) -> SimpleNamespace:
        return self._next_event(event_set)

    def _next_event(self, event_set: FakeEventSet) -> SimpleNamespace:
        for i, ev in enumerate(self.queue):
            bit = EVENT_BITS[ev["type"]]
            if event_set.registered.get(ev["gpu"], 0) & bit:
                del self.queue[i]
                gi, ci = ev.get("gpu_instance_id"), ev.get("compute_instance_id")
                return SimpleNamespace(device=FakeHandle(ev["gpu"]), eventType=bit, eventData=int(ev.get("data", 0)),
                                       gpuInstanceId=NO_INSTANCE if gi is None else gi,
                                       computeInstanceId=NO_INSTANCE if ci is None else ci)
        raise _real.NVMLError_Timeout()

    @_api
    def nvmlEventSetFree(self, event_set: FakeEventSet) -> None:
        event_set.freed = True


def load_scenario(name_or_path: str | os.PathLike[str], **overrides: Any) -> FakeNvml:
    """A fake module from ``scenarios/<name>.json`` (or a path); ``overrides`` replace top-level keys."""
    path = Path(name_or_path)
    if not path.exists():
        path = SCENARIOS / (path.name if path.suffix == ".json" else f"{path.name}.json")
    scenario = json.loads(path.read_text())
    scenario.update(overrides)
    return FakeNvml(scenario)
