"""Live request statistics per deployment and model version, as the router sees them: over a sliding window.

Each (deployment, version) keeps a ring of `window_s / bucket_s` buckets (30 of 1 s by default); a bucket holds
its requests, its errors (answers other than OK) and a latency histogram with log-spaced bins (10% apart, from
0.1 ms to 100 s), so memory stays fixed however many requests pass, and a percentile is read to within ~5%.
A bucket is reused once the window has moved past it. The clock is injected (tests step it).
"""

from __future__ import annotations

import math
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass

MIN_S = 1e-4  # the first bin's upper bound: faster answers are counted there
GROWTH = 1.1  # each bin's bound is 10% above the one before
BINS = math.ceil(math.log(100.0 / MIN_S) / math.log(GROWTH)) + 2  # + below MIN_S and above 100 s
_LOG_GROWTH = math.log(GROWTH)


def _bin(seconds: float) -> int:
    if seconds <= MIN_S:
        return 0
    return min(BINS - 1, 1 + int(math.log(seconds / MIN_S) / _LOG_GROWTH))


def _bin_value(index: int) -> float:
    """A bin's representative latency: the geometric middle of its bounds (the first and last: their bound)."""
    if index == 0:
        return MIN_S
    if index == BINS - 1:
        return MIN_S * GROWTH ** (BINS - 2)
    return MIN_S * GROWTH ** (index - 0.5)


@dataclass(frozen=True)
class Summary:
    """What one version (or a whole deployment) did over the window."""

    requests: int = 0
    errors: int = 0
    rate: float = 0.0  # requests per second
    p50_s: float = 0.0  # 0: no request in the window
    p99_s: float = 0.0

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class Window:
    """One version's buckets: requests, errors and latency bins per `bucket_s` slot of the last `slots`."""

    __slots__ = ("epochs", "errors", "first", "latency", "requests")

    def __init__(self, slots: int, first: int) -> None:
        self.epochs = [-1] * slots  # the bucket number each slot holds (-1: none yet)
        self.requests = [0] * slots
        self.errors = [0] * slots
        self.latency: list[list[int] | None] = [None] * slots  # allocated on a slot's first request
        self.first = first  # the bucket of the first request: a young window's rate is over its age

    def add(self, bucket: int, ok: bool, seconds: float) -> None:
        slot = bucket % len(self.epochs)
        if self.epochs[slot] != bucket:  # a slot from a window past: reused
            self.epochs[slot] = bucket
            self.requests[slot] = self.errors[slot] = 0
            bins = self.latency[slot]
            if bins is not None:
                bins[:] = [0] * BINS
        bins = self.latency[slot]
        if bins is None:
            bins = self.latency[slot] = [0] * BINS
        self.requests[slot] += 1
        self.errors[slot] += not ok
        bins[_bin(seconds)] += 1

    def live(self, bucket: int) -> list[int]:
        """The slots whose bucket is within the window that ends with ``bucket``."""
        slots = len(self.epochs)
        return [s for s, e in enumerate(self.epochs) if 0 <= bucket - e < slots]


def _percentile(bins: list[int], total: int, q: float) -> float:
    rank = max(1, math.ceil(q * total))
    seen = 0
    for index, n in enumerate(bins):
        seen += n
        if seen >= rank:
            return _bin_value(index)
    return _bin_value(BINS - 1)


class VersionStats:
    """Every deployment version's window, recorded by the router (`record`), read by the admin API and the
    auto-rollback guard (`summary`)."""

    def __init__(self, window_s: float = 30.0, bucket_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if window_s <= 0 or bucket_s <= 0 or bucket_s > window_s:
            raise ValueError(f"a window of {window_s} s in buckets of {bucket_s} s")
        self.window_s, self.bucket_s, self.clock = window_s, bucket_s, clock
        self.slots = max(1, round(window_s / bucket_s))
        self._windows: dict[str, dict[str, Window]] = {}  # deployment -> version -> window

    def _bucket(self) -> int:
        return int(self.clock() // self.bucket_s)

    def record(self, deployment: str, version: str, ok: bool, seconds: float) -> None:
        """One answer of ``version`` of ``deployment`` (``ok``: status OK) that took ``seconds``."""
        bucket = self._bucket()
        versions = self._windows.setdefault(deployment, {})
        window = versions.get(version)
        if window is None:
            window = versions[version] = Window(self.slots, bucket)
        window.add(bucket, ok, seconds)

    def summary(self, deployment: str, version: str | None = None) -> Summary:
        """``version``'s figures over the window (None: every version of the deployment together)."""
        versions = self._windows.get(deployment, {})
        windows = list(versions.values()) if version is None else [w for w in (versions.get(version),) if w]
        bucket = self._bucket()
        requests = errors = 0
        bins = [0] * BINS
        first = bucket
        for w in windows:
            live = w.live(bucket)
            if live:
                first = min(first, w.first)
            for s in live:
                requests += w.requests[s]
                errors += w.errors[s]
                slot_bins = w.latency[s]
                if slot_bins is not None:
                    bins = list(map(operator.add, bins, slot_bins))
        if not requests:
            return Summary()
        # a window younger than its length (the controller just started, a new version): rate over its age
        span = min(self.slots, bucket - first + 1) * self.bucket_s
        return Summary(requests, errors, requests / span, _percentile(bins, requests, 0.50),
                       _percentile(bins, requests, 0.99))

    def forget(self, deployment: str) -> None:
        """Drop a deleted deployment's windows."""
        self._windows.pop(deployment, None)
