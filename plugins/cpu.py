"""Host CPU as one device, through psutil. Always present."""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import psutil

from .base import DeviceInfo, DeviceSample, LogOnce

log = logging.getLogger(__name__)

_VENDORS = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "hygon"}
# psutil.sensors_temperatures() keys that describe the CPU package, best first.
_TEMP_SENSORS = ("coretemp", "k10temp", "zenpower", "cpu_thermal", "cpu-thermal", "soc_thermal", "acpitz")


class CpuPlugin:
    """One device ``cpu:0`` for the whole host: logical cores, RAM, utilisation, frequency,
    package temperature and RAPL power where the kernel exposes them."""

    name: ClassVar[str] = "cpu"

    def __init__(
        self,
        options: Mapping[str, Any] | None = None,
        *,
        psutil_module: Any = psutil,
        root: str = "/",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ps = psutil_module
        self._root = Path(root)
        self._clock = clock
        self._log_once = LogOnce(log)
        self._rapl: list[Path] = []
        self._last_energy: tuple[float, float] | None = None  # (clock, joules)

    def discover(self) -> list[DeviceInfo]:
        cpuinfo = self._read_cpuinfo()
        vm = self._ps.virtual_memory()
        self._ps.cpu_percent(interval=None)  # prime: the first call has no interval to measure over
        self._rapl = sorted(self._root.glob("sys/class/powercap/intel-rapl:[0-9]*/energy_uj"))
        vendor_id = cpuinfo.get("vendor_id", "")
        vendor = _VENDORS.get(vendor_id, vendor_id.lower() or platform.machine() or "unknown")
        model = cpuinfo.get("model name") or cpuinfo.get("Model") or platform.processor() or platform.machine()
        return [
            DeviceInfo(
                id="cpu:0",
                vendor=vendor,
                kind="cpu",
                model=model or "unknown CPU",
                plugin=self.name,
                index=0,
                memory_total=int(vm.total),
                cores=self._ps.cpu_count(logical=True),
                extra={"physical_cores": str(self._ps.cpu_count(logical=False) or "n/a"), "arch": platform.machine()},
            )
        ]

    def sample(self) -> list[DeviceSample]:
        vm = self._ps.virtual_memory()
        sample = DeviceSample(
            device_id="cpu:0",
            timestamp=time.time(),
            utilization=self._ps.cpu_percent(interval=None) / 100.0,
            memory_used=int(vm.total - vm.available),
            memory_free=int(vm.available),
            clock_sm=self._frequency(),
            temperature=self._temperature(),
        )
        self._power(sample)
        return [sample]

    def close(self) -> None:
        return None

    # -- fields that not every host has -------------------------------------------------

    def _frequency(self) -> float | None:
        try:
            freq = self._ps.cpu_freq()
        except (OSError, NotImplementedError, AttributeError) as exc:
            self._log_once(("cpu:0", "clock"), "cpu frequency unavailable: %s", exc, level=logging.INFO)
            return None
        if not freq or not freq.current:
            return None
        return float(freq.current)

    def _temperature(self) -> float | None:
        reader = getattr(self._ps, "sensors_temperatures", None)
        temps: dict[str, list[Any]] = {}
        if reader is not None:
            try:
                temps = reader() or {}
            except (OSError, RuntimeError) as exc:
                self._log_once(("cpu:0", "temperature"), "cpu temperature unavailable: %s", exc, level=logging.INFO)
        for key in _TEMP_SENSORS:
            entries = temps.get(key)
            if not entries:
                continue
            for entry in entries:  # the package sensor when labelled, else the hottest
                if entry.label.startswith(("Package", "Tctl", "Tdie")):
                    return float(entry.current)
            return float(max(e.current for e in entries))
        self._log_once(("cpu:0", "temperature"), "no cpu temperature sensor on this host", level=logging.INFO)
        return None

    def _power(self, sample: DeviceSample) -> None:
        """Package energy from RAPL (sum of sockets) and power as its rate of change."""
        if not self._rapl:
            return
        try:
            joules = sum(int(p.read_text()) for p in self._rapl) / 1e6
        except (OSError, ValueError) as exc:
            self._log_once(("cpu:0", "power"), "RAPL energy unreadable: %s", exc, level=logging.INFO)
            self._rapl = []
            return
        now = self._clock()
        sample.energy = joules
        if self._last_energy is not None:
            t0, j0 = self._last_energy
            if now > t0 and joules >= j0:  # a counter wrap gives one absent reading, not a spike
                sample.power_draw = (joules - j0) / (now - t0)
        self._last_energy = (now, joules)

    def _read_cpuinfo(self) -> dict[str, str]:
        info: dict[str, str] = {}
        try:
            text = (self._root / "proc/cpuinfo").read_text()
        except OSError:
            return info
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() not in info:
                info[key.strip()] = value.strip()
        return info


