"""AmdPlugin against a fake ``amdsmi`` module (no AMD GPU or ROCm needed)."""

from __future__ import annotations

import enum
import logging
import sys
from typing import Any

import pytest

from xpud.plugins.amd import AmdPlugin
from xpud.plugins.base import Health, PluginUnavailable

GIB = 1024**3
MIB = 1024**2
LOGGER = "xpud.plugins.amd"
NOT_SUPPORTED = 2


class AmdSmiException(Exception):
    pass


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, err_code: int, info: str = "AMDSMI_STATUS_NOT_SUPPORTED") -> None:
        self.err_code = err_code
        super().__init__(f"Error code:\n\t{err_code} | {info}")


class AmdSmiInitFlags(enum.IntEnum):
    INIT_AMD_GPUS = 2


class AmdSmiMemoryType(enum.IntEnum):
    VRAM = 0
    VIS_VRAM = 1
    GTT = 2


class AmdSmiTemperatureType(enum.IntEnum):
    EDGE = 0
    HOTSPOT = 1
    JUNCTION = 1
    VRAM = 2


class AmdSmiTemperatureMetric(enum.IntEnum):
    CURRENT = 0
    MAX = 1


class AmdSmiClkType(enum.IntEnum):
    GFX = 0
    MEM = 5


class Handle:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeAmdSmi:
    """Only what the plugin uses. ``amdsmi_get_gpu_memory_usage`` is deliberately missing (older amdsmi)."""

    AmdSmiException = AmdSmiException
    AmdSmiLibraryException = AmdSmiLibraryException
    AmdSmiInitFlags = AmdSmiInitFlags
    AmdSmiMemoryType = AmdSmiMemoryType
    AmdSmiTemperatureType = AmdSmiTemperatureType
    AmdSmiTemperatureMetric = AmdSmiTemperatureMetric
    AmdSmiClkType = AmdSmiClkType

    def __init__(self, devices: dict[Handle, dict[str, Any]], init_error: Exception | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.init_args: list[tuple[Any, ...]] = []
        self.shutdowns = 0
        self.calls: list[str] = []

    def _get(self, handle: Handle, key: str) -> Any:
        self.calls.append(key)
        dev = self.devices[handle]
        if dev.get("dead"):
            raise AmdSmiLibraryException(48, "AMDSMI_STATUS_DRIVER_NOT_LOADED")
        value = dev.get(key, AmdSmiLibraryException(NOT_SUPPORTED))
        if isinstance(value, Exception):
            raise value
        return value

    def amdsmi_init(self, *flags: Any) -> None:
        self.init_args.append(flags)
        if self.init_error is not None:
            raise self.init_error

    def amdsmi_shut_down(self) -> None:
        self.shutdowns += 1

    def amdsmi_get_processor_handles(self) -> list[Handle]:
        return list(self.devices)

    def amdsmi_get_gpu_asic_info(self, h: Handle) -> Any:
        return self._get(h, "asic")

    def amdsmi_get_gpu_board_info(self, h: Handle) -> Any:
        return self._get(h, "board")

    def amdsmi_get_gpu_device_uuid(self, h: Handle) -> Any:
        return self._get(h, "uuid")

    def amdsmi_get_gpu_device_bdf(self, h: Handle) -> Any:
        return self._get(h, "bdf")

    def amdsmi_get_gpu_driver_info(self, h: Handle) -> Any:
        return self._get(h, "driver")

    def amdsmi_get_gpu_vbios_info(self, h: Handle) -> Any:
        return self._get(h, "vbios")

    def amdsmi_get_gpu_memory_total(self, h: Handle, kind: enum.IntEnum) -> Any:
        assert kind is AmdSmiMemoryType.VRAM
        return self._get(h, "memory_total")

    def amdsmi_get_gpu_vram_usage(self, h: Handle) -> Any:
        return self._get(h, "vram_usage")

    def amdsmi_topo_get_numa_node_number(self, h: Handle) -> Any:
        return self._get(h, "numa")

    def amdsmi_get_gpu_activity(self, h: Handle) -> Any:
        return self._get(h, "activity")

    def amdsmi_get_temp_metric(self, h: Handle, sensor: enum.IntEnum, metric: Any) -> Any:
        assert metric is AmdSmiTemperatureMetric.CURRENT
        return self._get(h, f"temp.{sensor.name}")

    def amdsmi_get_power_info(self, h: Handle) -> Any:
        return self._get(h, "power")

    def amdsmi_get_power_cap_info(self, h: Handle) -> Any:
        return self._get(h, "power_cap")

    def amdsmi_get_energy_count(self, h: Handle) -> Any:
        return self._get(h, "energy")

    def amdsmi_get_clock_info(self, h: Handle, clk: enum.IntEnum) -> Any:
        return self._get(h, f"clock.{clk.name}")

    def amdsmi_get_gpu_fan_speed(self, h: Handle, sensor: int) -> Any:
        return self._get(h, "fan")

    def amdsmi_get_gpu_fan_speed_max(self, h: Handle, sensor: int) -> Any:
        return self._get(h, "fan_max")

    def amdsmi_get_gpu_total_ecc_count(self, h: Handle) -> Any:
        return self._get(h, "ecc")

    def amdsmi_get_gpu_pci_throughput(self, h: Handle) -> Any:
        return self._get(h, "pci")

    def amdsmi_get_gpu_process_list(self, h: Handle) -> Any:
        return self._get(h, "processes")

    def amdsmi_get_gpu_process_info(self, h: Handle, p: Any) -> Any:
        return self._get(h, f"process.{p}")


def _mi300x() -> dict[str, Any]:
    return {
        "asic": {
            "market_name": "AMD Instinct MI300X",
            "device_id": "0x74a1",
            "rev_id": "0x00",
            "num_compute_units": 304,
            "target_graphics_version": "gfx942",
        },
        "uuid": "1fff74a1-0000-1000-80a4-d9b0f8e3e5b1",
        "bdf": "0000:0c:00.0",
        "driver": {"driver_name": "amdgpu", "driver_version": "6.7.0"},
        "vbios": {"version": "113-M3000100-102", "name": "AMD MI300X"},
        "memory_total": 192 * GIB,
        "vram_usage": {"vram_total": 196608, "vram_used": 1024},  # MB
        "numa": 0,
        "activity": {"gfx_activity": 37, "umc_activity": 12, "mm_activity": "N/A"},
        # temp.EDGE missing -> not supported (MI300 has no edge sensor)
        "temp.HOTSPOT": 52,
        "temp.VRAM": 45,
        "power": {
            "socket_power": 310,
            "current_socket_power": 310,
            "average_socket_power": "N/A",
            "gfx_voltage": "N/A",
            "power_limit": 750_000_000,  # uW on this release
        },
        "energy": {"energy_accumulator": 1_000_000, "counter_resolution": 15.3, "timestamp": 1},
        "clock.GFX": {"clk": 2100, "min_clk": 500, "max_clk": 2100, "clk_locked": False, "clk_deep_sleep": False},
        "clock.MEM": {"clk": 1300, "min_clk": 900, "max_clk": 1300},
        # fan missing -> not supported (passively cooled)
        "ecc": {"correctable_count": 3, "uncorrectable_count": 0, "deferred_count": 1},
        "pci": {"sent": 1000, "received": 2000, "max_pkt_sz": 256},
        "processes": [
            {
                "name": "python3",
                "pid": 4242,
                "mem": 1,
                "memory_usage": {"gtt_mem": 0, "cpu_mem": 0, "vram_mem": 8 * GIB},
            }
        ],
    }


def _w7900() -> dict[str, Any]:
    """An older amdsmi on a Radeon: old clock key, W limits, millidegree edge, process handles."""
    return {
        "asic": {"market_name": "N/A", "device_id": 0x7448, "rev_id": 0, "num_of_compute_units": 96},
        "board": {"product_name": "Radeon PRO W7900"},
        "uuid": "N/A",
        "bdf": "0000:03:00.0",
        "driver": {"driver_name": "amdgpu", "driver_version": "6.3.6"},
        "vbios": {"vbios_version_string": "113-D7070100-100"},
        "memory_total": AmdSmiLibraryException(NOT_SUPPORTED),
        "vram_usage": {"vram_total": 49152, "vram_used": 2048},
        "numa": -1,
        "activity": {"gfx_activity": 100, "umc_activity": "N/A"},
        "temp.EDGE": 40000,
        "temp.HOTSPOT": 0xFFFF,
        "power": {"current_socket_power": "N/A", "average_socket_power": 55, "power_limit": 241},
        "clock.GFX": {"cur_clk": 1800},
        "fan": 51,
        "fan_max": 255,
        "ecc": {"correctable_count": 0, "uncorrectable_count": 2},
        "processes": [7],
        "process.7": {"name": "N/A", "pid": 777, "memory_usage": {"vram_mem": 512 * MIB}},
    }


def _fake(dead: bool = True) -> FakeAmdSmi:
    devices = {Handle("mi300x"): _mi300x(), Handle("w7900"): _w7900()}
    if dead:
        devices[Handle("dead")] = {"dead": True}
    return FakeAmdSmi(devices)


def test_discover_static_facts() -> None:
    fake = _fake()
    plugin = AmdPlugin(amdsmi_module=fake)
    infos = plugin.discover()
    assert fake.init_args == [(AmdSmiInitFlags.INIT_AMD_GPUS,)]
    assert [i.id for i in infos] == ["amd:0", "amd:1", "amd:2"]
    a, b, dead = infos
    assert (a.vendor, a.kind, a.plugin, a.index) == ("amd", "gpu", "amd", 0)
    assert a.model == "AMD Instinct MI300X"
    assert a.uuid == "1fff74a1-0000-1000-80a4-d9b0f8e3e5b1"
    assert a.pci_bus_id == "0000:0c:00.0"
    assert a.memory_total == 192 * GIB
    assert a.driver_version == "6.7.0"
    assert a.firmware_version == "113-M3000100-102"
    assert a.numa_node == 0
    assert a.cores == 304
    assert a.extra["gfx_target"] == "gfx942"
    assert a.extra["device_id"] == "0x74a1"
    assert b.model == "Radeon PRO W7900"  # market_name "N/A" -> board product name
    assert b.uuid is None
    assert b.memory_total == 49152 * MIB  # from vram_usage (MB) when memory_total is unsupported
    assert b.numa_node is None
    assert b.cores == 96
    assert b.firmware_version == "113-D7070100-100"
    assert dead.model == "AMD GPU"
    assert dead.memory_total is None and dead.uuid is None
    plugin.close()
    assert fake.shutdowns == 1


def test_sample_values_and_units() -> None:
    plugin = AmdPlugin(amdsmi_module=_fake())
    plugin.discover()
    a, b, _ = plugin.sample()
    assert a.device_id == "amd:0"
    assert a.health is Health.OK
    assert a.utilization == pytest.approx(0.37)
    assert a.memory_utilization == pytest.approx(0.12)
    assert a.memory_used == 1024 * MIB
    assert a.memory_free == 192 * GIB - 1024 * MIB
    assert a.temperature == 52.0  # no edge sensor: hotspot
    assert a.extra["temp.hotspot"] == 52.0
    assert a.temperature_memory == 45.0
    assert a.power_draw == 310.0
    assert a.power_limit == pytest.approx(750.0)
    assert a.energy == pytest.approx(15.3)
    assert a.clock_sm == 2100.0
    assert a.clock_memory == 1300.0
    assert a.fan_speed is None
    assert a.ecc_volatile_corrected == 3
    assert a.ecc_volatile_uncorrected == 0
    assert a.extra["ecc.deferred"] == 1.0
    assert a.pcie_tx is None and a.pcie_rx is None  # off by default: the driver read blocks 1 s
    assert a.processes is not None and len(a.processes) == 1
    assert (a.processes[0].pid, a.processes[0].name, a.processes[0].memory_used) == (4242, "python3", 8 * GIB)

    assert b.utilization == 1.0
    assert b.memory_utilization is None  # "N/A"
    assert b.memory_used == 2048 * MIB
    assert b.memory_free == (49152 - 2048) * MIB
    assert b.temperature == 40.0  # millidegrees on an early amdsmi
    assert "temp.hotspot" not in b.extra  # 0xFFFF placeholder
    assert b.temperature_memory is None
    assert b.power_draw == 55.0
    assert b.power_limit == 241.0
    assert b.energy is None
    assert b.clock_sm == 1800.0
    assert b.clock_memory is None
    assert b.fan_speed == pytest.approx(51 / 255)
    assert b.ecc_volatile_uncorrected == 2
    assert b.health is Health.DEGRADED
    assert b.processes is not None
    assert (b.processes[0].pid, b.processes[0].name, b.processes[0].memory_used) == (777, None, 512 * MIB)
    plugin.close()


def test_pcie_throughput_option() -> None:
    plugin = AmdPlugin({"pcie_throughput": True, "processes": False}, amdsmi_module=_fake(dead=False))
    plugin.discover()
    a, b = plugin.sample()
    assert a.pcie_tx == 1000 * 256.0
    assert a.pcie_rx == 2000 * 256.0
    assert a.processes is None
    assert b.pcie_tx is None and b.pcie_rx is None


def test_dead_gpu_fails_alone() -> None:
    plugin = AmdPlugin(amdsmi_module=_fake())
    plugin.discover()
    a, b, dead = plugin.sample()
    assert dead.health is Health.FAILED
    assert "AMDSMI_STATUS_DRIVER_NOT_LOADED" in (dead.health_reason or "")
    assert "\n" not in (dead.health_reason or "")
    assert dead.utilization is None and dead.memory_used is None and dead.temperature is None
    assert a.health is Health.OK
    assert b.health is Health.DEGRADED


def test_unsupported_and_missing_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    plugin = AmdPlugin(amdsmi_module=_fake(dead=False))
    caplog.set_level(logging.INFO, logger=LOGGER)
    plugin.discover()
    plugin.sample()
    first = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    plugin.sample()
    second = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert second == first
    assert len(first) == len(set(first))
    missing = [m for m in first if "amdsmi_get_gpu_memory_usage" in m]
    assert len(missing) == 2  # once per device, the function is absent from this amdsmi
    assert sum("amd:0" in m and "fan_speed absent" in m for m in first) == 1


def test_import_failure_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "amdsmi", None)  # makes `import amdsmi` raise ImportError
    with pytest.raises(PluginUnavailable, match="amdsmi"):
        AmdPlugin(amdsmi_module=None).discover()


def test_init_failure_is_unavailable() -> None:
    fake = _fake()
    fake.init_error = AmdSmiLibraryException(48, "AMDSMI_STATUS_DRIVER_NOT_LOADED")
    with pytest.raises(PluginUnavailable) as excinfo:
        AmdPlugin(amdsmi_module=fake).discover()
    message = str(excinfo.value)
    assert "amdsmi_init failed" in message and "DRIVER_NOT_LOADED" in message
    assert "\n" not in message


def test_no_gpus_is_unavailable() -> None:
    fake = FakeAmdSmi({})
    with pytest.raises(PluginUnavailable, match="no AMD GPUs"):
        AmdPlugin(amdsmi_module=fake).discover()
    assert fake.shutdowns == 1


def test_close_is_idempotent() -> None:
    fake = _fake()
    plugin = AmdPlugin(amdsmi_module=fake)
    plugin.discover()
    plugin.close()
    plugin.close()
    assert fake.shutdowns == 1
    assert plugin.sample() == []
