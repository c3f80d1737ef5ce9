"""The sim plugin: deterministic values from a stepped clock, and injected faults."""

from __future__ import annotations

import pytest

from xpud.plugins.base import Health, PluginUnavailable
from xpud.plugins.sim import ScenarioError, SimPlugin, load_at


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def plugin(scenario, count=None):  # type: ignore[no-untyped-def]
    clock = Clock()
    options = {"scenario": scenario} if count is None else {"scenario": scenario, "count": count}
    p = SimPlugin(options, clock=clock, wall=lambda: 1.7e9)
    return p, clock


def test_discover_static_facts():
    p, _ = plugin({"count": 3, "model": "Sim L4", "memory_gb": 24, "compute_capability": "8.9"})
    devices = p.discover()
    assert [d.id for d in devices] == ["sim:0", "sim:1", "sim:2"]
    assert {d.model for d in devices} == {"Sim L4"}
    assert devices[0].memory_total == 24 * 1024**3 and devices[0].compute_capability == "8.9"
    assert len({d.uuid for d in devices}) == 3 and len({d.pci_bus_id for d in devices}) == 3


def test_count_option_overrides_the_scenario_and_zero_is_unavailable():
    p, _ = plugin("default", count=5)
    assert len(p.discover()) == 5
    with pytest.raises(PluginUnavailable):
        plugin("default", count=0)[0].discover()


def test_constant_load_gives_exact_values():
    p, _ = plugin({"count": 1, "memory_gb": 10, "power_limit_w": 100, "load": {"shape": "constant", "value": 0.4}})
    p.discover()
    s = p.sample()[0]
    assert s.utilization == 0.4
    assert s.memory_used + s.memory_free == 10 * 1024**3
    assert s.power_draw == 60 + 40 * 0.4 and s.power_limit == 100
    assert s.fan_speed is None  # like a passively cooled datacenter GPU
    assert s.health is Health.OK and s.events == ()


def test_sine_load_follows_the_clock():
    p, clock = plugin({"count": 1, "load": {"shape": "sine", "min": 0.0, "max": 1.0, "period_s": 100}})
    p.discover()
    assert p.sample()[0].utilization == 0.0
    clock.t += 50
    assert p.sample()[0].utilization == 1.0
    assert load_at({"shape": "square", "min": 0.2, "max": 0.8, "period_s": 10}, 6, 0) == 0.2
    assert load_at({"shape": "ramp", "min": 0.0, "max": 1.0, "period_s": 10}, 2.5, 0) == 0.25


def test_lost_gpu_fails_alone_with_one_event():
    p, clock = plugin({"count": 3, "faults": [{"kind": "lost", "device": 1, "at_s": 10}]})
    p.discover()
    assert all(s.health is Health.OK for s in p.sample())
    clock.t += 10
    first = p.sample()
    assert [s.health for s in first] == [Health.OK, Health.FAILED, Health.OK]
    assert "fallen off the bus" in first[1].health_reason
    assert [e.kind for e in first[1].events] == ["lost"]
    assert first[1].utilization is None and first[1].memory_used is None
    clock.t += 1
    assert p.sample()[1].events == ()  # reported once


def test_xid_storm_counts_events_exactly():
    storm = {"kind": "xid_storm", "device": 0, "at_s": 10, "duration_s": 5, "rate_hz": 4, "code": 13}
    p, clock = plugin({"count": 1, "faults": [storm]})
    p.discover()
    total = 0
    for step in [5, 5.5, 1.3, 2.2, 6, 10]:  # crosses the storm in uneven ticks
        clock.t += step
        s = p.sample()[0]
        total += len(s.events)
        if s.events:
            assert s.health is Health.DEGRADED and "XID 13" in s.health_reason
            assert {e.code for e in s.events} == {13}
    assert total == 20  # 5 s at 4 Hz


def test_ecc_growth_and_thermal():
    faults = [
        {"kind": "ecc_growth", "device": 0, "at_s": 0, "rate_per_s": 2, "uncorrected_every": 10},
        {"kind": "thermal", "device": 1, "at_s": 5, "duration_s": 5, "temperature": 97},
    ]
    p, clock = plugin({"count": 2, "faults": faults})
    p.discover()
    clock.t += 6
    a, b = p.sample()
    assert a.ecc_volatile_corrected == 12 and a.ecc_volatile_uncorrected == 0 and a.health is Health.OK
    assert b.temperature == 97 and "hw_thermal" in b.throttle_reasons and b.health is Health.DEGRADED
    clock.t += 10
    a, b = p.sample()
    assert a.ecc_aggregate_corrected == 32 and a.ecc_aggregate_uncorrected == 1 and a.health is Health.DEGRADED
    assert b.health is Health.OK and b.throttle_reasons == ()


def failures(check, runs: int) -> int:  # type: ignore[no-untyped-def]
    """How many of ``runs`` runs the check fails, each with ONNX Runtime's wording."""
    failed = 0
    for _ in range(runs):
        try:
            check()
        except RuntimeError as exc:
            assert str(exc).startswith("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION") and "CUDA error" in str(exc)
            failed += 1
    return failed


def test_inference_errors_fail_their_share_of_runs_while_active():
    fault = {"kind": "inference_errors", "device": 1, "at_s": 10, "duration_s": 5, "ratio": 0.25}
    p, clock = plugin({"count": 2, "faults": [fault]})
    p.discover()
    assert p.inference_check("sim:0") is None  # no fault can fail it: nothing to call per run
    check = p.inference_check("sim:1")
    assert check is not None and failures(check, 8) == 0  # before at_s
    clock.t += 10
    assert failures(check, 8) == 2  # a quarter, evenly spread
    clock.t += 5
    assert failures(check, 8) == 0  # ended
    assert all(s.health is Health.OK and s.events == () for s in p.sample())  # runs fail; telemetry sees nothing


def test_inference_latency_holds_each_run_while_active():
    slept: list[float] = []
    clock = Clock()
    fault = {"kind": "inference_latency", "device": 1, "at_s": 10, "duration_s": 5, "delay_ms": 30}
    p = SimPlugin({"scenario": {"count": 2, "faults": [fault]}}, clock=clock, wall=lambda: 1.7e9, sleep=slept.append)
    assert p.inference_check("sim:0") is None
    check = p.inference_check("sim:1")
    assert check is not None
    check()
    clock.t += 10
    check()
    check()
    clock.t += 5
    check()
    assert slept == [0.03, 0.03]  # only while active; runs never fail for it


def test_a_lost_gpu_fails_every_run():
    p, clock = plugin({"count": 1, "faults": [{"kind": "lost", "device": 0, "at_s": 10}]})
    check = p.inference_check("sim:0")
    assert check is not None and failures(check, 3) == 0
    clock.t += 10
    assert failures(check, 3) == 3


@pytest.mark.parametrize(
    ("scenario", "message"),
    [
        ({"faults": [{"kind": "meteor"}]}, "sim fault kind 'meteor'"),
        ({"load": {"shape": "zigzag"}}, "sim load shape 'zigzag'"),
        ("no-such-bundled-scenario", "no bundled sim scenario"),
        ({"faults": [{"kind": "inference_errors", "ratio": 1.5}]}, "ratio 1.5 must be within 0..1"),
        ({"faults": [{"kind": "inference_latency", "delay_ms": -1}]}, "delay_ms -1 must be >= 0"),
    ],
)
def test_bad_scenarios_name_what_to_fix(scenario, message):
    with pytest.raises(ScenarioError, match=message):
        plugin(scenario)


def test_bundled_faults_scenario_loads():
    p, _ = plugin("faults")
    assert len(p.discover()) == 4
