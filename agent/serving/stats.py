"""Per model-version inference statistics, as Triton's ModelStatistics and as OpenTelemetry metrics."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import prometheus_client

from xpud.proto.oip import pb

# Histogram buckets in seconds for request, queue and compute durations.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, n: int = 1) -> None:
        self.count += n
        self.ns += ns

    def proto(self) -> pb.StatisticDuration:
        return pb.StatisticDuration(count=self.count, ns=self.ns)


@dataclass
class BatchBucket:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


class InferenceMetrics:
    """The ``xpud_inference_*`` metrics, shared by every model of the process.

    These are on the request path, so they are plain prometheus_client instruments with their label
    children bound once per model version (a few microseconds a request), in the same registry that
    /metrics serves; the device metrics stay OpenTelemetry's observable instruments.
    """

    def __init__(self, registry: Any) -> None:
        labels = ("model", "version", "execution_provider", "deployment")
        self._held: dict[tuple[str, ...], int] = {}  # label sets in use, by how many loaded versions
        self.requests = prometheus_client.Counter(
            "xpud_inference_requests", "Inference requests by model, version and outcome", [*labels, "status"],
            registry=registry)
        self.latency = prometheus_client.Histogram(
            "xpud_inference_request_duration_seconds", "Request latency from arrival to response",
            [*labels, "status"], buckets=LATENCY_BUCKETS, registry=registry)
        self.queue = prometheus_client.Histogram(
            "xpud_inference_queue_duration_seconds", "Time a request waited in the batcher queue", labels,
            buckets=LATENCY_BUCKETS, registry=registry)
        self.batch = prometheus_client.Histogram(
            "xpud_inference_batch_size", "Rows per executed batch", labels, buckets=BATCH_BUCKETS, registry=registry)


    def bind(self, labels: tuple[str, ...]) -> None:
        self._held[labels] = self._held.get(labels, 0) + 1

    def release(self, labels: tuple[str, ...]) -> None:
        """A loaded version gone: its series go too once no other loaded version has the same labels (a reload
        in place shares them)."""
        left = self._held.get(labels, 0) - 1
        if left > 0:
            self._held[labels] = left
            return
        self._held.pop(labels, None)
        for metric, extra in ((self.requests, ("success", "failure")), (self.latency, ("success", "failure")),
                              (self.queue, ()), (self.batch, ())):
            for values in [(*labels, e) for e in extra] or [labels]:
                try:
                    metric.remove(*values)
                except KeyError:  # never observed
                    pass


class _Bound:
    """One model version's label children, looked up once."""

    def __init__(self, m: InferenceMetrics, labels: tuple[str, ...]) -> None:
        m.bind(labels)
        self.owner, self.labels = m, labels
        self.ok = m.requests.labels(*labels, "success")
        self.failed = m.requests.labels(*labels, "failure")
        self.latency_ok = m.latency.labels(*labels, "success")
        self.latency_failed = m.latency.labels(*labels, "failure")
        self.queue = m.queue.labels(*labels)
        self.batch = m.batch.labels(*labels)


class ModelStats:
    """Counters of one model version. Updated on the event loop; read by ModelStatistics and metrics."""

    def __init__(self, name: str, version: str, provider: str, metrics: InferenceMetrics | None = None,
                 model: str = "") -> None:
        """`name`: what it is served as (a deployment's name, or a repository model's); `model`: the model it
        is (the registry's name; `name` when not told)."""
        self.name, self.version = name, version
        labels = (model or name, version, provider, name)
        self._metrics = _Bound(metrics, labels) if metrics is not None else None
        self._lock = threading.Lock()
        self.success = Duration()
        self.fail = Duration()
        self.queue = Duration()
        self.compute_input = Duration()
        self.compute_infer = Duration()
        self.compute_output = Duration()
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        self.batches: dict[int, BatchBucket] = defaultdict(BatchBucket)

    def request_done(self, ok: bool, total_ns: int, queue_ns: int, compute: tuple[int, int, int] | None) -> None:
        with self._lock:
            (self.success if ok else self.fail).add(total_ns)
            if ok:
                self.queue.add(queue_ns)
                if compute is not None:
                    self.compute_input.add(compute[0])
                    self.compute_infer.add(compute[1])
                    self.compute_output.add(compute[2])
            self.last_inference_ms = int(time.time() * 1000)
        m = self._metrics
        if m is not None:
            if ok:
                m.ok.inc()
                m.latency_ok.observe(total_ns / 1e9)
                m.queue.observe(queue_ns / 1e9)
            else:
                m.failed.inc()
                m.latency_failed.observe(total_ns / 1e9)

    def close(self) -> None:
        """The version is unloaded: its series go (`InferenceMetrics.release`)."""
        if self._metrics is not None:
            self._metrics.owner.release(self._metrics.labels)
            self._metrics = None

    def batch_done(self, rows: int, compute: tuple[int, int, int]) -> None:
        with self._lock:
            self.inference_count += rows
            self.execution_count += 1
            bucket = self.batches[rows]
            bucket.compute_input.add(compute[0])
            bucket.compute_infer.add(compute[1])
            bucket.compute_output.add(compute[2])
        if self._metrics is not None:
            self._metrics.batch.observe(rows)

    def proto(self) -> pb.ModelStatistics:
        with self._lock:
            return pb.ModelStatistics(
                name=self.name,
                version=self.version,
                last_inference=self.last_inference_ms,
                inference_count=self.inference_count,
                execution_count=self.execution_count,
                inference_stats=pb.InferStatistics(
                    success=self.success.proto(),
                    fail=self.fail.proto(),
                    queue=self.queue.proto(),
                    compute_input=self.compute_input.proto(),
                    compute_infer=self.compute_infer.proto(),
                    compute_output=self.compute_output.proto(),
                ),
                batch_stats=[
                    pb.InferBatchStatistics(
                        batch_size=size,
                        compute_input=b.compute_input.proto(),
                        compute_infer=b.compute_infer.proto(),
                        compute_output=b.compute_output.proto(),
                    )
                    for size, b in sorted(self.batches.items())
                ],
            )
