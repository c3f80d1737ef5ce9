"""NVIDIA GPUs through NVML: discovery (MIG instances included), samples, health and XID events.

All NVML access goes through :class:`xpud.plugins.nvml.Nvml`: a field the device
cannot answer is ``None`` (logged once), a lost GPU fails only its own samples.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import psutil

from .base import (
    DeviceEvent,
    DeviceInfo,
    DeviceSample,
    Health,
    PartitionInfo,
    PluginUnavailable,
    ProcessInfo,
    option,
)
from .nvml import NOT_AVAILABLE, DeviceLost, Nvml, decode, decode_throttle, handle_key, mig_profile, xid_message

logger = logging.getLogger(__name__)

DEGRADING_THROTTLE = frozenset({"hw_slowdown", "hw_thermal", "hw_power_brake"})
EVENT_SBE, EVENT_DBE, EVENT_XID = 0x1, 0x2, 0x8  # nvmlEventType{SingleBitEccError,DoubleBitEccError,XidCriticalError}
NO_INSTANCE = 0xFFFFFFFF  # gpuInstanceId/computeInstanceId of an event not scoped to a MIG instance
DBE_MESSAGE = "uncorrectable (double-bit) ECC error"
SBE_MESSAGE = "correctable (single-bit) ECC error"
MAX_EVENTS_PER_SAMPLE = 256

_INIT_REASONS = {
    "NVMLError_LibraryNotFound": "NVIDIA driver library libnvidia-ml.so.1 not found",
    "NVMLError_DriverNotLoaded": "NVIDIA driver not loaded",
    "NVMLError_NoPermission": "no permission to access the NVIDIA driver",
    "NVMLError_LibRmVersionMismatch": "NVIDIA driver and NVML library versions differ",
}


def sysfs_numa_node(sysfs_root: str, bus_id: str | None) -> int | None:
    """NUMA node of a PCI device from sysfs; NVML's 8-hex-digit domain is shortened to Linux's 4."""
    if not bus_id or ":" not in bus_id:
        return None
    domain, _, rest = bus_id.lower().partition(":")
    try:
        address = f"{int(domain, 16):04x}:{rest}"
        with open(os.path.join(sysfs_root, "bus", "pci", "devices", address, "numa_node")) as f:
            node = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return node if node >= 0 else None


def _scaled(value: Any, factor: float) -> float | None:
    return None if value is None else float(value) * factor


def _process_name(pid: int) -> str | None:
    try:
        return psutil.Process(pid).name()
    except (psutil.Error, OSError):
        return None


@dataclass(eq=False)
class _Device:
    info: DeviceInfo
    handle: Any
    parent: _Device | None = None
    children: list[_Device] = field(default_factory=list)
    failed_reason: str | None = None  # set once; the device stays FAILED until rediscovery
    lost: bool = False  # failed because NVML reported it lost (emits one "lost" event)
    lost_reported: bool = False
    degraded: tuple[str, ...] = ()  # non-event reasons of the latest sample (MIG children inherit the parent's)


class NvidiaPlugin:
    name: ClassVar[str] = "nvidia"

    def __init__(self, options: Mapping[str, Any] | None = None, *, nvml_module: Any = None) -> None:
        self._nvml = Nvml(nvml_module, logger)
        self._sysfs_root: str = option(options, "sysfs_root", "/sys")
        self._want_pcie: bool = bool(option(options, "pcie_throughput", True))
        self._want_processes: bool = bool(option(options, "processes", True))
        self._want_events: bool = bool(option(options, "events", True))
        self._lock = threading.RLock()
        self._devices: list[_Device] = []
        self._event_set: Any = None
        self._by_handle: dict[Any, _Device] = {}
        self._by_uuid: dict[str, _Device] = {}

    # -- discovery ---------------------------------------------------------------------------------------------
    def discover(self) -> list[DeviceInfo]:
        with self._lock:
            self._free_event_set()
            try:
                m = self._nvml.module
            except ImportError as exc:
                raise PluginUnavailable(f"nvidia-ml-py (pynvml) is not installed ({exc})") from exc
            try:
                self._nvml.init()
                count = int(m.nvmlDeviceGetCount())
            except self._nvml.error("NVMLError") as exc:
                self._nvml.shutdown()
                reason = _INIT_REASONS.get(type(exc).__name__, "NVML initialisation failed")
                raise PluginUnavailable(f"{reason} (NVML: {exc})") from exc
            if count == 0:
                self._nvml.shutdown()
                raise PluginUnavailable("NVML found no NVIDIA GPUs")
            driver = self._nvml.query_any("nvidia", "driver_version", ["nvmlSystemGetDriverVersion"])
            self._devices = []
            for index in range(count):
                gpu = self._discover_gpu(index, driver)
                self._devices += [gpu, *gpu.children]
            gpus = [d for d in self._devices if d.parent is None and d.handle is not None]
            self._by_handle = {handle_key(d.handle): d for d in gpus}
            self._by_uuid = {d.info.uuid: d for d in self._devices if d.info.uuid}
            if self._want_events:
                self._setup_events()
            return [d.info for d in self._devices]

    def _get(self, key: str, fld: str, func: str, *args: Any) -> Any:
        return self._nvml.query_any(key, fld, [func], *args)

    def _discover_gpu(self, index: int, driver: str | None) -> _Device:
        key, m, nv = f"nvidia:{index}", self._nvml.module, self._nvml
        handle, uuid = None, None
        try:
            handle = nv.call(key, "handle", m.nvmlDeviceGetHandleByIndex, index)
            uuid = self._get(key, "uuid", "nvmlDeviceGetUUID", handle)
            name = nv.query(key, "name", m.nvmlDeviceGetName, handle) or "unknown"
            memory = self._get(key, "memory_total", "nvmlDeviceGetMemoryInfo", handle)
            cc = self._get(key, "compute_capability", "nvmlDeviceGetCudaComputeCapability", handle)
            pci = self._get(key, "pci_bus_id", "nvmlDeviceGetPciInfo", handle)
            bus_id = decode(getattr(pci, "busId", None))
            numa = self._get(key, "numa_node", "nvmlDeviceGetNumaNodeId", handle)
            numa = sysfs_numa_node(self._sysfs_root, bus_id) if numa is None else (numa if numa >= 0 else None)
            attrs = self._get(key, "attributes", "nvmlDeviceGetAttributes", handle)
            mig = self._get(key, "mig_mode", "nvmlDeviceGetMigMode", handle)
            info = DeviceInfo(
                id=key, vendor="nvidia", kind="gpu", model=str(name), plugin=self.name, uuid=uuid, index=index,
                memory_total=int(memory.total) if memory is not None else None, driver_version=driver,
                firmware_version=self._get(key, "vbios_version", "nvmlDeviceGetVbiosVersion", handle),
                compute_capability=f"{cc[0]}.{cc[1]}" if cc else None, pci_bus_id=bus_id, numa_node=numa,
                cores=getattr(attrs, "multiprocessorCount", None) or None,
                partitionable=None if mig is None else mig[0] == getattr(m, "NVML_DEVICE_MIG_ENABLE", 1),
            )
            gpu = _Device(info, handle)
            if info.partitionable:
                gpu.children = self._discover_mig(gpu)
            return gpu
        except DeviceLost as exc:
            logger.warning("nvidia:%d is lost at discovery: %s", index, exc.reason)
            reason, lost = exc.reason, True
        except nv.error("NVMLError") as exc:
            logger.warning("nvidia:%d cannot be opened: %s", index, exc)
            reason, lost = f"cannot open GPU (NVML: {exc})", False
        info = DeviceInfo(id=key, vendor="nvidia", kind="gpu", model="unknown", plugin=self.name, uuid=uuid,
                          index=index, driver_version=driver)
        return _Device(info, handle, failed_reason=reason, lost=lost)

    def _discover_mig(self, gpu: _Device) -> list[_Device]:
        m, nv, pkey = self._nvml.module, self._nvml, gpu.info.id
        empty_slot = nv.errors(("NVMLError_NotFound", "NVMLError_InvalidArgument"))
        children: list[_Device] = []
        for slot in range(self._get(pkey, "mig_device_count", "nvmlDeviceGetMaxMigDeviceCount", gpu.handle) or 0):
            try:
                handle = nv.call(pkey, "mig_handle", m.nvmlDeviceGetMigDeviceHandleByIndex, gpu.handle, slot)
            except empty_slot:
                continue
            except nv.error("NVMLError") as exc:
                nv.log_once((pkey, f"mig:{slot}"), "%s: MIG slot %d unreadable (NVML: %s)", pkey, slot, exc)
                continue
            key = f"{pkey}/mig:{slot}"
            memory = self._get(key, "memory_total", "nvmlDeviceGetMemoryInfo", handle)
            attrs = self._get(key, "attributes", "nvmlDeviceGetAttributes", handle)
            profile = "unknown"
            if attrs is not None:
                profile = mig_profile(int(attrs.gpuInstanceSliceCount), int(attrs.computeInstanceSliceCount),
                                      int(attrs.memorySizeMB), gpu.info.memory_total)
            partition = PartitionInfo(
                parent_id=pkey, profile=profile,
                gpu_instance_id=self._get(key, "gpu_instance_id", "nvmlDeviceGetGpuInstanceId", handle),
                compute_instance_id=self._get(key, "compute_instance_id", "nvmlDeviceGetComputeInstanceId", handle),
            )
            p = gpu.info
            info = DeviceInfo(
                id=key, vendor="nvidia", kind="gpu", model=f"{p.model} MIG {profile}", plugin=self.name,
                uuid=self._get(key, "uuid", "nvmlDeviceGetUUID", handle),
                memory_total=int(memory.total) if memory is not None else None, driver_version=p.driver_version,
                firmware_version=p.firmware_version, compute_capability=p.compute_capability,
                pci_bus_id=p.pci_bus_id, numa_node=p.numa_node,
                cores=getattr(attrs, "multiprocessorCount", None) or None, partition=partition,
                extra={"mig_slot": str(slot), **({"parent_uuid": p.uuid} if p.uuid else {})},
            )
            children.append(_Device(info, handle, parent=gpu))
        return children

    # -- XID / ECC events --------------------------------------------------------------------------------------
    def _setup_events(self) -> None:
        m, nv = self._nvml.module, self._nvml
        if not nv.has("nvmlEventSetCreate"):
            nv.log_once(("nvidia", "events"), "NVML bindings have no event sets; XID events are off")
            return
        try:
            event_set = m.nvmlEventSetCreate()
        except nv.error("NVMLError") as exc:
            nv.log_once(("nvidia", "events"), "NVML event set unavailable, XID events are off (NVML: %s)", exc)
            return
        registered = 0
        for gpu in self._devices:
            if gpu.parent is not None or gpu.failed_reason is not None:
                continue
            key = gpu.info.id
            supported = self._get(key, "event_types", "nvmlDeviceGetSupportedEventTypes", gpu.handle)
            mask = (EVENT_XID | EVENT_DBE | EVENT_SBE) & supported if supported is not None else EVENT_XID
            if not mask:
                nv.log_once((key, "events"), "%s: supports no XID/ECC events", key, level=logging.INFO)
                continue
            try:
                nv.call(key, "events", m.nvmlDeviceRegisterEvents, gpu.handle, mask, event_set)
                registered += 1
            except DeviceLost as exc:
                self._mark_failed(gpu, exc.reason, lost=True)
            except nv.error("NVMLError") as exc:
                nv.log_once((key, "events"), "%s: XID events unavailable (NVML: %s)", key, exc, level=logging.INFO)
        self._event_set = event_set
        if not registered:
            self._free_event_set()

    def _free_event_set(self) -> None:
        if self._event_set is None:
            return
        event_set, self._event_set = self._event_set, None
        try:
            self._nvml.module.nvmlEventSetFree(event_set)
        except self._nvml.error("NVMLError") as exc:
            logger.warning("nvmlEventSetFree failed: %s", exc)

    def _drain_events(self, now: float) -> dict[str, list[DeviceEvent]]:
        out: dict[str, list[DeviceEvent]] = defaultdict(list)
        if self._event_set is None:
            return out
        m, nv = self._nvml.module, self._nvml
        wait = getattr(m, "nvmlEventSetWait_v2", None) or m.nvmlEventSetWait
        for _ in range(MAX_EVENTS_PER_SAMPLE):
            try:
                data = wait(self._event_set, 0)
            except nv.error("NVMLError_Timeout"):
                break
            except nv.error("NVMLError") as exc:
                nv.log_once(("nvidia", "event_wait"), "NVML event wait failed (NVML: %s)", exc)
                break
            self._route_event(data, now, out)
        return out

    def _route_event(self, data: Any, now: float, out: dict[str, list[DeviceEvent]]) -> None:
        etype, code = int(data.eventType), int(data.eventData)
        if etype & EVENT_XID:
            event = DeviceEvent(kind="xid", message=xid_message(code), code=code, timestamp=now)
        elif etype & (EVENT_DBE | EVENT_SBE):
            event = DeviceEvent(kind="ecc", message=DBE_MESSAGE if etype & EVENT_DBE else SBE_MESSAGE, timestamp=now)
        else:
            event = DeviceEvent(kind="nvml", message=f"NVML event {etype:#x} ({code})", code=code, timestamp=now)
        gpu = self._by_handle.get(handle_key(data.device))
        if gpu is None:
            try:
                uuid = self._get("nvidia", "event_uuid", "nvmlDeviceGetUUID", data.device)
            except DeviceLost:
                uuid = None
            gpu = self._by_uuid.get(uuid) if uuid else None
        if gpu is None:
            logger.warning("NVML event for an unknown device: %s", event.message)
            return
        out[gpu.info.id].append(event)
        # An event scoped to a MIG instance goes to that instance; one for the whole GPU goes to all of them.
        gi = int(getattr(data, "gpuInstanceId", NO_INSTANCE))
        ci = int(getattr(data, "computeInstanceId", NO_INSTANCE))
        for child in gpu.children:
            part = child.info.partition
            if gi == NO_INSTANCE or (
                part is not None and part.gpu_instance_id == gi and ci in (NO_INSTANCE, part.compute_instance_id)
            ):
                out[child.info.id].append(event)

    # -- sampling ----------------------------------------------------------------------------------------------
    def sample(self) -> list[DeviceSample]:
        with self._lock:
            if not self._devices:
                return []
            now = time.time()
            events = self._drain_events(now)
            return [self._sample_device(dev, now, tuple(events.get(dev.info.id, ()))) for dev in self._devices]

    def _mark_failed(self, dev: _Device, reason: str, *, lost: bool) -> None:
        gpu = dev.parent or dev
        for d in (gpu, *gpu.children):
            if d.failed_reason is None:
                d.failed_reason, d.lost = reason, lost
        logger.warning("%s failed: %s", gpu.info.id, reason)

    def _sample_device(self, dev: _Device, now: float, events: tuple[DeviceEvent, ...]) -> DeviceSample:
        s = DeviceSample(device_id=dev.info.id, timestamp=now, events=events)
        if dev.failed_reason is None:
            try:
                self._read(dev, s)
            except DeviceLost as exc:
                self._mark_failed(dev, exc.reason, lost=True)
        if dev.failed_reason is not None:
            if dev.lost and not dev.lost_reported:
                dev.lost_reported = True
                events += (DeviceEvent(kind="lost", message=dev.failed_reason, timestamp=now),)
            dev.degraded = ()
            return DeviceSample(dev.info.id, now, Health.FAILED, dev.failed_reason, events=events)
        reasons: list[str] = []
        if s.ecc_volatile_uncorrected:
            reasons.append(f"{s.ecc_volatile_uncorrected} uncorrected ECC errors (volatile)")
        reasons += [e.message for e in events if e.kind == "xid" or e.message == DBE_MESSAGE]
        hw = [r for r in s.throttle_reasons or () if r in DEGRADING_THROTTLE]
        if hw:
            reasons.append(f"clocks throttled: {', '.join(hw)}")
        # Events already reach the MIG devices they concern; the parent's counters and throttling apply to all.
        dev.degraded = tuple(r for r in reasons if r not in {e.message for e in events})
        if dev.parent is not None:
            reasons += [f"parent GPU: {r}" for r in dev.parent.degraded]
        if reasons:
            s.health, s.health_reason = Health.DEGRADED, "; ".join(dict.fromkeys(reasons))
        return s

    def _read(self, dev: _Device, s: DeviceSample) -> None:
        m, key, h, get = self._nvml.module, dev.info.id, dev.handle, self._get
        util = get(key, "utilization", "nvmlDeviceGetUtilizationRates", h)
        if util is not None:
            s.utilization, s.memory_utilization = util.gpu / 100, util.memory / 100
        memory = get(key, "memory", "nvmlDeviceGetMemoryInfo", h)
        if memory is not None:
            s.memory_used, s.memory_free = int(memory.used), int(memory.free)
        s.temperature = _scaled(get(key, "temperature", "nvmlDeviceGetTemperature", h,
                                    getattr(m, "NVML_TEMPERATURE_GPU", 0)), 1)
        s.power_draw = _scaled(get(key, "power_draw", "nvmlDeviceGetPowerUsage", h), 1e-3)
        s.power_limit = _scaled(get(key, "power_limit", "nvmlDeviceGetEnforcedPowerLimit", h), 1e-3)
        s.energy = _scaled(get(key, "energy", "nvmlDeviceGetTotalEnergyConsumption", h), 1e-3)
        s.clock_sm = _scaled(get(key, "clock_sm", "nvmlDeviceGetClockInfo", h, getattr(m, "NVML_CLOCK_SM", 1)), 1)
        s.clock_memory = _scaled(get(key, "clock_memory", "nvmlDeviceGetClockInfo", h,
                                     getattr(m, "NVML_CLOCK_MEM", 2)), 1)
        s.fan_speed = _scaled(get(key, "fan_speed", "nvmlDeviceGetFanSpeed", h), 0.01)
        corrected = getattr(m, "NVML_MEMORY_ERROR_TYPE_CORRECTED", 0)
        uncorrected = getattr(m, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1)
        volatile, aggregate = getattr(m, "NVML_VOLATILE_ECC", 0), getattr(m, "NVML_AGGREGATE_ECC", 1)
        for name, etype, counter in (
            ("ecc_volatile_corrected", corrected, volatile),
            ("ecc_volatile_uncorrected", uncorrected, volatile),
            ("ecc_aggregate_corrected", corrected, aggregate),
            ("ecc_aggregate_uncorrected", uncorrected, aggregate),
        ):
            value = get(key, name, "nvmlDeviceGetTotalEccErrors", h, etype, counter)
            setattr(s, name, None if value is None else int(value))
        if self._want_pcie:
            tx = get(key, "pcie_tx", "nvmlDeviceGetPcieThroughput", h, getattr(m, "NVML_PCIE_UTIL_TX_BYTES", 0))
            rx = get(key, "pcie_rx", "nvmlDeviceGetPcieThroughput", h, getattr(m, "NVML_PCIE_UTIL_RX_BYTES", 1))
            s.pcie_tx, s.pcie_rx = _scaled(tx, 1024), _scaled(rx, 1024)  # KB/s -> bytes/s
        mask = self._nvml.query_any(key, "throttle_reasons", [
            "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetCurrentClocksThrottleReasons"], h)
        s.throttle_reasons = None if mask is None else decode_throttle(int(mask))
        if self._want_processes:
            procs = get(key, "processes", "nvmlDeviceGetComputeRunningProcesses", h)
            if procs is not None:
                s.processes = tuple(self._process(p) for p in procs)

    @staticmethod
    def _process(p: Any) -> ProcessInfo:
        used = getattr(p, "usedGpuMemory", None)
        memory = None if used is None or int(used) in NOT_AVAILABLE else int(used)
        return ProcessInfo(pid=int(p.pid), name=_process_name(int(p.pid)), memory_used=memory)

    # -- shutdown ----------------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            if self._nvml.initialized:
                self._free_event_set()
            self._event_set = None
            self._devices, self._by_handle, self._by_uuid = [], {}, {}
            self._nvml.shutdown()
