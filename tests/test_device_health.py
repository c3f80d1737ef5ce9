"""The device health state machine, driven tick by tick with the time passed in."""

from __future__ import annotations

import pytest

from xpud.agent.telemetry.health import DeviceHealth, HealthPolicy, HealthState, Transition
from xpud.plugins.base import DeviceEvent, DeviceSample, Health

H, S, U, R = HealthState.HEALTHY, HealthState.SUSPECT, HealthState.UNHEALTHY, HealthState.RECOVERING
POLICY = HealthPolicy(xid_window_s=10, clean_s=5, hold_s=3, failure_window_s=10)


def clean(**fields: object) -> DeviceSample:
    base: dict[str, object] = {"ecc_volatile_corrected": 0, "ecc_volatile_uncorrected": 0, "throttle_reasons": ()}
    return DeviceSample("sim:0", 0.0, **{**base, **fields})  # type: ignore[arg-type]


def xid(code: int, n: int = 1) -> DeviceSample:
    return clean(events=tuple(DeviceEvent("xid", f"XID {code}", code) for _ in range(n)),
                 health=Health.DEGRADED)


def run(h: DeviceHealth, samples: list[DeviceSample], start: float = 0.0) -> list[Transition]:
    """One sample per second from `start`; the transitions they caused."""
    out = []
    for i, s in enumerate(samples):
        if (t := h.observe(s, start + i)) is not None:
            out.append(t)
    return out


def states(ts: list[Transition]) -> list[tuple[HealthState, HealthState]]:
    return [(t.from_state, t.to_state) for t in ts]


def test_clean_ticks_stay_healthy() -> None:
    h = DeviceHealth("sim:0", POLICY)
    assert run(h, [clean()] * 100) == []
    assert h.state is H


@pytest.mark.parametrize("code", [48, 79, 94, 95])
def test_a_fatal_xid_makes_the_device_unhealthy(code: int) -> None:
    h = DeviceHealth("sim:0", POLICY)
    ts = run(h, [clean(), xid(code)])
    assert states(ts) == [(H, U)]
    assert ts[0].reason == f"fatal XID {code}" and h.reason == ts[0].reason


@pytest.mark.parametrize("code", [13, 31, 43, 63, 64, 999])
def test_a_recoverable_xid_makes_it_suspect_then_healthy_after_the_clean_time(code: int) -> None:
    h = DeviceHealth("sim:0", POLICY)
    ts = run(h, [xid(code)] + [clean()] * 6)
    assert states(ts) == [(H, S), (S, H)]
    assert ts[0].reason == f"XID {code}"
    h2 = DeviceHealth("sim:0", POLICY)
    assert states(run(h2, [xid(code)] + [clean()] * 4)) == [(H, S)]  # 4 s clean < clean_s: still suspect


def test_another_fault_while_suspect_restarts_the_clean_time() -> None:
    h = DeviceHealth("sim:0", POLICY)
    ts = run(h, [xid(13), clean(), clean(), clean(), xid(13)] + [clean()] * 4)
    assert states(ts) == [(H, S)]  # the second XID at t=4: healthy no earlier than t=9
    assert states(run(h, [clean()], start=9)) == [(S, H)]


def test_a_storm_of_recoverable_xids_makes_it_unhealthy_then_it_recovers_after_the_hold() -> None:
    h = DeviceHealth("sim:0", POLICY)
    ts = run(h, [xid(13)] * 5 + [clean()] * 5)
    assert states(ts) == [(H, S), (S, U), (U, R), (R, H)]
    assert ts[1].reason == "XID storm: 5 XIDs in 10 s"
    # recovering at the first clean tick (t=5), healthy after the 3 s hold (t=8)
    assert h.since == 8


def test_xids_spread_wider_than_the_window_are_no_storm() -> None:
    h = DeviceHealth("sim:0", POLICY)
    samples = []
    for _ in range(6):
        samples += [xid(13)] + [clean()] * 2  # one every 3 s: at most 4 in a 10 s window
    ts = run(h, samples)
    assert U not in [t.to_state for t in ts]
    assert h.state is S


def test_several_xids_in_one_tick_count_for_the_storm() -> None:
    h = DeviceHealth("sim:0", POLICY)
    assert states(run(h, [xid(43, n=5)])) == [(H, U)]


def test_lost_and_failed_devices_are_unhealthy_until_they_come_back() -> None:
    h = DeviceHealth("sim:0", POLICY)
    lost = DeviceSample("sim:0", 0.0, Health.FAILED, "fallen off the bus",
                        events=(DeviceEvent("lost", "fallen off the bus", 79),))
    failed = DeviceSample("sim:0", 0.0, Health.FAILED, "fallen off the bus")
    ts = run(h, [clean(), lost, failed, failed, failed])
    assert states(ts) == [(H, U)]
    assert "device failed: fallen off the bus" in ts[0].reason and "device lost" in ts[0].reason
    assert states(run(h, [clean()] * 4, start=5)) == [(U, R), (R, H)]


def test_a_fault_while_recovering_makes_it_unhealthy_again() -> None:
    h = DeviceHealth("sim:0", POLICY)
    ts = run(h, [xid(79), clean(), xid(13), clean(), clean(), clean(), clean()])
    assert states(ts) == [(H, U), (U, R), (R, U), (U, R), (R, H)]
    assert ts[2].reason == "XID 13 while recovering"


def test_uncorrected_ecc_growth_is_unhealthy_corrected_growth_suspect() -> None:
    h = DeviceHealth("sim:0", POLICY)
    ts = run(h, [clean(ecc_volatile_uncorrected=3), clean(ecc_volatile_uncorrected=3),
                 clean(ecc_volatile_uncorrected=4)])
    assert states(ts) == [(H, U)]  # the first reading is the baseline, not growth
    assert ts[0].reason == "uncorrected ECC errors +1"
    h = DeviceHealth("sim:0", POLICY)
    ts = run(h, [clean(ecc_volatile_corrected=0), clean(ecc_volatile_corrected=9),
                 clean(ecc_volatile_corrected=19)])
    assert states(ts) == [(H, S)]  # +9 is under 10 per tick, +10 is not
    assert ts[0].reason == "corrected ECC errors +10"


def test_ecc_counters_that_reset_or_vanish_are_no_growth() -> None:
    h = DeviceHealth("sim:0", POLICY)
    ts = run(h, [clean(ecc_volatile_uncorrected=5), clean(ecc_volatile_uncorrected=0),
                 clean(ecc_volatile_uncorrected=None), clean(ecc_volatile_uncorrected=0)])
    assert ts == []


def test_thermal_and_power_throttling_is_suspect_idle_is_not() -> None:
    h = DeviceHealth("sim:0", POLICY)
    assert run(h, [clean(throttle_reasons=("gpu_idle", "sw_power_cap"))]) == []
    ts = run(h, [clean(throttle_reasons=("hw_thermal", "sw_thermal"))], start=1)
    assert states(ts) == [(H, S)] and ts[0].reason == "throttled: hw_thermal, sw_thermal"


def test_inference_failures_make_it_suspect_then_unhealthy() -> None:
    h = DeviceHealth("sim:0", POLICY)
    for _ in range(19):
        assert h.inference(True, 0.5) is None
    t = h.inference(False, 0.5)  # 1 of 20: 5 %
    assert t is not None and (t.from_state, t.to_state) == (H, S) and t.reason == "1/20 requests failed in 10 s"
    for _ in range(17):
        h.inference(False, 1.0)
    t = h.inference(False, 1.0)  # 19 of 38: 50 %
    assert t is not None and (t.from_state, t.to_state) == (S, U)


def test_too_few_requests_prove_nothing() -> None:
    h = DeviceHealth("sim:0", POLICY)
    for _ in range(9):
        assert h.inference(False, 0.0) is None
    assert h.state is H


def test_failures_age_out_of_the_window() -> None:
    h = DeviceHealth("sim:0", POLICY)
    for _ in range(10):
        h.inference(False, 0.0)
    assert h.state is U
    # the first tick sees the failures since the last one; the next, none: the cause stopped
    assert states(run(h, [clean(), clean()], start=1)) == [(U, R)]
    for _ in range(20):
        h.inference(True, 13.0)
    assert h.inference(False, 13.0) is None  # 1 of 21 is under 5 %: the old failures are forgotten


def test_inference_failing_while_unhealthy_keeps_it_there() -> None:
    h = DeviceHealth("sim:0", POLICY)
    for _ in range(10):
        h.inference(False, 0.0)
    for t in range(1, 5):
        for _ in range(10):
            h.inference(False, t)
        assert h.observe(clean(), t + 0.5) is None
    assert h.state is U


def test_policy_from_a_config_table() -> None:
    p = HealthPolicy.from_mapping({"hold_s": 2, "xid_storm": 3, "fatal_xids": [79]})
    assert p.hold_s == 2.0 and p.xid_storm == 3 and p.fatal_xids == frozenset({79})
    for bad in ({"hold": 1}, {"hold_s": -1}, {"hold_s": "x"}, {"fatal_xids": 79}, {"clean_s": True}):
        with pytest.raises(ValueError, match=r"\[health\]"):
            HealthPolicy.from_mapping(bad)


def test_old_failures_leave_the_ratio() -> None:
    h = DeviceHealth("sim:0", POLICY)
    for _ in range(5):
        assert h.inference(False, 0.0) is None  # 5 requests: too few to judge
    for _ in range(25):
        h.inference(True, 20.0)
    assert h.inference(False, 20.0) is None  # 1/26 once the first 5 aged out (6/31 had they not)
    assert h.state is H
