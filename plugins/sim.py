"""Simulated GPUs driven by a scenario: load curves, temperature, power, and injected faults.

For tests, demos and scale benchmarks. Values are a pure function of the time
since the plugin started (from an injectable clock) and the device index, so a
test can step the clock and know exactly what it will read.

Scenario (JSON), every key optional::

    {
      "count": 4,                                  # overridden by --sim N
      "model": "Sim A100-SXM4-80GB", "memory_gb": 80, "power_limit_w": 400,
      "compute_capability": "8.0",
      "load": {"shape": "sine"|"constant"|"ramp"|"square", "min": 0.1, "max": 0.9, "period_s": 60},
      "devices": [{"index": 1, "model": "...", "memory_gb": 24, "load": {...}}],
      "faults": [
        {"kind": "xid_storm", "device": 1, "at_s": 10, "duration_s": 5, "rate_hz": 4, "code": 13},
        {"kind": "lost", "device": 2, "at_s": 30},
        {"kind": "ecc_growth", "device": 0, "at_s": 0, "rate_per_s": 0.5, "uncorrected_every": 10},
        {"kind": "thermal", "device": 3, "at_s": 20, "duration_s": 10, "temperature": 95},
        {"kind": "inference_errors", "device": 1, "at_s": 40, "duration_s": 10, "ratio": 0.5},
        {"kind": "inference_latency", "device": 0, "at_s": 0, "duration_s": 30, "delay_ms": 20}
      ]
    }

``inference_errors`` fails that share of the model runs on the device (evenly spread: 0.5 is every other run)
while active, as a GPU whose kernels fail does; a lost device fails every run from then on. The serving layer
asks ``inference_check(device_id)`` for a check to call just before each run (the only hook besides sampling).
``inference_latency`` holds each run on the device ``delay_ms`` longer while active, as a throttled or shared GPU
is slow.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from .base import DeviceEvent, DeviceInfo, DeviceSample, Health, PluginUnavailable, option

GIB = 1024**3
FAULT_KINDS = ("xid_storm", "lost", "ecc_growth", "thermal", "inference_errors", "inference_latency")
RUN_FAULTS = ("inference_errors", "inference_latency", "lost")  # the kinds a model run on the device sees
LOAD_SHAPES = ("sine", "constant", "ramp", "square")


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the key to fix."""


@dataclass(frozen=True)
class Fault:
    kind: str
    device: int
    at_s: float = 0.0
    duration_s: float = math.inf
    rate_hz: float = 1.0
    rate_per_s: float = 1.0
    code: int = 79
    temperature: float = 95.0
    uncorrected_every: float = 0.0
    ratio: float = 1.0  # inference_errors: the share of runs that fail while active
    delay_ms: float = 0.0  # inference_latency: how much longer each run takes while active

    def active(self, t: float) -> bool:
        return self.at_s <= t < self.at_s + self.duration_s


@dataclass(frozen=True)
class SimDevice:
    index: int
    model: str
    memory_total: int
    power_limit: float
    compute_capability: str
    load: Mapping[str, Any]
    faults: tuple[Fault, ...] = field(default=())


def load_scenario(source: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """A scenario from a mapping, a file path, or the name of a bundled one ("default", "faults")."""
    if source is None:
        source = "default"
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.suffix and not path.exists():
        bundled = resources.files(__package__).joinpath("scenarios", f"{source}.json")
        if not bundled.is_file():
            raise ScenarioError(f"no bundled sim scenario named {source!r} (use a JSON file path or 'default')")
        text = bundled.read_text()
    else:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ScenarioError(f"cannot read sim scenario {str(path)!r}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"sim scenario {str(source)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ScenarioError(f"sim scenario {str(source)!r} must be a JSON object")
    return data


def build_devices(scenario: Mapping[str, Any], count: int | None) -> list[SimDevice]:
    n = int(count if count is not None else scenario.get("count", 1))
    if n < 0:
        raise ScenarioError("sim device count must be >= 0")
    overrides = {int(d["index"]): d for d in scenario.get("devices", []) if "index" in d}
    faults: dict[int, list[Fault]] = {}
    for raw in scenario.get("faults", []):
        kind = raw.get("kind")
        if kind not in FAULT_KINDS:
            raise ScenarioError(f"sim fault kind {kind!r} is not one of {', '.join(FAULT_KINDS)}")
        known = {k: v for k, v in raw.items() if k in Fault.__dataclass_fields__}
        if kind == "inference_errors" and not 0 <= float(known.get("ratio", 1.0)) <= 1:
            raise ScenarioError(f"sim fault inference_errors: ratio {known['ratio']!r} must be within 0..1")
        if kind == "inference_latency" and not float(known.get("delay_ms", 0.0)) >= 0:
            raise ScenarioError(f"sim fault inference_latency: delay_ms {known['delay_ms']!r} must be >= 0")
        faults.setdefault(int(raw.get("device", 0)), []).append(Fault(**known))
    devices = []
    for i in range(n):
        spec = {**scenario, **overrides.get(i, {})}
        load = spec.get("load", {"shape": "sine"})
        if load.get("shape", "sine") not in LOAD_SHAPES:
            raise ScenarioError(f"sim load shape {load.get('shape')!r} is not one of {', '.join(LOAD_SHAPES)}")
        devices.append(
            SimDevice(
                index=i,
                model=str(spec.get("model", "Sim A100-SXM4-80GB")),
                memory_total=int(float(spec.get("memory_gb", 80)) * GIB),
                power_limit=float(spec.get("power_limit_w", 400.0)),
                compute_capability=str(spec.get("compute_capability", "8.0")),
                load=load,
                faults=tuple(faults.get(i, ())),
            )
        )
    return devices


def load_at(load: Mapping[str, Any], t: float, phase: float) -> float:
    """Utilisation ratio of a load curve at time t (seconds since start)."""
    lo, hi = float(load.get("min", 0.1)), float(load.get("max", 0.9))
    period = max(float(load.get("period_s", 60.0)), 1e-6)
    x = (t / period + phase) % 1.0
    shape = load.get("shape", "sine")
    if shape == "constant":
        return float(load.get("value", hi))
    if shape == "ramp":
        return lo + (hi - lo) * x
    if shape == "square":
        return hi if x < 0.5 else lo
    return lo + (hi - lo) * (0.5 - 0.5 * math.cos(2 * math.pi * x))


class SimPlugin:
    """N simulated GPUs: ``--sim N`` or a scenario file. Behaves like a real plugin: a lost
    device reports FAILED with a reason and a single "lost" event; XIDs arrive as events."""

    name: ClassVar[str] = "sim"

    def __init__(
        self,
        options: Mapping[str, Any] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._scenario = load_scenario(option(options, "scenario", None))
        count = option(options, "count", None)
        self._devices = build_devices(self._scenario, None if count is None else int(count))
        self._clock, self._wall, self._sleep = clock, wall, sleep
        self._t0 = clock()
        self._last_t: float | None = None
        self._lost_reported: set[int] = set()

    def discover(self) -> list[DeviceInfo]:
        if not self._devices:
            raise PluginUnavailable("simulator configured with 0 devices")
        return [
            DeviceInfo(
                id=f"sim:{d.index}",
                vendor="sim",
                kind="gpu",
                model=d.model,
                plugin=self.name,
                uuid=f"GPU-5173{d.index:04x}-0000-4000-8000-{d.index:012x}",
                index=d.index,
                memory_total=d.memory_total,
                driver_version="sim-1.0",
                compute_capability=d.compute_capability,
                pci_bus_id=f"00000000:{0x10 + d.index:02X}:00.0",
                numa_node=d.index * 2 // max(len(self._devices), 1),
                cores=108,
            )
            for d in self._devices
        ]

    def sample(self) -> list[DeviceSample]:
        t = self._clock() - self._t0
        prev_t = self._last_t
        self._last_t = t
        now = self._wall()
        return [self._sample_device(d, t, prev_t, now) for d in self._devices]

    def close(self) -> None:
        return None

    def inference_check(self, device_id: str) -> Callable[[], None] | None:
        """A check to call just before each model run on ``device_id`` (from any thread): it raises a
        RuntimeError worded like ONNX Runtime's for a kernel that failed on the GPU while an
        ``inference_errors`` fault is active (or once the device is lost), and sleeps while an ``inference_latency``
        one is. None when no fault can touch a run."""
        d = next((d for d in self._devices if f"sim:{d.index}" == device_id), None)
        faults = tuple(f for f in d.faults if f.kind in RUN_FAULTS) if d is not None else ()
        if not faults:
            return None
        runs = itertools.count()  # runs while a fault is active; next() is atomic, so threads share it

        def check() -> None:
            t = self._clock() - self._t0
            for f in faults:
                if f.kind == "lost" and t >= f.at_s:
                    raise RuntimeError(_ort_failure(device_id, "cudaErrorDevicesUnavailable",
                                                    "all CUDA-capable devices are busy or unavailable"))
                if f.kind == "inference_latency" and f.active(t):
                    self._sleep(f.delay_ms / 1000)
                if f.kind == "inference_errors" and f.active(t):
                    n = next(runs)
                    if math.floor((n + 1) * f.ratio) > math.floor(n * f.ratio):  # ratio of runs, evenly spread
                        raise RuntimeError(_ort_failure(device_id, "cudaErrorLaunchFailure",
                                                        "unspecified launch failure"))

        return check

    def _sample_device(self, d: SimDevice, t: float, prev_t: float | None, now: float) -> DeviceSample:
        device_id = f"sim:{d.index}"
        for fault in d.faults:
            if fault.kind == "lost" and t >= fault.at_s:
                events: tuple[DeviceEvent, ...] = ()
                if d.index not in self._lost_reported:
                    self._lost_reported.add(d.index)
                    events = (DeviceEvent("lost", "GPU has fallen off the bus (simulated)", 79, now),)
                return DeviceSample(
                    device_id, now, Health.FAILED, "GPU has fallen off the bus (simulated)", events=events
                )
        util = load_at(d.load, t, phase=d.index / max(len(self._devices), 1))
        used = int(d.memory_total * (0.05 + 0.6 * util))
        temperature = 32.0 + 45.0 * util
        sample = DeviceSample(
            device_id=device_id,
            timestamp=now,
            utilization=round(util, 4),
            memory_utilization=round(util * 0.6, 4),
            memory_used=used,
            memory_free=d.memory_total - used,
            temperature=round(temperature, 1),
            temperature_memory=round(temperature + 4.0, 1),
            power_draw=round(60.0 + (d.power_limit - 60.0) * util, 1),
            power_limit=d.power_limit,
            energy=round(t * (60.0 + (d.power_limit - 60.0) * 0.5), 1),
            clock_sm=round(1410.0 * (0.3 + 0.7 * util)),
            clock_memory=1593.0,
            fan_speed=None,
            ecc_volatile_corrected=0,
            ecc_volatile_uncorrected=0,
            ecc_aggregate_corrected=0,
            ecc_aggregate_uncorrected=0,
            pcie_tx=round(2e9 * util),
            pcie_rx=round(1e9 * util),
            throttle_reasons=(),
            processes=(),
        )
        self._apply_faults(d, sample, t, prev_t, now)
        return sample

    def _apply_faults(self, d: SimDevice, s: DeviceSample, t: float, prev_t: float | None, now: float) -> None:
        reasons: list[str] = []
        events: list[DeviceEvent] = []
        for f in d.faults:
            if f.kind == "ecc_growth" and t >= f.at_s:
                elapsed = min(t, f.at_s + f.duration_s) - f.at_s
                corrected = int(elapsed * f.rate_per_s)
                uncorrected = int(elapsed // f.uncorrected_every) if f.uncorrected_every > 0 else 0
                s.ecc_volatile_corrected = s.ecc_aggregate_corrected = corrected
                s.ecc_volatile_uncorrected = s.ecc_aggregate_uncorrected = uncorrected
                if uncorrected:
                    reasons.append(f"{uncorrected} uncorrected ECC errors")
            elif f.kind == "thermal" and f.active(t):
                s.temperature = f.temperature
                s.throttle_reasons = ("hw_thermal", "sw_thermal")
                reasons.append(f"thermal slowdown at {f.temperature:.0f} C")
            elif f.kind == "xid_storm":
                fired = _storm_count(f, t) - (0 if prev_t is None else _storm_count(f, prev_t))
                events.extend(DeviceEvent("xid", f"XID {f.code} (simulated storm)", f.code, now) for _ in range(fired))
                if fired:
                    reasons.append(f"XID {f.code} x{fired}")
        if events:
            s.events = tuple(events)
        if reasons:
            s.health, s.health_reason = Health.DEGRADED, "; ".join(reasons)


def _ort_failure(device_id: str, error: str, text: str) -> str:
    """What ONNX Runtime's session.run raises when a CUDA kernel fails (RUNTIME_EXCEPTION), for a sim device."""
    return (f"[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running the model "
            f"on {device_id}. Status Message: CUDA error {error}: {text} (simulated)")


def _storm_count(f: Fault, t: float) -> int:
    """Events of a storm scheduled at or before t: one every 1/rate_hz seconds from at_s, for duration_s."""
    if t < f.at_s:
        return 0
    n = math.floor((t - f.at_s) * f.rate_hz) + 1
    if math.isfinite(f.duration_s):
        n = min(n, math.ceil(f.duration_s * f.rate_hz))
    return n
