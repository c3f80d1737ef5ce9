"""Runs the device plugins: loads them by entry point, discovers, samples under a time budget.

A plugin that raises, hangs or cannot even be imported never takes the agent
down: each plugin has one worker thread of its own, every call waits at most
its budget, a call still running is not stacked with another, and the failure
is reported as plugin health and as the health of that plugin's devices.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from xpud.plugins.base import ENTRY_POINT_GROUP, DeviceInfo, DevicePlugin, DeviceSample, Health, PluginUnavailable

log = logging.getLogger(__name__)

DEFAULT_DISCOVER_BUDGET_S = 15.0
DEFAULT_SAMPLE_BUDGET_S = 0.5


@dataclass
class PluginStatus:
    """Health of one plugin as the operator sees it in `xpud devices` and metrics."""

    name: str
    health: Health = Health.UNKNOWN
    reason: str | None = None
    devices: int = 0
    last_duration_s: float | None = None
    failures: int = 0


@dataclass
class PluginSlot:
    """One plugin with its own worker thread and the call currently running in it, if any."""

    name: str
    factory: Callable[..., DevicePlugin] | None
    options: Mapping[str, Any] = field(default_factory=dict)
    plugin: DevicePlugin | None = None
    devices: list[DeviceInfo] = field(default_factory=list)
    status: PluginStatus = field(init=False)
    executor: ThreadPoolExecutor = field(init=False)
    busy: asyncio.Future[Any] | None = None
    busy_since: float = 0.0

    def __post_init__(self) -> None:
        self.status = PluginStatus(self.name)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"plugin-{self.name}")


def available_plugins() -> dict[str, Any]:
    """Entry points of the ``xpud.plugins`` group by name (built-in and third-party alike)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def plugin_slots(enabled: Iterable[str], options: Mapping[str, Mapping[str, Any]]) -> list[PluginSlot]:
    """Slots for the enabled plugins; one that cannot be imported gets a FAILED status, not an exception."""
    eps = available_plugins()
    slots = []
    for name in enabled:
        ep = eps.get(name)
        slot = PluginSlot(name, None, options.get(name, {}))
        if ep is None:
            slot.status.health, slot.status.reason = Health.FAILED, f"no plugin named {name!r} is installed"
        else:
            try:
                slot.factory = ep.load()
            except Exception as exc:  # a broken third-party package must not stop the agent
                log.error("plugin %s failed to import: %s", name, exc)
                slot.status.health, slot.status.reason = Health.FAILED, f"import failed: {exc}"
        slots.append(slot)
    return slots


class Inventory:
    """The devices of this node and their latest samples, across all plugins."""

    def __init__(
        self,
        slots: list[PluginSlot],
        *,
        sample_budget_s: float = DEFAULT_SAMPLE_BUDGET_S,
        discover_budget_s: float = DEFAULT_DISCOVER_BUDGET_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = slots
        self.sample_budget_s = sample_budget_s
        self.discover_budget_s = discover_budget_s
        self._clock = clock

    @property
    def devices(self) -> list[DeviceInfo]:
        return [d for s in self.slots for d in s.devices]

    @property
    def statuses(self) -> list[PluginStatus]:
        return [s.status for s in self.slots]

    async def discover(self) -> list[DeviceInfo]:
        await asyncio.gather(*(self._discover(s) for s in self.slots if s.factory is not None))
        return self.devices

    async def sample(self) -> list[DeviceSample]:
        results = await asyncio.gather(*(self._sample(s) for s in self.slots if s.plugin is not None))
        return [sample for samples in results for sample in samples]

    async def close(self) -> None:
        for slot in self.slots:
            if slot.plugin is not None and slot.busy is None:
                try:
                    await self._call(slot, slot.plugin.close, self.discover_budget_s)
                except Exception as exc:
                    log.warning("plugin %s failed to close: %s", slot.name, exc)
            slot.executor.shutdown(wait=False, cancel_futures=True)

    async def _discover(self, slot: PluginSlot) -> None:
        assert slot.factory is not None

        def create_and_discover() -> tuple[DevicePlugin, list[DeviceInfo]]:
            plugin = slot.factory(slot.options)  # type: ignore[misc]
            return plugin, plugin.discover()

        try:
            slot.plugin, slot.devices = await self._call(slot, create_and_discover, self.discover_budget_s)
        except PluginUnavailable as exc:
            slot.status.health, slot.status.reason = Health.UNKNOWN, f"not present: {exc}"
            log.info("plugin %s: not present on this host (%s)", slot.name, exc)
            return
        except TimeoutError:
            self._fail(slot, f"discovery took longer than its {self.discover_budget_s:g} s budget")
            return
        except Exception as exc:
            self._fail(slot, f"discovery failed: {type(exc).__name__}: {exc}")
            return
        slot.status.health, slot.status.reason = Health.OK, None
        slot.status.devices = len(slot.devices)
        log.info("plugin %s: %d device(s)", slot.name, len(slot.devices))

    async def _sample(self, slot: PluginSlot) -> list[DeviceSample]:
        plugin = slot.plugin
        assert plugin is not None
        if slot.busy is not None and not slot.busy.done():
            stuck = self._clock() - slot.busy_since
            return self._failed_samples(slot, f"plugin {slot.name} is hung: its last sample call has run {stuck:.1f} s")
        started = self._clock()
        try:
            samples = await self._call(slot, plugin.sample, self.sample_budget_s)
        except TimeoutError:
            return self._failed_samples(
                slot, f"plugin {slot.name} did not answer within its {self.sample_budget_s:g} s sample budget"
            )
        except Exception as exc:
            return self._failed_samples(slot, f"plugin {slot.name} failed: {type(exc).__name__}: {exc}")
        slot.status.last_duration_s = self._clock() - started
        if slot.status.health is not Health.OK:
            log.info("plugin %s recovered", slot.name)
        slot.status.health, slot.status.reason = Health.OK, None
        return samples

    async def _call(self, slot: PluginSlot, fn: Callable[[], Any], budget: float) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(slot.executor, fn)
        slot.busy, slot.busy_since = future, self._clock()
        try:
            result = await asyncio.wait_for(asyncio.shield(future), budget)
        except TimeoutError:
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieve a late error quietly
            raise
        slot.busy = None
        return result

    def _fail(self, slot: PluginSlot, reason: str) -> None:
        slot.status.failures += 1
        if slot.status.health is not Health.FAILED or slot.status.reason != reason:
            log.error("%s", reason if reason.startswith("plugin ") else f"plugin {slot.name}: {reason}")
        slot.status.health, slot.status.reason = Health.FAILED, reason

    def _failed_samples(self, slot: PluginSlot, reason: str) -> list[DeviceSample]:
        """Every device of a failed plugin is reported with the plugin's failure as its health."""
        self._fail(slot, reason)
        now = time.time()
        return [DeviceSample(d.id, now, Health.UNKNOWN, reason) for d in slot.devices]


