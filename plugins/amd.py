"""AMD GPU plugin built on ROCm's ``amdsmi`` Python package.

Every library call goes through :meth:`AmdPlugin._call`, which turns an
``AmdSmiException`` (not supported, busy, no permission), an ``AttributeError``
(function or enum absent in an older amdsmi) or any other vendor error into
``None`` and logs it once per (device, field). amdsmi's ``"N/A"`` strings and
max-uint sentinels become ``None`` as well.

Units from amdsmi (ROCm 6.x, Linux bare metal): activity in percent, power in W
(``power_limit`` is in uW on some releases, detected by magnitude), VRAM usage in
MB but ``amdsmi_get_gpu_memory_total/usage`` in bytes, clocks in MHz, temperature
in Celsius (millidegrees on early releases, detected by magnitude), energy as
ticks times ``counter_resolution`` microjoules.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Mapping
from types import ModuleType
from typing import Any, ClassVar

from .base import DeviceInfo, DeviceSample, Health, LogOnce, PluginUnavailable, ProcessInfo, option

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
_SENTINELS = {0xFFFF, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF}
_MISSING = object()  # an enum member this amdsmi does not have


def _clean(value: Any) -> Any:
    """amdsmi's "N/A" strings and max-uint placeholders -> None, recursively in dicts and lists."""
    if isinstance(value, str):
        return None if value.strip().upper() in ("N/A", "NA", "") else value
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return None if value in _SENTINELS else value
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _ratio(percent: Any) -> float | None:
    v = _num(percent)
    return None if v is None else min(max(v / 100.0, 0.0), 1.0)


def _first(d: Mapping[str, Any], *keys: str) -> Any:
    return next((d[k] for k in keys if d.get(k) is not None), None)


def _watts(value: Any) -> float | None:
    v = _num(value)
    if v is None:
        return None
    return v / 1e6 if v >= 1e5 else v  # no GPU draws 100 kW: a value that large is microwatts


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class AmdPlugin:
    name: ClassVar[str] = "amd"

    def __init__(self, options: Mapping[str, Any] | None = None, *, amdsmi_module: ModuleType | Any = None) -> None:
        self._smi: Any = amdsmi_module
        self._pcie = bool(option(options, "pcie_throughput", False))  # the driver read blocks for 1 s
        self._processes = bool(option(options, "processes", True))
        self._log_once = LogOnce(logger)
        self._initialized = False
        self._handles: list[Any] = []
        self._infos: list[DeviceInfo] = []
        self._ok = 0
        self._failed = 0
        self._last_error: str | None = None

    # ---- library plumbing ------------------------------------------------------------------

    def _enum(self, cls: str, *members: str) -> Any:
        holder = getattr(self._smi, cls, None)
        for member in members:
            if holder is not None and hasattr(holder, member):
                return getattr(holder, member)
        return _MISSING

    def _call(self, index: int, field: str, fn: str, *args: Any) -> Any:
        """Call ``amdsmi.<fn>(*args)``; any failure -> None, logged once per (device, field)."""
        dev = f"amd:{index}"
        if any(a is _MISSING for a in args):
            self._log_once((dev, field), "amd: %s: enum for %s missing in this amdsmi; absent", dev, field)
            return None
        try:
            result = getattr(self._smi, fn)(*args)
        except AttributeError as exc:
            self._log_once((dev, field), "amd: %s: %s unavailable in this amdsmi (%s); %s absent", dev, fn, exc, field)
            return None
        except Exception as exc:  # AmdSmiException (not supported, busy, permission) or any vendor error
            self._failed += 1
            self._last_error = f"{fn}: {_one_line(exc)}"
            self._log_once((dev, field), "amd: %s: %s failed: %s; %s absent", dev, fn, _one_line(exc), field)
            return None
        self._ok += 1
        return _clean(result)

    def _dict(self, index: int, field: str, fn: str, *args: Any) -> dict[str, Any]:
        result = self._call(index, field, fn, *args)
        return result if isinstance(result, dict) else {}

    # ---- discovery -------------------------------------------------------------------------

    def discover(self) -> list[DeviceInfo]:
        if self._smi is None:
            try:
                self._smi = importlib.import_module("amdsmi")
            except Exception as exc:  # ImportError, or OSError when libamd_smi.so is missing
                raise PluginUnavailable(f"amdsmi Python package not usable: {_one_line(exc)}") from exc
        if not self._initialized:
            flag = self._enum("AmdSmiInitFlags", "INIT_AMD_GPUS")
            try:
                self._smi.amdsmi_init() if flag is _MISSING else self._smi.amdsmi_init(flag)
            except Exception as exc:
                raise PluginUnavailable(f"amdsmi_init failed (no amdgpu driver?): {_one_line(exc)}") from exc
            self._initialized = True
        try:
            self._handles = list(self._smi.amdsmi_get_processor_handles())
        except Exception as exc:
            self.close()
            raise PluginUnavailable(f"amdsmi cannot list GPUs: {_one_line(exc)}") from exc
        if not self._handles:
            self.close()
            raise PluginUnavailable("amdsmi found no AMD GPUs")
        self._infos = [self._info(i, h) for i, h in enumerate(self._handles)]
        return list(self._infos)

    def _info(self, i: int, h: Any) -> DeviceInfo:
        asic = self._dict(i, "asic_info", "amdsmi_get_gpu_asic_info", h)
        model = asic.get("market_name")
        if not model:
            model = self._dict(i, "board_info", "amdsmi_get_gpu_board_info", h).get("product_name")
        driver = self._dict(i, "driver_version", "amdsmi_get_gpu_driver_info", h)
        vbios = self._dict(i, "firmware_version", "amdsmi_get_gpu_vbios_info", h)
        total = self._call(i, "memory_total", "amdsmi_get_gpu_memory_total", h, self._enum("AmdSmiMemoryType", "VRAM"))
        if total is None:
            mb = _num(self._dict(i, "memory_total", "amdsmi_get_gpu_vram_usage", h).get("vram_total"))
            total = None if mb is None else int(mb * MIB)
        numa = self._call(i, "numa_node", "amdsmi_topo_get_numa_node_number", h)
        cus = _first(asic, "num_compute_units", "num_of_compute_units")
        extra = {
            k: str(v)
            for k, v in (
                ("device_id", asic.get("device_id")),
                ("rev_id", asic.get("rev_id")),
                ("gfx_target", asic.get("target_graphics_version")),
                ("driver_name", driver.get("driver_name")),
            )
            if v is not None
        }
        return DeviceInfo(
            id=f"amd:{i}",
            vendor="amd",
            kind="gpu",
            model=str(model or "AMD GPU"),
            plugin=self.name,
            uuid=self._call(i, "uuid", "amdsmi_get_gpu_device_uuid", h),
            index=i,
            memory_total=int(total) if total is not None else None,
            driver_version=driver.get("driver_version"),
            firmware_version=_first(vbios, "version", "vbios_version_string", "vbios_version"),
            pci_bus_id=self._call(i, "pci_bus_id", "amdsmi_get_gpu_device_bdf", h),
            numa_node=int(numa) if isinstance(numa, int) and numa >= 0 else None,
            cores=int(cus) if isinstance(cus, int) else None,
            extra=extra,
        )

    # ---- sampling --------------------------------------------------------------------------

    def sample(self) -> list[DeviceSample]:
        return [self._sample_one(i, h) for i, h in enumerate(self._handles)]

    def _sample_one(self, i: int, h: Any) -> DeviceSample:
        self._ok, self._failed, self._last_error = 0, 0, None
        s = DeviceSample(device_id=f"amd:{i}", timestamp=time.time())
        act = self._dict(i, "utilization", "amdsmi_get_gpu_activity", h)
        s.utilization = _ratio(act.get("gfx_activity"))
        s.memory_utilization = _ratio(act.get("umc_activity"))

        vram = self._enum("AmdSmiMemoryType", "VRAM")
        used = _num(self._call(i, "memory_used", "amdsmi_get_gpu_memory_usage", h, vram))
        total = self._infos[i].memory_total if i < len(self._infos) else None
        if used is None:
            usage = self._dict(i, "memory_used", "amdsmi_get_gpu_vram_usage", h)
            mb_used, mb_total = _num(usage.get("vram_used")), _num(usage.get("vram_total"))
            used = None if mb_used is None else mb_used * MIB
            total = total if mb_total is None else int(mb_total * MIB)
        if used is not None:
            s.memory_used = int(used)
            s.memory_free = max(int(total) - int(used), 0) if total is not None else None

        self._temperatures(i, h, s)
        power = self._dict(i, "power_draw", "amdsmi_get_power_info", h)
        s.power_draw = _num(_first(power, "current_socket_power", "socket_power", "average_socket_power"))
        s.power_limit = _watts(power.get("power_limit"))
        if s.power_limit is None:
            s.power_limit = _watts(self._dict(i, "power_limit", "amdsmi_get_power_cap_info", h).get("power_cap"))
        energy = self._dict(i, "energy", "amdsmi_get_energy_count", h)
        ticks, resolution = _num(_first(energy, "energy_accumulator", "power")), _num(energy.get("counter_resolution"))
        if ticks is not None and resolution is not None:
            s.energy = ticks * resolution / 1e6  # counter_resolution is microjoules per tick

        gfx = self._dict(i, "clock_sm", "amdsmi_get_clock_info", h, self._enum("AmdSmiClkType", "GFX"))
        s.clock_sm = _num(_first(gfx, "clk", "cur_clk"))
        mem = self._dict(i, "clock_memory", "amdsmi_get_clock_info", h, self._enum("AmdSmiClkType", "MEM"))
        s.clock_memory = _num(_first(mem, "clk", "cur_clk"))

        speed = _num(self._call(i, "fan_speed", "amdsmi_get_gpu_fan_speed", h, 0))
        top = _num(self._call(i, "fan_speed", "amdsmi_get_gpu_fan_speed_max", h, 0)) if speed is not None else None
        if speed is not None and top:
            s.fan_speed = min(max(speed / top, 0.0), 1.0)

        ecc = self._dict(i, "ecc", "amdsmi_get_gpu_total_ecc_count", h)
        corrected, uncorrected = ecc.get("correctable_count"), ecc.get("uncorrectable_count")
        s.ecc_volatile_corrected = int(corrected) if isinstance(corrected, int) else None
        s.ecc_volatile_uncorrected = int(uncorrected) if isinstance(uncorrected, int) else None
        if isinstance(ecc.get("deferred_count"), int):
            s.extra["ecc.deferred"] = float(ecc["deferred_count"])

        if self._pcie:
            pci = self._dict(i, "pcie", "amdsmi_get_gpu_pci_throughput", h)
            size = _num(pci.get("max_pkt_sz"))
            sent, received = _num(pci.get("sent")), _num(pci.get("received"))
            s.pcie_tx = sent * size if sent is not None and size is not None else None  # packets/s * bytes
            s.pcie_rx = received * size if received is not None and size is not None else None
        if self._processes:
            s.processes = self._process_list(i, h)

        if self._failed and not self._ok:
            s.health, s.health_reason = Health.FAILED, f"every amdsmi call failed; last: {self._last_error}"
        elif s.ecc_volatile_uncorrected:
            s.health, s.health_reason = Health.DEGRADED, f"{s.ecc_volatile_uncorrected} uncorrectable ECC errors"
        return s

    def _temperatures(self, i: int, h: Any, s: DeviceSample) -> None:
        current = self._enum("AmdSmiTemperatureMetric", "CURRENT")

        def read(field: str, *sensor: str) -> float | None:
            value = _num(
                self._call(i, field, "amdsmi_get_temp_metric", h, self._enum("AmdSmiTemperatureType", *sensor), current)
            )
            if value is None:
                return None
            return value / 1000.0 if value > 1000 else value  # early amdsmi reported millidegrees

        edge, hotspot = read("temperature", "EDGE"), read("temp.hotspot", "HOTSPOT", "JUNCTION")
        s.temperature = edge if edge is not None else hotspot  # MI300 has no edge sensor
        if hotspot is not None:
            s.extra["temp.hotspot"] = hotspot
        s.temperature_memory = read("temperature_memory", "VRAM", "HBM_0")

    def _process_list(self, i: int, h: Any) -> tuple[ProcessInfo, ...] | None:
        procs = self._call(i, "processes", "amdsmi_get_gpu_process_list", h)
        if not isinstance(procs, list):
            return None
        out = []
        for p in procs:
            info = p if isinstance(p, dict) else self._dict(i, "processes", "amdsmi_get_gpu_process_info", h, p)
            pid = info.get("pid")
            if not isinstance(pid, int):
                continue
            usage = info.get("memory_usage")
            mem = _num(usage.get("vram_mem") if isinstance(usage, dict) else None)
            mem = mem if mem is not None else _num(info.get("mem"))
            out.append(
                ProcessInfo(pid=pid, name=info.get("name") or None, memory_used=None if mem is None else int(mem))
            )
        return tuple(out)

    def close(self) -> None:
        if self._initialized and self._smi is not None:
            try:
                self._smi.amdsmi_shut_down()
            except Exception as exc:
                logger.debug("amd: amdsmi_shut_down failed: %s", _one_line(exc))
        self._initialized = False
        self._handles = []
