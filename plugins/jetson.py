"""NVIDIA Jetson (Tegra SoC) plugin: reads sysfs and procfs, optionally ``tegrastats``.

Jetson GPUs are invisible to NVML; their state lives in sysfs (nvgpu load, devfreq,
thermal zones, INA3221 power monitors). Memory is shared with the CPU, so memory
numbers come from /proc/meminfo. The memory-controller (EMC) load is only readable
as root from debugfs, so it is taken from a ``tegrastats`` subprocess when the
``tegrastats`` option is on. ``root`` is the filesystem root (tests pass a fake tree).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from .base import DeviceInfo, DeviceSample, Health, LogOnce, PluginUnavailable, option

logger = logging.getLogger(__name__)

DEVICE_ID = "jetson:0"
MIB = 1024 * 1024

# SoC compatible string -> (family, CUDA compute capability)
_SOCS: dict[str, tuple[str, str | None]] = {
    "tegra264": ("thor", None),
    "tegra234": ("orin", "8.7"),
    "tegra194": ("xavier", "7.2"),
    "tegra186": ("tx2", "6.2"),
    "tegra210": ("nano/tx1", "5.3"),
}
# nvgpu "load" nodes (per-mille busy), newest layouts first.
_GPU_LOAD_PATHS = (
    "sys/devices/platform/gpu.0/load",
    "sys/devices/gpu.0/load",
    "sys/devices/platform/bus@0/17000000.gpu/load",
    "sys/devices/platform/17000000.ga10b/load",
    "sys/devices/17000000.ga10b/load",
    "sys/devices/platform/17000000.gv11b/load",
    "sys/devices/17000000.gv11b/load",
    "sys/devices/platform/17000000.gp10b/load",
    "sys/devices/17000000.gp10b/load",
    "sys/devices/platform/57000000.gpu/load",
    "sys/devices/57000000.gpu/load",
)
_GPU_DIR_RE = re.compile(r"^(gpu\.0|[0-9a-f]+\.(gpu|ga10b|gv11b|gp10b|gm20b))$")
_GPU_THERMAL = ("gpu-therm", "gpu-thermal")
_POWER_IN = ("VDD_IN", "POM_5V_IN")  # whole-module input rail, when the board has one
_NOT_RAILS = {"RAM", "SWAP", "IRAM", "lfb"}

_RE_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_RE_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_RE_CPU = re.compile(r"\bCPU \[([^\]]*)\]")
_RE_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
_RE_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?(\d+))?")
_RE_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_RE_RAIL = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")


class JetsonPlugin:
    name: ClassVar[str] = "jetson"

    def __init__(self, options: Mapping[str, Any] | None = None, *, root: str = "/") -> None:
        self._root = root
        self._use_tegrastats = bool(option(options, "tegrastats", False))
        self._tegrastats_path = str(option(options, "tegrastats_path", "tegrastats"))
        self._interval_ms = int(option(options, "tegrastats_interval_ms", 1000))
        self._log_once = LogOnce(logger)
        self._load_path: str | None = None
        self._devfreq: str | None = None
        self._zones: list[tuple[str, str]] = []  # (type, temp path)
        self._rails: list[tuple[str, str, str | None]] = []  # (label, path, current path or None for mW nodes)
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._latest: tuple[float, str] | None = None

    def _path(self, rel: str) -> str:
        return os.path.join(self._root, rel)

    # ---- discovery -----------------------------------------------------------------------

    def discover(self) -> list[DeviceInfo]:
        release_file = self._path("etc/nv_tegra_release")
        compatible = self._read_quiet(self._path("proc/device-tree/compatible")) or ""
        if not os.path.exists(release_file) and "nvidia,tegra" not in compatible:
            raise PluginUnavailable("not a Jetson/Tegra SoC (no /etc/nv_tegra_release or tegra device tree)")
        soc = next((c.split(",", 1)[1] for c in compatible.split("\0") if c.startswith("nvidia,tegra")), None)
        family, capability = _SOCS.get(soc or "", (None, None))
        model = (self._read_quiet(self._path("proc/device-tree/model")) or "").strip("\0 \n") or "NVIDIA Jetson"
        extra = {"memory": "shared"}
        if soc:
            extra["soc"] = soc
        if family:
            extra["family"] = family
        self._load_path = self._find_load_path()
        self._devfreq = self._find_devfreq()
        self._zones = self._find_zones()
        self._rails = self._find_rails()
        if self._use_tegrastats and self._proc is None:
            self._start_tegrastats()
        return [
            DeviceInfo(
                id=DEVICE_ID,
                vendor="nvidia",
                kind="gpu",
                model=model,
                plugin=self.name,
                index=0,
                memory_total=self._meminfo().get("MemTotal"),
                driver_version=self._l4t_release(),
                compute_capability=capability,
                extra=extra,
            )
        ]

    def _l4t_release(self) -> str | None:
        text = self._read(self._path("etc/nv_tegra_release"), "driver_version")
        m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
        return f"{m.group(1)}.{m.group(2).rstrip('.')}" if m else None

    def _find_load_path(self) -> str | None:
        for rel in _GPU_LOAD_PATHS:
            if os.path.isfile(self._path(rel)):
                return self._path(rel)
        # Bounded walk instead of glob("sys/devices/**/gpu.0/load"): a recursive glob follows the
        # driver/subsystem symlinks of sysfs and can loop; os.walk does not follow links.
        base = self._path("sys/devices")
        depth0 = base.rstrip(os.sep).count(os.sep)
        for dirpath, dirnames, filenames in os.walk(base):
            if _GPU_DIR_RE.match(os.path.basename(dirpath)) and "load" in filenames:
                return os.path.join(dirpath, "load")
            if dirpath.count(os.sep) - depth0 >= 5:
                dirnames.clear()
        return None

    def _find_devfreq(self) -> str | None:
        for path in sorted(glob.glob(self._path("sys/class/devfreq/*"))):
            name = os.path.basename(path)
            if "gpu" in name or name.endswith((".ga10b", ".gv11b", ".gp10b", ".gm20b")):
                return path
        return None

    def _find_zones(self) -> list[tuple[str, str]]:
        zones = []
        for zone in sorted(glob.glob(self._path("sys/class/thermal/thermal_zone*"))):
            kind = self._read_quiet(os.path.join(zone, "type"))
            if kind and kind.strip():
                zones.append((kind.strip(), os.path.join(zone, "temp")))
        return zones

    def _find_rails(self) -> list[tuple[str, str, str | None]]:
        rails: list[tuple[str, str, str | None]] = []
        labels: set[str] = set()

        def add(label: str, path: str, curr: str | None) -> None:
            if not label or label == "NC":
                return
            unique, n = label, 2
            while unique in labels:
                unique, n = f"{label}#{n}", n + 1
            labels.add(unique)
            rails.append((unique, path, curr))

        for lab in sorted(glob.glob(self._path("sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in*_label"))):
            d, n = os.path.dirname(lab), os.path.basename(lab)[2:-6]
            volt, curr = os.path.join(d, f"in{n}_input"), os.path.join(d, f"curr{n}_input")
            if os.path.exists(volt) and os.path.exists(curr):
                add((self._read_quiet(lab) or "").strip(), volt, curr)
        # JetPack 4 (ina3221x iio driver): rail_name_N + in_powerN_input (mW)
        for lab in sorted(glob.glob(self._path("sys/bus/i2c/drivers/ina3221x/*/iio:device*/rail_name_*"))):
            power = os.path.join(os.path.dirname(lab), f"in_power{lab.rsplit('_', 1)[1]}_input")
            if os.path.exists(power):
                add((self._read_quiet(lab) or "").strip(), power, None)
        return rails

    # ---- sampling ------------------------------------------------------------------------

    def sample(self) -> list[DeviceSample]:
        s = DeviceSample(device_id=DEVICE_ID, timestamp=time.time())
        if self._load_path is None:
            self._absent("utilization", "no nvgpu 'load' node found in sysfs")
        elif not os.path.exists(self._load_path):
            s.health = Health.FAILED
            s.health_reason = f"GPU sysfs node {self._load_path} vanished (nvgpu driver gone?)"
        else:
            load = self._read_number(self._load_path, "utilization")
            s.utilization = None if load is None else min(max(load / 1000.0, 0.0), 1.0)
        if self._devfreq is None:
            self._absent("clock_sm", "no GPU devfreq node in /sys/class/devfreq")
        else:
            hz = self._read_number(os.path.join(self._devfreq, "cur_freq"), "clock_sm")
            s.clock_sm = None if hz is None else hz / 1e6
        mem = self._meminfo()
        total, avail = mem.get("MemTotal"), mem.get("MemAvailable")
        if total is not None and avail is not None:
            s.memory_used, s.memory_free = total - avail, avail
        else:
            self._absent("memory_used", "MemTotal/MemAvailable missing from /proc/meminfo")
        for kind, path in self._zones:
            milli = self._read_number(path, f"temp.{kind}")
            if milli is None or milli <= -200000:  # -256 C marks a powered-off sensor
                continue
            if kind.lower() in _GPU_THERMAL:
                s.temperature = milli / 1000.0
            else:
                s.extra[f"temp.{kind}"] = milli / 1000.0
        if not any(kind.lower() in _GPU_THERMAL for kind, _ in self._zones):
            self._absent("temperature", "no GPU thermal zone (GPU-therm / gpu-thermal)")
        rails = self._read_rails()
        stats = self._tegrastats_stats()
        if stats:
            if s.utilization is None and s.health is Health.OK:
                s.utilization = stats.get("utilization")
            if s.clock_sm is None:
                s.clock_sm = stats.get("clock_sm")
            s.memory_utilization = stats.get("memory_utilization")
            s.clock_memory = stats.get("clock_memory")
            rails = rails or dict(stats.get("rails", {}))
        for label, watts in rails.items():
            s.extra[f"power.{label}"] = watts
        if rails:
            s.power_draw = next((rails[k] for k in _POWER_IN if k in rails), None)
            if s.power_draw is None:
                s.power_draw = sum(rails.values())
        else:
            self._absent("power_draw", "no INA3221 power rails found")
        return [s]

    def _read_rails(self) -> dict[str, float]:
        rails: dict[str, float] = {}
        for label, path, curr in self._rails:
            value = self._read_number(path, f"power.{label}")
            if curr is None:  # in_powerN_input, mW
                if value is not None:
                    rails[label] = value / 1000.0
                continue
            amps = self._read_number(curr, f"power.{label}")
            if value is not None and amps is not None:
                rails[label] = value * amps / 1e6  # mV * mA -> W
        return rails

    def _meminfo(self) -> dict[str, int]:
        text = self._read(self._path("proc/meminfo"), "memory")
        out: dict[str, int] = {}
        for line in (text or "").splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key.strip()] = int(parts[0]) * (1024 if parts[1:2] == ["kB"] else 1)
        return out

    # ---- tegrastats ----------------------------------------------------------------------

    @staticmethod
    def parse_tegrastats(line: str) -> dict[str, Any]:
        """Parse one tegrastats line (JetPack 4..6 formats) into sample units.

        Keys present only when found: utilization, clock_sm, memory_utilization (EMC),
        clock_memory, memory_used, memory_total, swap_used, swap_total (bytes),
        cpu_utilization (mean over online cores), rails {name: W}, temperatures {name: C}.
        """
        out: dict[str, Any] = {}
        if m := _RE_RAM.search(line):
            out["memory_used"], out["memory_total"] = int(m.group(1)) * MIB, int(m.group(2)) * MIB
        if m := _RE_SWAP.search(line):
            out["swap_used"], out["swap_total"] = int(m.group(1)) * MIB, int(m.group(2)) * MIB
        if m := _RE_CPU.search(line):
            loads = [int(c.group(1)) for c in re.finditer(r"(\d+)%", m.group(1))]
            if loads:
                out["cpu_utilization"] = sum(loads) / len(loads) / 100.0
        if m := _RE_EMC.search(line):
            out["memory_utilization"] = int(m.group(1)) / 100.0
            if m.group(2):
                out["clock_memory"] = float(m.group(2))
        if m := _RE_GR3D.search(line):
            out["utilization"] = int(m.group(1)) / 100.0
            if m.group(2):
                out["clock_sm"] = float(m.group(2))
        temps = {t.group(1): float(t.group(2)) for t in _RE_TEMP.finditer(line) if float(t.group(2)) > -200}
        if temps:
            out["temperatures"] = temps
        rails = {r.group(1): int(r.group(2)) / 1000.0 for r in _RE_RAIL.finditer(line) if r.group(1) not in _NOT_RAILS}
        if rails:
            out["rails"] = rails
        return out

    def _start_tegrastats(self) -> None:
        binary = shutil.which(self._tegrastats_path)
        if binary is None:
            self._log_once(
                (DEVICE_ID, "tegrastats"),
                "jetson: %s not found; EMC load unavailable, sysfs only",
                self._tegrastats_path,
            )
            return
        try:
            self._proc = subprocess.Popen(
                [binary, "--interval", str(self._interval_ms)],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                text=True,
                bufsize=1,
            )
        except OSError as exc:
            self._log_once((DEVICE_ID, "tegrastats"), "jetson: cannot start %s: %s; sysfs only", binary, exc)
            return
        self._reader = threading.Thread(target=self._read_tegrastats, name="jetson-tegrastats", daemon=True)
        self._reader.start()

    def _read_tegrastats(self) -> None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        try:
            for line in proc.stdout:
                with self._lock:
                    self._latest = (time.monotonic(), line.strip())
        except (OSError, ValueError):  # pipe closed under us by close()
            return
        if proc.poll() not in (None, 0, -15):
            self._log_once((DEVICE_ID, "tegrastats.exit"), "jetson: tegrastats exited with %s", proc.returncode)

    def _tegrastats_stats(self) -> dict[str, Any] | None:
        with self._lock:
            latest = self._latest
        if latest is None:
            return None
        if time.monotonic() - latest[0] > max(5 * self._interval_ms / 1000.0, 3.0):
            return None  # stale: tegrastats stopped printing
        return self.parse_tegrastats(latest[1])

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=2)
        if self._reader is not None:
            self._reader.join(timeout=2)
            self._reader = None
        if proc is not None and proc.stdout is not None:
            proc.stdout.close()

    # ---- file helpers ----------------------------------------------------------------------

    @staticmethod
    def _read_quiet(path: str) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return None

    def _read(self, path: str, field: str) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError as exc:
            self._absent(field, f"cannot read {path}: {exc.strerror or exc}")
            return None

    def _read_number(self, path: str, field: str) -> float | None:
        text = self._read(path, field)
        if text is None:
            return None
        try:
            return float(text.split()[0])
        except (ValueError, IndexError):
            self._absent(field, f"unparsable value {text.strip()[:40]!r} in {path}")
            return None

    def _absent(self, field: str, why: str) -> None:
        self._log_once((DEVICE_ID, field), "jetson: %s; %s reported as absent", why, field)
