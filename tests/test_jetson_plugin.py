"""JetsonPlugin against fake sysfs/procfs trees (no Jetson needed)."""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import pytest

from xpud.plugins.base import Health, PluginUnavailable
from xpud.plugins.jetson import JetsonPlugin

MIB = 1024 * 1024
LOGGER = "xpud.plugins.jetson"

ORIN_LINE = (
    "08-22-2023 12:00:00 RAM 2448/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [12%@1510,5%@1510,off,off,3%@1510,1%@1510] EMC_FREQ 4%@2133 GR3D_FREQ 0%@[305] "
    "NVENC off NVDEC off VIC_FREQ 729 APE 200 CV0@-256C CPU@46.5C SOC2@43.1C SOC0@44.3C CV1@-256C "
    "GPU@-256C tj@46.5C SOC1@43.5C CV2@-256C VDD_IN 4323mW/4323mW VDD_CPU_GPU_CV 481mW/481mW "
    "VDD_SOC 1363mW/1363mW"
)
NANO_LINE = (
    "RAM 1716/3964MB (lfb 25x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [9%@102,6%@102,2%@102,2%@102] EMC_FREQ 0%@1600 GR3D_FREQ 0%@114 APE 25 PLL@23.5C CPU@27C "
    "PMIC@100C GPU@25.5C AO@33C thermal@25.75C POM_5V_IN 2390/2390 POM_5V_GPU 0/0 POM_5V_CPU 397/397"
)
XAVIER_LINE = (
    "RAM 3123/15816MB (lfb 2815x4MB) SWAP 0/7908MB (cached 0MB) CPU [2%@1190,1%@1190,0%@1190,0%@1190,"
    "off,off,off,off] EMC_FREQ 7%@1600 GR3D_FREQ 55%@318 APE 150 MTS fg 0% bg 0% AO@38.5C GPU@38.5C "
    "Tdiode@40.75C PMIC@100C AUX@38C CPU@39.5C thermal@38.9C Tboard@38C GPU 0/0 CPU 154/154 SOC 1234/1234 "
    "CV 0/0 VDDRQ 154/154 SYS5V 1472/1472"
)


def _write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _rail(root: Path, chip: str, hwmon: str, n: int, label: str, mv: int, ma: int) -> None:
    base = f"sys/bus/i2c/drivers/ina3221/{chip}/hwmon/{hwmon}"
    _write(root, f"{base}/in{n}_label", label + "\n")
    _write(root, f"{base}/in{n}_input", f"{mv}\n")
    _write(root, f"{base}/curr{n}_input", f"{ma}\n")


def _orin_tree(root: Path, *, vdd_in: bool = False) -> Path:
    _write(
        root,
        "etc/nv_tegra_release",
        "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
        "DATE: Tue Aug  1 19:57:35 UTC 2023\n# KERNEL_VARIANT: oot\n",
    )
    _write(root, "proc/device-tree/model", "NVIDIA Jetson AGX Orin Developer Kit\0")
    _write(root, "proc/device-tree/compatible", "nvidia,p3737-0000+p3701-0005\0nvidia,p3701-0005\0nvidia,tegra234\0")
    _write(
        root,
        "proc/meminfo",
        "MemTotal:       32210844 kB\nMemFree:        25000000 kB\nMemAvailable:   28000000 kB\nBuffers: 1 kB\n",
    )
    _write(root, "sys/devices/platform/17000000.ga10b/load", "523\n")
    _write(root, "sys/class/devfreq/17000000.ga10b/cur_freq", "1300500000\n")
    _write(root, "sys/class/devfreq/15340000.vic/cur_freq", "115200000\n")
    zones = [("cpu-thermal", "45500"), ("gpu-thermal", "43062"), ("cv0-thermal", "-256000"), ("tj-thermal", "46500")]
    for i, (kind, temp) in enumerate(zones):
        _write(root, f"sys/class/thermal/thermal_zone{i}/type", kind + "\n")
        _write(root, f"sys/class/thermal/thermal_zone{i}/temp", temp + "\n")
    if vdd_in:  # Orin NX / Nano style board
        _rail(root, "1-0040", "hwmon1", 1, "VDD_IN", 5000, 1400)
        _rail(root, "1-0040", "hwmon1", 2, "VDD_CPU_GPU_CV", 5000, 200)
    else:  # AGX Orin: no VDD_IN rail, power_draw is the sum
        _rail(root, "1-0040", "hwmon3", 1, "VDD_GPU_SOC", 5000, 1200)
        _rail(root, "1-0040", "hwmon3", 2, "VDD_CPU_CV", 5000, 400)
        _rail(root, "1-0040", "hwmon3", 3, "VIN_SYS_5V0", 5000, 600)
        _rail(root, "1-0041", "hwmon4", 1, "NC", 0, 0)
        _rail(root, "1-0041", "hwmon4", 2, "VDDQ_VDD2_1V8AO", 5000, 100)
    return root


def test_discover_agx_orin(tmp_path: Path) -> None:
    plugin = JetsonPlugin(root=str(_orin_tree(tmp_path)))
    [info] = plugin.discover()
    assert info.id == "jetson:0"
    assert (info.vendor, info.kind, info.plugin) == ("nvidia", "gpu", "jetson")
    assert info.model == "NVIDIA Jetson AGX Orin Developer Kit"
    assert info.memory_total == 32210844 * 1024
    assert info.driver_version == "35.4.1"
    assert info.compute_capability == "8.7"
    assert info.extra["soc"] == "tegra234"
    assert info.extra["memory"] == "shared"
    plugin.close()


def test_sample_agx_orin_values_and_units(tmp_path: Path) -> None:
    plugin = JetsonPlugin(root=str(_orin_tree(tmp_path)))
    plugin.discover()
    [s] = plugin.sample()
    assert s.device_id == "jetson:0"
    assert s.health is Health.OK
    assert s.utilization == pytest.approx(0.523)
    assert s.clock_sm == pytest.approx(1300.5)
    assert s.memory_used == (32210844 - 28000000) * 1024
    assert s.memory_free == 28000000 * 1024
    assert s.temperature == pytest.approx(43.062)
    assert s.extra["temp.cpu-thermal"] == pytest.approx(45.5)
    assert s.extra["temp.tj-thermal"] == pytest.approx(46.5)
    assert "temp.cv0-thermal" not in s.extra  # -256 C: sensor powered off
    assert s.extra["power.VDD_GPU_SOC"] == pytest.approx(6.0)
    assert s.extra["power.VDD_CPU_CV"] == pytest.approx(2.0)
    assert s.extra["power.VIN_SYS_5V0"] == pytest.approx(3.0)
    assert s.extra["power.VDDQ_VDD2_1V8AO"] == pytest.approx(0.5)
    assert "power.NC" not in s.extra
    assert s.power_draw == pytest.approx(11.5)
    # Not measurable from sysfs without root: absent, never 0.
    assert s.memory_utilization is None
    assert s.clock_memory is None
    assert s.energy is None
    assert s.power_limit is None
    plugin.close()


def test_power_draw_prefers_vdd_in(tmp_path: Path) -> None:
    plugin = JetsonPlugin(root=str(_orin_tree(tmp_path, vdd_in=True)))
    plugin.discover()
    [s] = plugin.sample()
    assert s.power_draw == pytest.approx(7.0)
    assert s.extra["power.VDD_CPU_GPU_CV"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("compatible", "expected"),
    [("nvidia,p3668-0001\0nvidia,tegra194\0", "7.2"), ("nvidia,p3450-0000\0nvidia,tegra210\0", "5.3")],
)
def test_detect_by_device_tree_only(tmp_path: Path, compatible: str, expected: str) -> None:
    _write(tmp_path, "proc/device-tree/compatible", compatible)
    [info] = JetsonPlugin(root=str(tmp_path)).discover()
    assert info.compute_capability == expected
    assert info.driver_version is None
    assert info.model == "NVIDIA Jetson"


def test_not_tegra_is_unavailable(tmp_path: Path) -> None:
    _write(tmp_path, "proc/device-tree/compatible", "raspberrypi,4-model-b\0brcm,bcm2711\0")
    _write(tmp_path, "proc/meminfo", "MemTotal: 1000 kB\n")
    with pytest.raises(PluginUnavailable, match="not a Jetson/Tegra SoC"):
        JetsonPlugin(root=str(tmp_path)).discover()
    with pytest.raises(PluginUnavailable):
        JetsonPlugin(root=str(tmp_path / "empty")).discover()


def test_missing_files_are_none_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write(tmp_path, "etc/nv_tegra_release", "# R36 (release), REVISION: 3.0, GCID: 1\n")
    # A thermal zone whose temp is unreadable (a directory stands in for EINVAL).
    _write(tmp_path, "sys/class/thermal/thermal_zone0/type", "gpu-thermal\n")
    (tmp_path / "sys/class/thermal/thermal_zone0/temp").mkdir()
    plugin = JetsonPlugin(root=str(tmp_path))
    caplog.set_level(logging.INFO, logger=LOGGER)
    [info] = plugin.discover()
    assert info.driver_version == "36.3.0"
    assert info.memory_total is None
    [first] = plugin.sample()
    after_first = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    [second] = plugin.sample()
    after_second = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    for s in (first, second):
        assert s.health is Health.OK
        for field in ("utilization", "clock_sm", "memory_used", "memory_free", "temperature", "power_draw"):
            assert getattr(s, field) is None, field
        assert s.extra == {}
    assert after_second == after_first  # nothing new on the second sample
    assert len(after_first) == len(set(after_first))
    for field in ("utilization", "clock_sm", "memory_used", "temp.gpu-thermal", "power_draw"):
        assert sum(f"{field} reported as absent" in m for m in after_first) == 1, field


def test_gpu_sysfs_vanishing_fails_health(tmp_path: Path) -> None:
    plugin = JetsonPlugin(root=str(_orin_tree(tmp_path)))
    plugin.discover()
    assert plugin.sample()[0].health is Health.OK
    os.remove(tmp_path / "sys/devices/platform/17000000.ga10b/load")
    [s] = plugin.sample()
    assert s.health is Health.FAILED
    assert "vanished" in (s.health_reason or "")
    assert s.utilization is None
    assert s.memory_used is not None  # the rest is still read


def test_load_found_by_walk(tmp_path: Path) -> None:
    _orin_tree(tmp_path)
    os.remove(tmp_path / "sys/devices/platform/17000000.ga10b/load")
    _write(tmp_path, "sys/devices/platform/bus@0/13e00000.host1x/gpu.0/load", "1000\n")
    plugin = JetsonPlugin(root=str(tmp_path))
    plugin.discover()
    assert plugin.sample()[0].utilization == pytest.approx(1.0)


def test_parse_tegrastats_orin() -> None:
    d = JetsonPlugin.parse_tegrastats(ORIN_LINE)
    assert d["memory_used"] == 2448 * MIB
    assert d["memory_total"] == 7620 * MIB
    assert d["swap_used"] == 0
    assert d["swap_total"] == 3810 * MIB
    assert d["cpu_utilization"] == pytest.approx((12 + 5 + 3 + 1) / 4 / 100)
    assert d["memory_utilization"] == pytest.approx(0.04)
    assert d["clock_memory"] == pytest.approx(2133.0)
    assert d["utilization"] == 0.0
    assert d["clock_sm"] == pytest.approx(305.0)
    assert d["rails"] == pytest.approx({"VDD_IN": 4.323, "VDD_CPU_GPU_CV": 0.481, "VDD_SOC": 1.363})
    assert d["temperatures"]["CPU"] == pytest.approx(46.5)
    assert d["temperatures"]["tj"] == pytest.approx(46.5)
    assert "GPU" not in d["temperatures"] and "CV0" not in d["temperatures"]  # -256C sentinels


def test_parse_tegrastats_nano() -> None:
    d = JetsonPlugin.parse_tegrastats(NANO_LINE)
    assert d["memory_used"] == 1716 * MIB
    assert d["memory_total"] == 3964 * MIB
    assert d["memory_utilization"] == 0.0
    assert d["clock_memory"] == pytest.approx(1600.0)
    assert d["utilization"] == 0.0
    assert d["clock_sm"] == pytest.approx(114.0)
    assert d["rails"] == pytest.approx({"POM_5V_IN": 2.39, "POM_5V_GPU": 0.0, "POM_5V_CPU": 0.397})
    assert d["temperatures"]["GPU"] == pytest.approx(25.5)
    assert d["temperatures"]["thermal"] == pytest.approx(25.75)


def test_parse_tegrastats_xavier() -> None:
    d = JetsonPlugin.parse_tegrastats(XAVIER_LINE)
    assert d["utilization"] == pytest.approx(0.55)
    assert d["clock_sm"] == pytest.approx(318.0)
    assert d["memory_utilization"] == pytest.approx(0.07)
    assert d["rails"]["GPU"] == 0.0
    assert d["rails"]["SYS5V"] == pytest.approx(1.472)
    assert d["temperatures"]["GPU"] == pytest.approx(38.5)
    assert "RAM" not in d["rails"] and "SWAP" not in d["rails"]


def test_parse_tegrastats_without_frequencies() -> None:
    d = JetsonPlugin.parse_tegrastats("RAM 100/200MB CPU [off,off] EMC_FREQ 3% GR3D_FREQ 9%")
    assert d["memory_utilization"] == pytest.approx(0.03)
    assert d["utilization"] == pytest.approx(0.09)
    assert "clock_memory" not in d and "clock_sm" not in d and "cpu_utilization" not in d
    assert JetsonPlugin.parse_tegrastats("") == {}


def test_tegrastats_subprocess_fills_emc_and_rails(tmp_path: Path) -> None:
    _write(tmp_path, "etc/nv_tegra_release", "# R35 (release), REVISION: 4.1\n")
    line = (
        "RAM 2448/7620MB CPU [1%@1510] EMC_FREQ 17%@3199 GR3D_FREQ 42%@[918] VDD_IN 9000mW/9000mW VDD_SOC 1000mW/1000mW"
    )
    script = _write(tmp_path, "bin/tegrastats", f"#!/bin/sh\nwhile :; do echo '{line}'; sleep 0.05; done\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    opts = {"tegrastats": True, "tegrastats_path": str(script), "tegrastats_interval_ms": 100}
    plugin = JetsonPlugin(opts, root=str(tmp_path))
    try:
        plugin.discover()
        proc = plugin._proc
        assert proc is not None
        deadline = time.monotonic() + 10
        s = plugin.sample()[0]
        while s.memory_utilization is None and time.monotonic() < deadline:
            time.sleep(0.05)
            s = plugin.sample()[0]
        assert s.memory_utilization == pytest.approx(0.17)
        assert s.clock_memory == pytest.approx(3199.0)
        assert s.utilization == pytest.approx(0.42)  # no sysfs load node in this tree
        assert s.clock_sm == pytest.approx(918.0)
        assert s.power_draw == pytest.approx(9.0)
        assert s.extra["power.VDD_SOC"] == pytest.approx(1.0)
    finally:
        plugin.close()
    assert proc.poll() is not None


def test_tegrastats_missing_binary_logs_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _orin_tree(tmp_path)
    opts = {"tegrastats": True, "tegrastats_path": str(tmp_path / "no-such-tegrastats")}
    plugin = JetsonPlugin(opts, root=str(tmp_path))
    caplog.set_level(logging.INFO, logger=LOGGER)
    plugin.discover()
    plugin.discover()
    [s] = plugin.sample()
    assert s.memory_utilization is None
    assert s.utilization == pytest.approx(0.523)
    assert sum("no-such-tegrastats" in r.getMessage() for r in caplog.records) == 1
    plugin.close()
