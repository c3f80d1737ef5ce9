"""The cpu plugin over real psutil, and over a fake psutil / sysfs tree for the optional fields."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from xpud.plugins.cpu import CpuPlugin


def test_real_host_cpu():
    p = CpuPlugin()
    (device,) = p.discover()
    assert device.id == "cpu:0" and device.kind == "cpu" and device.cores >= 1 and device.memory_total > 0
    (s,) = p.sample()
    assert 0 <= s.utilization <= 1
    assert s.memory_used + s.memory_free <= device.memory_total
    assert s.ecc_volatile_corrected is None and s.fan_speed is None  # not a CPU thing: absent


class FakePsutil:
    def __init__(self, temps=None, freq=None):  # type: ignore[no-untyped-def]
        self._temps, self._freq = temps, freq

    def virtual_memory(self):  # type: ignore[no-untyped-def]
        return SimpleNamespace(total=16 * 2**30, available=4 * 2**30)

    def cpu_percent(self, interval=None):  # type: ignore[no-untyped-def]
        return 25.0

    def cpu_count(self, logical=True):  # type: ignore[no-untyped-def]
        return 8 if logical else 4

    def cpu_freq(self):  # type: ignore[no-untyped-def]
        if self._freq is None:
            raise NotImplementedError("no cpufreq")
        return SimpleNamespace(current=self._freq)

    def sensors_temperatures(self):  # type: ignore[no-untyped-def]
        return self._temps or {}


def test_fields_from_fake_psutil_and_rapl(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("vendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Gold 6338\n")
    rapl = tmp_path / "sys/class/powercap/intel-rapl:0"
    rapl.mkdir(parents=True)
    (rapl / "energy_uj").write_text("1000000000\n")
    temps = {"coretemp": [SimpleNamespace(label="Core 0", current=50.0), SimpleNamespace(label="Package id 0",
                                                                                           current=61.0)]}
    now = [100.0]
    p = CpuPlugin(psutil_module=FakePsutil(temps, 2100.0), root=str(tmp_path), clock=lambda: now[0])
    (device,) = p.discover()
    assert device.vendor == "intel" and device.model == "Intel(R) Xeon(R) Gold 6338" and device.cores == 8
    (s,) = p.sample()
    assert s.utilization == 0.25 and s.memory_used == 12 * 2**30 and s.memory_free == 4 * 2**30
    assert s.clock_sm == 2100.0 and s.temperature == 61.0
    assert s.energy == 1000.0 and s.power_draw is None  # a rate needs two readings
    (rapl / "energy_uj").write_text("1150000000\n")
    now[0] += 2.0
    (s,) = p.sample()
    assert s.energy == 1150.0 and s.power_draw == 75.0


def test_missing_sensors_are_absent_and_logged_once(tmp_path, caplog):
    p = CpuPlugin(psutil_module=FakePsutil(), root=str(tmp_path))
    p.discover()
    with caplog.at_level(logging.INFO, logger="xpud.plugins.cpu"):
        for _ in range(3):
            (s,) = p.sample()
            assert s.temperature is None and s.clock_sm is None and s.power_draw is None and s.energy is None
    assert len([r for r in caplog.records if "temperature" in r.getMessage()]) == 1
    assert len([r for r in caplog.records if "frequency" in r.getMessage()]) == 1
