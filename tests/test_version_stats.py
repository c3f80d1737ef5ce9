"""Live per-version request statistics: the router's sliding window with a stepped clock (counts, errors, rate,
percentiles, buckets rolling out, fixed memory), then over real processes: a controller and two simulated nodes,
model m in two versions at 50/50, requests through the router, each version's figures in `xpud deployments`
(a broken version 2 that refuses every request is counted as failing)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from helpers import ControllerProcess, versioned_web, wait_for
from models import onnx_bytes, scale
from xpud.controller.stats import BINS, VersionStats

ONES = np.ones((1, 4), np.float32)
N = 200  # requests through the router at 50/50


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_counts_errors_and_rate_over_the_window_then_old_buckets_roll_out() -> None:
    clock = Clock()
    stats = VersionStats(window_s=30, bucket_s=1, clock=clock)
    for _ in range(30):  # 10 answers a second for 30 s, every fifth one failing
        for i in range(10):
            stats.record("web", "2", ok=i % 5 != 0, seconds=0.010)
        clock.t += 1
    clock.t -= 1  # still within the last of those seconds
    s = stats.summary("web", "2")
    assert (s.requests, s.errors) == (300, 60)
    assert s.error_rate == pytest.approx(0.2)
    assert s.rate == pytest.approx(10.0)
    clock.t += 10  # ten seconds on: the first ten buckets are out of the window
    s = stats.summary("web", "2")
    assert (s.requests, s.errors) == (200, 40)
    assert s.rate == pytest.approx(200 / 30)
    clock.t += 30  # nothing for a whole window: nothing to show
    s = stats.summary("web", "2")
    assert (s.requests, s.errors, s.rate, s.p50_s, s.p99_s, s.error_rate) == (0, 0, 0.0, 0.0, 0.0, 0.0)
    assert stats.summary("web", "7").requests == 0 and stats.summary("nope").requests == 0


def test_a_young_window_shows_its_rate_over_its_age() -> None:
    clock = Clock()
    stats = VersionStats(window_s=30, bucket_s=1, clock=clock)
    for _ in range(3):  # 20 a second for 3 s, just after the version appeared
        for _ in range(20):
            stats.record("web", "1", ok=True, seconds=0.001)
        clock.t += 1
    clock.t -= 1
    assert stats.summary("web", "1").rate == pytest.approx(20.0)


def test_percentiles_are_read_from_the_bins_within_a_few_percent() -> None:
    clock = Clock()
    stats = VersionStats(clock=clock)
    for ms in range(1, 1001):  # 1..1000 ms, once each
        stats.record("web", "1", ok=True, seconds=ms / 1000)
    s = stats.summary("web", "1")
    assert s.p50_s == pytest.approx(0.500, rel=0.06)
    assert s.p99_s == pytest.approx(0.990, rel=0.06)
    stats.record("web", "1", ok=True, seconds=1e-7)  # outside the bins either way: counted at their ends
    stats.record("web", "1", ok=True, seconds=1e4)
    assert stats.summary("web", "1").requests == 1002


def test_versions_are_kept_apart_and_summed_for_the_deployment() -> None:
    clock = Clock()
    stats = VersionStats(clock=clock)
    for _ in range(30):
        stats.record("web", "1", ok=True, seconds=0.002)
    for _ in range(10):
        stats.record("web", "2", ok=False, seconds=0.200)
    one, two, both = stats.summary("web", "1"), stats.summary("web", "2"), stats.summary("web")
    assert (one.requests, one.errors, two.requests, two.errors) == (30, 0, 10, 10)
    assert one.p99_s == pytest.approx(0.002, rel=0.06) and two.p50_s == pytest.approx(0.2, rel=0.06)
    assert (both.requests, both.errors) == (40, 10) and both.error_rate == 0.25
    stats.forget("web")
    assert stats.summary("web").requests == 0


def test_memory_stays_fixed_however_many_requests_pass() -> None:
    clock = Clock()
    stats = VersionStats(window_s=30, bucket_s=1, clock=clock)
    for i in range(100_000):  # 100 s of 1,000 a second
        clock.t = 1000.0 + i / 1000
        stats.record("web", "1", ok=True, seconds=0.001 * (1 + i % 50))
    window = stats._windows["web"]["1"]
    assert len(window.epochs) == 30 and all(b is None or len(b) == BINS for b in window.latency)
    s = stats.summary("web", "1")
    assert 29_000 <= s.requests <= 30_000 and s.rate == pytest.approx(1000, rel=0.05)


def test_a_bad_window_is_refused() -> None:
    for window_s, bucket_s in ((0, 1), (10, 0), (1, 2)):
        with pytest.raises(ValueError):
            VersionStats(window_s=window_s, bucket_s=bucket_s)


# -- over real processes -------------------------------------------------------------------------------------------
def versions(c: ControllerProcess) -> dict[str, dict]:
    return {v["version"]: v for v in c.deployment("web").get("versions", [])}


def split_ready(c: ControllerProcess, want: dict[str, int]) -> dict[str, dict] | None:
    d = c.deployment("web")
    vs = versions(c)
    ok = set(vs) == set(want) and all(vs[v]["weight"] == w and vs[v].get("ready", 0) >= 1 for v, w in want.items())
    return vs if ok and d.get("phase") == "Running" else None


@pytest.fixture
def two_versions(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A controller, two simulated nodes, deployment web of m: version 1 doubles its input, version 2 takes five
    columns (a changed contract: every request of four is refused), at 50/50."""
    started: list = []
    try:
        c = versioned_web(tmp_path, started, {"1": onnx_bytes(scale(4, 2.0)), "2": onnx_bytes(scale(5, 3.0))})
        wait_for(lambda: split_ready(c, {"1": 100}), timeout=60, what="web Running on version 1")
        result = c.admin("traffic", "web", "1=50", "2=50")
        assert result.returncode == 0, result.stderr
        wait_for(lambda: split_ready(c, {"1": 50, "2": 50}), timeout=60, what="both versions ready")
        yield c
    finally:
        for proc in reversed(started):
            proc.kill()


def test_each_version_s_requests_errors_and_latency_through_the_router(two_versions: ControllerProcess) -> None:
    c = two_versions
    before = versions(c)
    assert all(v.get("requests", 0) == 0 for v in before.values()), before
    outcome: Counter[str] = Counter()
    with grpcclient.InferenceServerClient(c.inference_url) as client:
        x = grpcclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(ONES)
        for _ in range(N):
            try:
                y = client.infer("web", [x]).as_numpy("y")
                assert y is not None and float(y[0][0]) == 2.0  # only version 1 answers four columns
                outcome["ok"] += 1
            except InferenceServerException:
                outcome["failed"] += 1
    # binomial(200, 0.5): mean 100, standard deviation ~7; 5 deviations either way
    assert 65 <= outcome["failed"] <= 135 and outcome["ok"] + outcome["failed"] == N, outcome
    vs = versions(c)
    one, two = vs["1"], vs["2"]
    assert one["requests"] == outcome["ok"] and two["requests"] == outcome["failed"], (vs, outcome)
    assert one.get("error_rate", 0) == 0 and two["error_rate"] == 1.0
    assert one["request_rate"] > 0 and two["request_rate"] > 0
    assert 0 < one["p50_ms"] <= one["p99_ms"] and 0 < two["p50_ms"] <= two["p99_ms"]
    table = c.admin("deployments").stdout
    lines = table.splitlines()
    line_one = next(line for line in lines if line.strip().startswith("version 1:"))
    line_two = next(line for line in lines if line.strip().startswith("version 2:"))
    assert "weight 50%" in line_one and "replicas 1/1" in line_one and "req/s" in line_one, table
    assert "errors 0.0%" in line_one and f"of {outcome['ok']}" in line_one and "p99" in line_one, table
    assert "errors 100.0%" in line_two and f"of {outcome['failed']}" in line_two, table
