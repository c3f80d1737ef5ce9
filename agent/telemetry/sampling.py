"""One sampling tick per interval over all plugins; keeps the latest samples and running totals.

The tick runs on the event loop and awaits the plugins, whose blocking calls
run in their own threads (see inventory). Consumers (the Prometheus
collector, the controller link) read ``snapshot``: an immutable mapping
swapped whole each tick, so readers on other threads never see half a tick.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from xpud.plugins.base import DeviceSample

from .health import HealthBook
from .inventory import Inventory

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """What the last tick saw: the latest sample per device and cumulative event counts."""

    tick: int = 0
    timestamp: float = 0.0
    samples: Mapping[str, DeviceSample] = field(default_factory=dict)
    # (device_id, event kind, code or "") -> events since the agent started
    event_totals: Mapping[tuple[str, str, str], int] = field(default_factory=dict)


class Telemetry:
    """The sampling loop. ``run`` ticks every ``interval`` seconds until ``stop`` is set."""

    def __init__(
        self,
        inventory: Inventory,
        interval: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_tick: Callable[[Snapshot], Awaitable[None] | None] | None = None,
        health: HealthBook | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("telemetry interval must be > 0 seconds")
        self.inventory = inventory
        self.interval = interval
        self._clock = clock
        self.on_tick = on_tick
        self.health = health or HealthBook()  # each device's health state, judged every tick
        self._totals: Counter[tuple[str, str, str]] = Counter()
        self.snapshot = Snapshot()

    async def tick(self) -> Snapshot:
        samples = await self.inventory.sample()
        for sample in samples:
            for event in sample.events:
                self._totals[(sample.device_id, event.kind, "" if event.code is None else str(event.code))] += 1
        self.health.observe(samples, self._clock())  # before the snapshot: samples carry their health state
        self.snapshot = Snapshot(
            tick=self.snapshot.tick + 1,
            timestamp=time.time(),
            samples=MappingProxyType({s.device_id: s for s in samples}),
            event_totals=MappingProxyType(dict(self._totals)),
        )
        if self.on_tick is not None:
            result = self.on_tick(self.snapshot)
            if result is not None:
                await result
        return self.snapshot

    def inference(self, device_id: str, ok: bool, count: int = 1) -> None:
        """``count`` requests that ran on ``device_id`` ended (ok, or the device failed the run): on the loop, by
        this loop's clock, into the health book the ticks judge."""
        self.health.inference(device_id, ok, self._clock(), count)

    async def run(self, stop: asyncio.Event) -> None:
        """Tick on a fixed schedule (no drift); a slow tick skips the slots it overran."""
        next_at = self._clock()
        if self.snapshot.tick:  # a tick was just taken (at start-up): keep the schedule
            next_at += self.interval
            await self._sleep_until(next_at, stop)
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:  # never let one bad tick end telemetry
                log.exception("telemetry tick failed")
            next_at += self.interval
            now = self._clock()
            if next_at <= now:
                next_at = now + self.interval - ((now - next_at) % self.interval)
            await self._sleep_until(next_at, stop)

    async def _sleep_until(self, deadline: float, stop: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(deadline - self._clock(), 0))
        except TimeoutError:
            pass
