"""Telemetry ticks, deltas against the acknowledged sample, and their wire form."""

from __future__ import annotations

import asyncio

from xpud.agent.telemetry.inventory import Inventory, PluginSlot
from xpud.agent.telemetry.sampling import Telemetry
from xpud.agent.telemetry.wire import device_info_to_proto, encode_sample, sample_to_proto
from xpud.plugins.base import DeviceSample, Health, changed_fields
from xpud.plugins.sim import SimPlugin
from xpud.proto import telemetry_pb2 as pb
from xpud.proto.samples import apply_delta


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def sim_inventory(clock, scenario):  # type: ignore[no-untyped-def]
    return Inventory([PluginSlot("sim", lambda o: SimPlugin(o, clock=clock), {"scenario": scenario})])


async def test_ticks_count_events_and_swap_snapshots():
    clock = Clock()
    storm = {"kind": "xid_storm", "device": 0, "at_s": 0, "duration_s": 100, "rate_hz": 2, "code": 31}
    inv = sim_inventory(clock, {"count": 2, "faults": [storm]})
    await inv.discover()
    telemetry = Telemetry(inv, 1.0)
    first = await telemetry.tick()
    clock.t = 3.0
    second = await telemetry.tick()
    assert first is not second and second.tick == 2
    assert set(second.samples) == {"sim:0", "sim:1"}
    assert second.event_totals[("sim:0", "xid", "31")] == 7  # t=0 .. t=3 at 2 Hz
    assert first.event_totals[("sim:0", "xid", "31")] == 1  # an old snapshot never changes
    await inv.close()


async def test_run_stops_promptly_and_keeps_its_schedule():
    inv = sim_inventory(Clock(), {"count": 1})
    await inv.discover()
    telemetry = Telemetry(inv, 0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(telemetry.run(stop))
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(task, 1)
    assert 3 <= telemetry.snapshot.tick <= 8
    await inv.close()


def test_changed_fields_is_a_delta():
    a = DeviceSample("g", 1.0, utilization=0.5, temperature=50.0, memory_used=10)
    b = DeviceSample("g", 2.0, utilization=0.5, temperature=51.0, memory_used=None)
    assert changed_fields(a, b) == {"timestamp": 2.0, "temperature": 51.0, "memory_used": None}
    assert len(changed_fields(None, b)) > 20


def test_a_delta_holds_only_what_changed_since_the_peer_last_got():
    a = DeviceSample("g", 1.0, utilization=0.5, temperature=50.0)
    assert encode_sample(a, None).full  # the peer has nothing yet (a new stream): a full sample
    assert encode_sample(DeviceSample("g", 2.0, utilization=0.5, temperature=50.0), a) is None  # only the clock
    hotter = encode_sample(DeviceSample("g", 3.0, utilization=0.5, temperature=52.0), a)
    assert hotter is not None and not hotter.full
    assert {f.name for f, _ in hotter.ListFields()} == {"device_id", "timestamp", "temperature"}


def test_wire_round_trip_of_deltas_equals_the_full_sample():
    clock = Clock()
    faults = [{"kind": "lost", "device": 0, "at_s": 20}, {"kind": "thermal", "device": 0, "at_s": 5,
                                                         "duration_s": 5, "temperature": 99}]
    scenario = {"count": 1, "faults": faults, "load": {"shape": "constant", "value": 0.3}}
    plugin = SimPlugin({"scenario": scenario}, clock=clock)
    device = plugin.discover()[0]
    info = device_info_to_proto(device)
    assert info.memory_total == device.memory_total and not info.HasField("firmware_version")
    held: pb.DeviceSample | None = None
    previous = None
    for t in [0, 1, 6, 7, 12, 21, 22]:
        clock.t = t
        (sample,) = plugin.sample()
        delta = encode_sample(sample, previous)
        full = sample_to_proto(sample)
        if delta is None:  # nothing but the clock moved (a lost GPU says nothing new): nothing is sent
            assert held is not None and t == 22
            held.timestamp = full.timestamp
            held.ClearField("events")
            assert held == full
            continue
        held = apply_delta(held, delta)
        assert held == full, f"t={t}"
        previous = sample
        assert delta.ByteSize() <= full.ByteSize()
        if t == 7:
            fields = {f.name for f, _ in delta.ListFields()}
            assert fields == {"device_id", "timestamp", "energy"}  # only what moved
            assert delta.ByteSize() < full.ByteSize() / 4
        if t == 21:
            assert held.health == pb.HEALTH_FAILED and not held.HasField("utilization")
    assert previous is not None and previous.health is Health.FAILED


def test_a_delta_names_fields_that_became_absent():
    a = DeviceSample("g", 1.0, utilization=0.5, temperature=50.0, throttle_reasons=("sw_power_cap",))
    b = DeviceSample("g", 2.0, utilization=0.5, temperature=None, throttle_reasons=())
    delta = encode_sample(b, a)
    assert delta is not None and not delta.full and list(delta.cleared) == ["temperature"]
    held = apply_delta(sample_to_proto(a), delta)
    assert held == sample_to_proto(b) and held.HasField("throttle_reasons") and not held.throttle_reasons.reasons
    assert encode_sample(DeviceSample("g", 3.0, utilization=0.5, throttle_reasons=()), b) is None  # only time moved


async def test_ticks_judge_each_device_and_its_state_travels_in_deltas():
    from xpud.agent.telemetry.health import HealthBook, HealthPolicy
    from xpud.agent.telemetry.metrics import HealthCollector

    clock = Clock()
    storm = {"kind": "xid_storm", "device": 1, "at_s": 1, "duration_s": 3, "rate_hz": 2, "code": 13}
    inv = sim_inventory(clock, {"count": 2, "faults": [storm]})
    await inv.discover()
    book = HealthBook(HealthPolicy(hold_s=2, xid_window_s=10))
    telemetry = Telemetry(inv, 1.0, clock=clock, health=book)
    held: pb.DeviceSample | None = None
    sent = None
    seen = []
    for t in range(10):
        clock.t = float(t)
        snapshot = await telemetry.tick()
        sample = snapshot.samples["sim:1"]
        delta = encode_sample(sample, sent)
        if delta is not None:
            held, sent = apply_delta(held, delta), sample
        assert held is not None
        seen.append((sample.health_state, pb.DeviceHealthState.Name(held.health_state)))
        assert snapshot.samples["sim:0"].health_state == "healthy"
    states = [s for s, _ in seen]
    assert states[:2] == ["healthy", "suspect"] and "unhealthy" in states and states[-1] == "healthy"
    assert all(f"DEVICE_HEALTH_{ours.upper()}" == wire for ours, wire in seen)  # the peer always holds the state
    assert held.health_state_reason == "recovery checks passed for 2 s"
    families = {m.name: m for m in HealthCollector(book, lambda: telemetry.snapshot).collect()}
    moves = {(s.labels["from_state"], s.labels["to_state"], s.labels["reason"]) for s in
             families["xpud_device_health_transitions"].samples if s.name.endswith("_total")}
    assert moves == {("healthy", "suspect", "xid"), ("suspect", "unhealthy", "xid_storm"),
                     ("unhealthy", "recovering", "clean"), ("recovering", "healthy", "recovered")}
    xids = [s for s in families["xpud_device_xid_errors"].samples if s.name.endswith("_total")]
    assert [(s.labels, s.value) for s in xids] == [({"hw_id": "sim:1", "xid": "13"}, 6)]
    current = {s.labels["state"]: s.value for s in families["xpud_device_health_state"].samples
               if s.labels["hw_id"] == "sim:1"}
    assert current == {"healthy": 1, "suspect": 0, "unhealthy": 0, "recovering": 0}
