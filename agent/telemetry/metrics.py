"""Device telemetry as OpenTelemetry metrics, exported in Prometheus format at ``/metrics``.

Instrument names follow the OpenTelemetry hardware semantic conventions
(``hw.gpu.utilization``, ``hw.gpu.memory.usage``, ``hw.temperature``, ``hw.power``,
``hw.errors``, ...). Every instrument is observable: its callback reads the
telemetry snapshot at scrape time, so a tick costs nothing here and a scrape
always sees one whole tick.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import prometheus_client
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from xpud import __version__
from xpud.plugins.base import DeviceInfo, DeviceSample, Health
from xpud.proto.metricshttp import MetricsServer

from .health import HealthBook, HealthState
from .inventory import PluginStatus
from .sampling import Snapshot

log = logging.getLogger(__name__)

Getter = Callable[[DeviceSample], float | int | None]
STATES = (Health.OK, Health.DEGRADED, Health.FAILED, Health.UNKNOWN)


def _field(name: str, scale: float = 1.0) -> Getter:
    def get(sample: DeviceSample) -> float | None:
        value = getattr(sample, name)
        return None if value is None else value * scale

    return get


# (instrument name, instrument type, unit, description, kinds it applies to (None: all), value, extra attributes)
_GAUGES: list[tuple[str, str, str, str, tuple[str, ...] | None, Getter, Mapping[str, str]]] = [
    ("hw.gpu.utilization", "gauge", "1", "Fraction of time the GPU was busy", ("gpu",), _field("utilization"), {}),
    ("hw.gpu.memory.utilization", "gauge", "1", "Fraction of time the GPU memory controller was busy", ("gpu",),
     _field("memory_utilization"), {}),
    ("hw.gpu.memory.usage", "updown", "By", "GPU memory in use", ("gpu",), _field("memory_used"), {}),
    ("hw.gpu.memory.free", "updown", "By", "GPU memory free", ("gpu",), _field("memory_free"), {}),
    ("hw.gpu.io", "gauge", "By/s", "PCIe throughput", ("gpu",), _field("pcie_tx"),
     {"network.io.direction": "transmit"}),
    ("hw.gpu.io", "gauge", "By/s", "PCIe throughput", ("gpu",), _field("pcie_rx"), {"network.io.direction": "receive"}),
    ("hw.gpu.clock", "gauge", "Hz", "GPU clock", ("gpu",), _field("clock_sm", 1e6), {"hw.gpu.clock.type": "sm"}),
    ("hw.gpu.clock", "gauge", "Hz", "GPU clock", ("gpu",), _field("clock_memory", 1e6),
     {"hw.gpu.clock.type": "memory"}),
    ("system.cpu.utilization", "gauge", "1", "Fraction of time the CPUs were busy", ("cpu",),
     _field("utilization"), {}),
    ("system.memory.usage", "updown", "By", "Host memory in use", ("cpu",), _field("memory_used"), {}),
    ("hw.cpu.speed", "gauge", "Hz", "CPU frequency", ("cpu",), _field("clock_sm", 1e6), {}),
    ("hw.temperature", "gauge", "Cel", "Device temperature", None, _field("temperature"), {"sensor": "core"}),
    ("hw.temperature", "gauge", "Cel", "Device temperature", None, _field("temperature_memory"), {"sensor": "memory"}),
    ("hw.power", "gauge", "W", "Power draw", None, _field("power_draw"), {}),
    ("hw.power.limit", "gauge", "W", "Enforced power limit", None, _field("power_limit"), {}),
    ("hw.energy", "counter", "J", "Energy consumed since the driver loaded", None, _field("energy"), {}),
    ("hw.fan.speed_ratio", "gauge", "1", "Fan speed as a fraction of its maximum", None, _field("fan_speed"), {}),
    ("hw.errors", "counter", "{error}", "Hardware errors", None, _field("ecc_aggregate_corrected"),
     {"error.type": "ecc_corrected"}),
    ("hw.errors", "counter", "{error}", "Hardware errors", None, _field("ecc_aggregate_uncorrected"),
     {"error.type": "ecc_uncorrected"}),
]


def device_attributes(device: DeviceInfo) -> dict[str, str]:
    attrs = {"hw.id": device.id, "hw.type": device.kind, "hw.vendor": device.vendor, "hw.model": device.model}
    if device.uuid:
        attrs["hw.uuid"] = device.uuid
    if device.driver_version:
        attrs["hw.driver_version"] = device.driver_version
    return attrs


class AgentMetrics(MetricsServer):
    """Owns the meter provider, the Prometheus registry and the ``/metrics`` HTTP server."""

    def __init__(
        self,
        devices: Callable[[], Iterable[DeviceInfo]],
        snapshot: Callable[[], Snapshot],
        plugin_statuses: Callable[[], Iterable[PluginStatus]],
        node: str,
        health: HealthBook | None = None,
    ) -> None:
        self._devices = devices
        self._snapshot = snapshot
        self._statuses = plugin_statuses
        super().__init__(prometheus_client.CollectorRegistry())
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        self._reader = PrometheusMetricReader(registry=self.registry, scope_info_enabled=False)
        resource = Resource.create({"service.name": "xpud-agent", "service.version": __version__, "host.name": node})
        self.provider = MeterProvider(metric_readers=[self._reader], resource=resource)
        meter = self.provider.get_meter("xpud.agent", __version__)
        groups: dict[tuple[str, str, str, str], list[tuple[tuple[str, ...] | None, Getter, Mapping[str, str]]]] = {}
        for name, kind, unit, desc, kinds, getter, extra in _GAUGES:
            groups.setdefault((name, kind, unit, desc), []).append((kinds, getter, extra))
        create = {
            "gauge": meter.create_observable_gauge,
            "updown": meter.create_observable_up_down_counter,
            "counter": meter.create_observable_counter,
        }
        for (name, kind, unit, desc), parts in groups.items():
            create[kind](name, [self._callback(parts)], unit=unit, description=desc)
        meter.create_observable_up_down_counter(
            "hw.gpu.memory.limit", [self._memory_total("gpu")], unit="By", description="GPU memory size"
        )
        meter.create_observable_up_down_counter(
            "system.memory.limit", [self._memory_total("cpu")], unit="By", description="Host memory size"
        )
        meter.create_observable_up_down_counter(
            "hw.status", [self._status], unit="1", description="1 for the device's current health state, else 0"
        )
        meter.create_observable_counter(
            "hw.events", [self._events], unit="{event}", description="Device events (XID, lost) since the agent started"
        )
        meter.create_observable_gauge(
            "xpud.plugin.up", [self._plugin_up], unit="1", description="1 when the plugin answers, 0 when it failed"
        )
        meter.create_observable_gauge(
            "xpud.plugin.sample.duration", [self._plugin_duration], unit="s", description="Last sample call duration"
        )
        if health is not None:
            self.registry.register(HealthCollector(health, snapshot))

    def close(self) -> None:
        super().close()
        self.provider.shutdown()

    # -- callbacks (run at scrape time, on the HTTP server's thread) --------------------

    def _pairs(self) -> Iterator[tuple[DeviceInfo, DeviceSample]]:
        samples = self._snapshot().samples
        for device in self._devices():
            sample = samples.get(device.id)
            if sample is not None:
                yield device, sample

    def _callback(self, parts: list[tuple[tuple[str, ...] | None, Getter, Mapping[str, str]]]) -> Callable[..., Any]:
        def observe(_options: CallbackOptions) -> Iterator[Observation]:
            for device, sample in self._pairs():
                for kinds, getter, extra in parts:
                    if kinds is not None and device.kind not in kinds:
                        continue
                    value = getter(sample)
                    if value is not None:
                        yield Observation(value, {**device_attributes(device), **extra})

        return observe

    def _memory_total(self, kind: str) -> Callable[[CallbackOptions], Iterator[Observation]]:
        def observe(_options: CallbackOptions) -> Iterator[Observation]:
            for device in self._devices():
                if device.kind == kind and device.memory_total is not None:
                    yield Observation(device.memory_total, device_attributes(device))

        return observe

    def _status(self, _options: CallbackOptions) -> Iterator[Observation]:
        for device, sample in self._pairs():
            for state in STATES:
                yield Observation(int(sample.health is state), {**device_attributes(device), "hw.state": state.value})

    def _events(self, _options: CallbackOptions) -> Iterator[Observation]:
        by_id = {d.id: d for d in self._devices()}
        for (device_id, kind, code), count in self._snapshot().event_totals.items():
            device = by_id.get(device_id)
            attrs = device_attributes(device) if device else {"hw.id": device_id}
            yield Observation(count, {**attrs, "event.type": kind, "event.code": code})

    def _plugin_up(self, _options: CallbackOptions) -> Iterator[Observation]:
        for status in self._statuses():
            if status.health is not Health.UNKNOWN:  # not present on this host: no series at all
                yield Observation(int(status.health is Health.OK), {"plugin": status.name})

    def _plugin_duration(self, _options: CallbackOptions) -> Iterator[Observation]:
        for status in self._statuses():
            if status.last_duration_s is not None:
                yield Observation(status.last_duration_s, {"plugin": status.name})


class HealthCollector(Collector):
    """The device health series, by the names alerts and dashboards use (``xpud_device_*``), read at scrape time
    from the health book and the last tick's snapshot."""

    def __init__(self, health: HealthBook, snapshot: Callable[[], Snapshot]) -> None:
        self._health = health
        self._snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        state = GaugeMetricFamily("xpud_device_health_state", "1 for the device's current health state, else 0",
                                  labels=["hw_id", "state"])
        for device_id, h in sorted(dict(self._health.devices).items()):
            for s in HealthState:
                state.add_metric([device_id, s.value], float(h.state is s))
        yield state
        moves = CounterMetricFamily("xpud_device_health_transitions", "Device health state transitions, by cause",
                                    labels=["hw_id", "from_state", "to_state", "reason"])
        for (device_id, before, after, cause), n in sorted(self._health.transitions.items()):
            moves.add_metric([device_id, before, after, cause], n)
        yield moves
        snapshot = self._snapshot()
        xids = CounterMetricFamily("xpud_device_xid_errors", "XID errors since the agent started",
                                   labels=["hw_id", "xid"])
        for (device_id, kind, code), n in sorted(snapshot.event_totals.items()):
            if kind == "xid":
                xids.add_metric([device_id, code], n)
        yield xids
        throttled = GaugeMetricFamily("xpud_device_throttled", "1 while the device's clocks are throttled for the "
                                      "reason, else 0", labels=["hw_id", "reason"])
        watched = self._health.policy.throttle_reasons
        for device_id, sample in sorted(snapshot.samples.items()):
            if sample.throttle_reasons is None:
                continue  # the device does not say
            active = set(sample.throttle_reasons)
            for reason in sorted(watched | active):
                throttled.add_metric([device_id, reason], float(reason in active))
        yield throttled
