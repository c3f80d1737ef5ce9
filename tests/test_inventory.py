"""A plugin that crashes, hangs, or is missing never takes the agent down."""

from __future__ import annotations

import asyncio
import threading

from xpud.agent.telemetry.inventory import Inventory, PluginSlot, available_plugins, plugin_slots
from xpud.plugins.base import DeviceInfo, DeviceSample, Health, PluginUnavailable
from xpud.plugins.sim import SimPlugin


class Scripted:
    """A plugin whose sample() does what the test says: answer, raise, or block."""

    name = "scripted"

    def __init__(self, options=None):  # type: ignore[no-untyped-def]
        self.mode = "ok"
        self.release = threading.Event()
        self.closed = False

    def discover(self):  # type: ignore[no-untyped-def]
        return [DeviceInfo("scripted:0", "acme", "npu", "Acme NPU", self.name)]

    def sample(self):  # type: ignore[no-untyped-def]
        if self.mode == "raise":
            raise RuntimeError("driver exploded")
        if self.mode == "hang":
            self.release.wait(10)
        return [DeviceSample("scripted:0", 1.0, utilization=0.3)]

    def close(self):  # type: ignore[no-untyped-def]
        self.closed = True


def make(*extra: PluginSlot, budget: float = 0.2):  # type: ignore[no-untyped-def]
    instance = Scripted()
    slots = [PluginSlot("scripted", lambda _o: instance), PluginSlot("sim", SimPlugin, {"count": 2}), *extra]
    return Inventory(slots, sample_budget_s=budget), instance


async def test_crashing_plugin_is_reported_and_others_go_on():
    inv, scripted = make()
    await inv.discover()
    assert [d.id for d in inv.devices] == ["scripted:0", "sim:0", "sim:1"]
    scripted.mode = "raise"
    samples = {s.device_id: s for s in await inv.sample()}
    assert samples["scripted:0"].health is Health.UNKNOWN
    assert "driver exploded" in samples["scripted:0"].health_reason
    assert samples["sim:0"].health is Health.OK and samples["sim:1"].utilization is not None
    status = {s.name: s for s in inv.statuses}["scripted"]
    assert status.health is Health.FAILED and "RuntimeError: driver exploded" in status.reason
    scripted.mode = "ok"
    samples = {s.device_id: s for s in await inv.sample()}
    assert samples["scripted:0"].utilization == 0.3
    assert {s.name: s for s in inv.statuses}["scripted"].health is Health.OK  # recovers
    await inv.close()
    assert scripted.closed


async def test_hanging_plugin_times_out_without_stacking_calls():
    inv, scripted = make(budget=0.1)
    await inv.discover()
    scripted.mode = "hang"
    loop = asyncio.get_running_loop()
    started = loop.time()
    samples = {s.device_id: s for s in await inv.sample()}
    assert loop.time() - started < 2
    assert "did not answer within its 0.1 s sample budget" in samples["scripted:0"].health_reason
    assert samples["sim:0"].health is Health.OK
    samples = {s.device_id: s for s in await inv.sample()}  # still stuck: not called again
    assert "is hung" in samples["scripted:0"].health_reason
    scripted.mode = "ok"
    scripted.release.set()
    await asyncio.sleep(0.05)
    samples = {s.device_id: s for s in await inv.sample()}
    assert samples["scripted:0"].health is Health.OK
    await inv.close()


async def test_unavailable_missing_and_broken_plugins():
    def unavailable(_o):  # type: ignore[no-untyped-def]
        class P(Scripted):
            def discover(self):  # type: ignore[no-untyped-def]
                raise PluginUnavailable("no such hardware")

        return P()

    def broken(_o):  # type: ignore[no-untyped-def]
        raise ImportError("libfoo.so: cannot open shared object file")

    inv, _ = make(PluginSlot("absent", unavailable), PluginSlot("broken", broken))
    await inv.discover()
    status = {s.name: s for s in inv.statuses}
    assert status["absent"].health is Health.UNKNOWN and "no such hardware" in status["absent"].reason
    assert status["broken"].health is Health.FAILED and "libfoo.so" in status["broken"].reason
    assert len(await inv.sample()) == 3
    await inv.close()


def test_entry_points_register_the_builtin_plugins_and_unknown_names_fail():
    assert {"cpu", "nvidia", "jetson", "amd", "sim"} <= set(available_plugins())
    slots = {s.name: s for s in plugin_slots(["cpu", "nope"], {})}
    assert slots["cpu"].factory is not None
    assert slots["nope"].status.health is Health.FAILED and "no plugin named 'nope'" in slots["nope"].status.reason
