"""The controller's ``/metrics``: the pool, deployments, scheduling passes, events and the router (Prometheus).

The state gauges are read at scrape time: the scrape runs on prometheus_client's HTTP thread, so `StateCollector`
asks the controller's event loop for a snapshot of plain tuples and renders that, never touching the live state
off the loop. Router requests and scheduling passes are counted as they happen (prometheus_client instruments are
thread-safe); the router's label children are looked up once per (deployment, code) to keep a request cheap.
The names are a contract: README "Metrics, alerts and dashboards" lists them, deploy/ uses them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import prometheus_client
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from xpud.proto.metricshttp import MetricsServer

from .core import NODE_LOST, NODE_READY, NODE_SUSPECT
from .pool import health
from .views import deployment_status

if TYPE_CHECKING:
    from .control import Controller

log = logging.getLogger(__name__)

DEFAULT_PORT = 8003
NODE_STATES = (NODE_READY, NODE_SUSPECT, NODE_LOST)
# seconds: a routed request is a forward to an agent (sub-millisecond on loopback) up to its 30 s timeout
ROUTER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5, 10, 30)
PASS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5, 10)
SNAPSHOT_TIMEOUT_S = 5.0  # a loop this busy for this long gets a scrape without the state gauges (and a log line)


class RouterMetrics:
    """``xpud_router_requests_total{model,code,deployment,version}`` and
    ``xpud_router_request_duration_seconds{model,deployment,version}``: one count and one observation per client
    inference request (after the router's one retry, if any). ``model`` and ``version`` are the model name and
    version of the replica that answered (when none did: the deployment's model, and ""). A deployment's series
    go once it is deleted (`forget`)."""

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.requests = prometheus_client.Counter(
            "xpud_router_requests", "Inference requests through the router by deployment and gRPC status code",
            ["model", "code", "deployment", "version"], registry=registry)
        self.duration = prometheus_client.Histogram(
            "xpud_router_request_duration_seconds", "Time the router took to answer an inference request",
            ["model", "deployment", "version"], buckets=ROUTER_BUCKETS, registry=registry)
        self._bound: dict[tuple[str, grpc.StatusCode, str, str], tuple[Any, Any]] = {}

    def done(self, deployment: str, code: grpc.StatusCode, seconds: float, version: str = "",
             model: str = "") -> None:
        """One answer of `deployment` (model name `model`: the deployment's own name when not told)."""
        model = model or deployment
        key = (deployment, code, version, model)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = (self.requests.labels(model, code.name, deployment, version),
                                        self.duration.labels(model, deployment, version))
        bound[0].inc()
        bound[1].observe(seconds)

    def forget(self, deployment: str) -> None:
        """Drop a deleted deployment's series: /metrics shows what exists."""
        for key in [k for k in self._bound if k[0] == deployment]:
            _, code, version, model = key
            del self._bound[key]
            self.requests.remove(model, code.name, deployment, version)
            self.duration.remove(model, deployment, version)


@dataclass(frozen=True)
class Snapshot:
    """What the state gauges show, copied on the event loop."""

    nodes: tuple[tuple[str, str], ...]  # (node, state)
    devices: tuple[tuple[tuple[str, str, str], int], ...]  # ((node, kind, health), count)
    deployments: tuple[tuple[str, int, int], ...]  # (deployment, desired, ready)
    events: tuple[tuple[str, int], ...]  # (kind, count since this process started)


def snapshot(controller: Controller) -> Snapshot:
    """Read the controller's state; on its event loop only."""
    state = controller.state
    nodes: list[tuple[str, str]] = []
    devices: dict[tuple[str, str, str], int] = {}
    for n in state.pool.nodes.values():
        nodes.append((n.name, n.state))
        for d in n.devices.values():
            key = (n.name, d.kind, health(n.samples.get(d.id)))
            devices[key] = devices.get(key, 0) + 1
    deployments = tuple((name, spec.replicas, deployment_status(state, name).ready)
                        for name, spec in sorted(state.specs.items()))
    return Snapshot(tuple(nodes), tuple(devices.items()), deployments, tuple(controller.events.counts.items()))


class StateCollector:
    """Renders a `Snapshot` taken on the controller's loop at each scrape."""

    def __init__(self, controller: Controller, loop: asyncio.AbstractEventLoop) -> None:
        self.controller, self.loop = controller, loop
        self._late = False  # logged once per run of late snapshots

    def _snapshot(self) -> Snapshot | None:
        try:
            on_loop = asyncio.get_running_loop() is self.loop
        except RuntimeError:  # no loop in this thread: prometheus_client's HTTP thread
            on_loop = False
        if on_loop:  # rendered on the loop itself (render() in a test)
            return snapshot(self.controller)
        future: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

        def take() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(snapshot(self.controller))
                except Exception as exc:  # a bug of ours: the scrape says so, the loop goes on
                    future.set_exception(exc)

        try:
            self.loop.call_soon_threadsafe(take)
            taken = future.result(SNAPSHOT_TIMEOUT_S)
        except RuntimeError:  # the loop is closed: the controller is stopping
            return None
        except concurrent.futures.TimeoutError:
            future.cancel()
            if not self._late:
                log.warning("/metrics: the controller's loop did not answer within %.0f s; state gauges left out",
                            SNAPSHOT_TIMEOUT_S)
            self._late = True
            return None
        self._late = False
        return taken

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        if snap is None:
            return
        by_state = dict.fromkeys(NODE_STATES, 0)
        node_state = GaugeMetricFamily("xpud_node_state", "1 for a node's current state (Ready, Suspect, Lost), "
                                       "else 0", labels=["node", "state"])
        for name, current in snap.nodes:
            by_state[current] = by_state.get(current, 0) + 1
            for s in NODE_STATES:
                node_state.add_metric([name, s], int(s == current))
        nodes = GaugeMetricFamily("xpud_nodes", "Nodes known to the controller by state", labels=["state"])
        for s, count in by_state.items():
            nodes.add_metric([s], count)
        devices = GaugeMetricFamily("xpud_devices", "Devices by node, kind and health (ok, degraded, failed, "
                                    "unknown) as the controller last heard", labels=["node", "kind", "health"])
        for (node, kind, state), count in snap.devices:
            devices.add_metric([node, kind, state], count)
        desired = GaugeMetricFamily("xpud_deployment_replicas_desired", "Replicas a deployment asks for",
                                    labels=["deployment"])
        ready = GaugeMetricFamily("xpud_deployment_replicas_ready", "A deployment's replicas that are loaded and "
                                  "ready on their node", labels=["deployment"])
        for name, want, have in snap.deployments:
            desired.add_metric([name], want)
            ready.add_metric([name], have)
        events = CounterMetricFamily("xpud_events", "Events recorded (`xpud events`) by kind since the controller "
                                     "started", labels=["kind"])
        for kind, count in sorted(snap.events):
            events.add_metric([kind], count)
        yield from (nodes, node_state, devices, desired, ready, events)


class ControllerMetrics(MetricsServer):
    """Owns the controller's registry and its ``/metrics`` HTTP server."""

    def __init__(self, controller: Controller, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(prometheus_client.CollectorRegistry())
        prometheus_client.ProcessCollector(registry=self.registry)
        prometheus_client.PlatformCollector(registry=self.registry)
        self.registry.register(StateCollector(controller, loop))
        self.router = RouterMetrics(self.registry)
        self.passes = prometheus_client.Counter("xpud_scheduler_passes", "Scheduling passes run",
                                                registry=self.registry)
        self.pass_duration = prometheus_client.Histogram(
            "xpud_scheduler_pass_duration_seconds", "Time a scheduling pass took, from its inputs to its pushes",
            buckets=PASS_BUCKETS, registry=self.registry)
        controller.scheduling.timed = self.pass_done

    def pass_done(self, seconds: float) -> None:
        self.passes.inc()
        self.pass_duration.observe(seconds)
