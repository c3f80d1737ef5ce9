"""Each device's health state machine: Healthy -> Suspect -> Unhealthy -> Recovering -> Healthy.

Pure: no I/O, no clock of its own (``now`` is passed in), so tests drive it through every path. The telemetry
tick feeds each device's sample (``observe``) and the serving layer each request's outcome on it
(``inference``); both answer the `Transition` they caused, or None.

- Unhealthy: the device is lost or FAILED, a fatal XID, a storm of recoverable XIDs, uncorrected ECC errors
  growing, or most requests on it failing.
- Suspect: a recoverable (or unknown) XID, corrected ECC errors growing fast, thermal or power throttling, or
  some requests failing. Suspect -> Healthy once nothing was seen for ``clean_s``.
- Unhealthy -> Recovering at the first tick with nothing wrong; Recovering -> Healthy after ``hold_s`` with
  nothing wrong; anything wrong while Recovering -> Unhealthy again.
"""

from __future__ import annotations

import enum
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from xpud.plugins.base import DeviceSample, Health

log = logging.getLogger(__name__)


class HealthState(enum.StrEnum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    UNHEALTHY = "unhealthy"
    RECOVERING = "recovering"


@dataclass(frozen=True)
class HealthPolicy:
    """The thresholds; seconds for times, counts for counts."""

    fatal_xids: frozenset[int] = frozenset({48, 79, 94, 95})  # DBE, fallen off the bus, (un)contained ECC
    recoverable_xids: frozenset[int] = frozenset({13, 31, 43, 63, 64})  # others count as recoverable too
    xid_storm: int = 5  # recoverable XIDs within xid_window_s: Unhealthy
    xid_window_s: float = 60.0
    ecc_corrected_per_tick: int = 10  # corrected ECC growth in one tick: Suspect
    # throttle reasons that mean heat or power trouble (not idle, application clocks or the usual power cap)
    throttle_reasons: frozenset[str] = frozenset({"hw_slowdown", "hw_thermal", "sw_thermal", "hw_power_brake"})
    failure_window_s: float = 60.0
    min_requests: int = 10  # outcomes within failure_window_s before a failure ratio counts
    suspect_failures: float = 0.05
    unhealthy_failures: float = 0.5
    clean_s: float = 60.0  # Suspect -> Healthy after this long with nothing wrong
    hold_s: float = 60.0  # Recovering -> Healthy after this long with nothing wrong

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> HealthPolicy:
        """A policy from a config table (``[health]``): known keys only, numbers checked; ValueError names the key."""
        known = {"xid_storm", "xid_window_s", "ecc_corrected_per_tick", "failure_window_s", "min_requests",
                 "suspect_failures", "unhealthy_failures", "clean_s", "hold_s", "fatal_xids", "recoverable_xids"}
        if unknown := set(table) - known:
            raise ValueError(f"[health] unknown key(s) {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for key, value in table.items():
            if key in ("fatal_xids", "recoverable_xids"):
                if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                          for v in value):
                    raise ValueError(f"[health] {key} must be a list of XID numbers, e.g. [48, 79]")
                values[key] = frozenset(value)
            elif isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"[health] {key} must be a number >= 0, got {value!r}")
            else:
                values[key] = int(value) if key in ("xid_storm", "ecc_corrected_per_tick", "min_requests") \
                    else float(value)
        return cls(**values)


@dataclass(frozen=True)
class Transition:
    device_id: str
    from_state: HealthState
    to_state: HealthState
    reason: str  # for people: "XID storm: 5 XIDs in 60 s"
    cause: str  # one of CAUSES, for a metric label: "xid_storm"


# what moves a device, as a short word (bounded label values: reasons carry numbers)
CAUSES = ("failed", "lost", "xid_fatal", "xid_storm", "xid", "ecc_uncorrected", "ecc_corrected", "throttled",
          "inference_failures", "clean", "recovered")


@dataclass
class _Findings:
    """What one tick (or one request) showed, as (cause, reason) at each level."""

    fatal: list[tuple[str, str]] = field(default_factory=list)
    suspect: list[tuple[str, str]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.fatal and not self.suspect


class DeviceHealth:
    """One device's state; feed it every sample and request outcome, in time order."""

    def __init__(self, device_id: str, policy: HealthPolicy | None = None) -> None:
        self.device_id = device_id
        self.policy = policy or HealthPolicy()
        self.state = HealthState.HEALTHY
        self.reason = ""
        self.since = 0.0  # when the state was entered
        self._last_fault = 0.0  # when something wrong was last seen
        self._xids: deque[float] = deque()  # times of recoverable XIDs within the window
        # [second, requests, failures] per second within the failure window (bounded at any request rate)
        self._outcomes: deque[list[int]] = deque()
        self._requests = self._failures = 0  # totals over _outcomes
        self._failed_since_tick = 0  # failures since the last observe: a tick with none is clean of them
        self._ecc: tuple[int | None, int | None] | None = None  # (corrected, uncorrected) last seen

    # -- inputs -------------------------------------------------------------------------------------------

    def observe(self, sample: DeviceSample, now: float) -> Transition | None:
        """One telemetry tick's sample of this device (with the events since the previous one)."""
        found = _Findings()
        self._hardware(sample, now, found)
        if self._failed_since_tick:  # failures since the last tick: the cause goes on (old ones aged in the window)
            self._failure_ratio(now, found)
        self._failed_since_tick = 0
        return self._step(found, now, tick=True)

    def inference(self, ok: bool, now: float, count: int = 1) -> Transition | None:
        """``count`` requests that ran on this device ended (ok: answered; else the run failed)."""
        second = int(now)
        if not self._outcomes or self._outcomes[-1][0] != second:
            self._outcomes.append([second, 0, 0])
        bucket = self._outcomes[-1]
        bucket[1] += count
        self._requests += count
        if ok:
            self._age(now)
            return None  # a success alone never changes the state: clearing is the ticks' job
        bucket[2] += count
        self._failures += count
        self._failed_since_tick += count
        found = _Findings()
        self._failure_ratio(now, found)
        return None if found.clean else self._step(found, now, tick=False)

    # -- what is wrong --------------------------------------------------------------------------------------

    def _hardware(self, s: DeviceSample, now: float, found: _Findings) -> None:
        p = self.policy
        if s.health is Health.FAILED:
            found.fatal.append(("failed", f"device failed: {s.health_reason}" if s.health_reason else "device failed"))
        for e in s.events:
            if e.kind == "lost":
                found.fatal.append(("lost", f"device lost: {e.message}"))
            elif e.kind == "xid" and e.code is not None:
                if e.code in p.fatal_xids:
                    found.fatal.append(("xid_fatal", f"fatal XID {e.code}"))
                else:
                    self._xids.append(now)
                    found.suspect.append(("xid", f"XID {e.code}"))
        while self._xids and self._xids[0] <= now - p.xid_window_s:
            self._xids.popleft()
        if p.xid_storm and len(self._xids) >= p.xid_storm and any(e.kind == "xid" for e in s.events):
            found.fatal.append(("xid_storm", f"XID storm: {len(self._xids)} XIDs in {p.xid_window_s:g} s"))
        ecc = (_max(s.ecc_volatile_corrected, s.ecc_aggregate_corrected),
               _max(s.ecc_volatile_uncorrected, s.ecc_aggregate_uncorrected))
        if self._ecc is not None:
            corrected = _growth(self._ecc[0], ecc[0])
            uncorrected = _growth(self._ecc[1], ecc[1])
            if uncorrected > 0:
                found.fatal.append(("ecc_uncorrected", f"uncorrected ECC errors +{uncorrected}"))
            if p.ecc_corrected_per_tick and corrected >= p.ecc_corrected_per_tick:
                found.suspect.append(("ecc_corrected", f"corrected ECC errors +{corrected}"))
        if s.health is not Health.FAILED:  # a failed device reads nothing: keep the last counts to compare
            self._ecc = ecc
        throttled = sorted(set(s.throttle_reasons or ()) & p.throttle_reasons)
        if throttled:
            found.suspect.append(("throttled", f"throttled: {', '.join(throttled)}"))

    def _age(self, now: float) -> None:
        while self._outcomes and self._outcomes[0][0] + 1 <= now - self.policy.failure_window_s:
            _, requests, failures = self._outcomes.popleft()
            self._requests -= requests
            self._failures -= failures

    def _failure_ratio(self, now: float, found: _Findings) -> None:
        p = self.policy
        self._age(now)
        total = self._requests
        if total < max(p.min_requests, 1) or not self._failures:
            return
        ratio = self._failures / total
        what = f"{self._failures}/{total} requests failed in {p.failure_window_s:g} s"
        if ratio >= p.unhealthy_failures:
            found.fatal.append(("inference_failures", what))
        elif ratio >= p.suspect_failures:
            found.suspect.append(("inference_failures", what))

    # -- the state machine ----------------------------------------------------------------------------------

    def _step(self, found: _Findings, now: float, *, tick: bool) -> Transition | None:
        p, state = self.policy, self.state
        if not found.clean:
            self._last_fault = now
        if found.fatal and state is not HealthState.UNHEALTHY:
            return self._move(HealthState.UNHEALTHY, *_joined(found.fatal), now)
        if state is HealthState.HEALTHY and found.suspect:
            return self._move(HealthState.SUSPECT, *_joined(found.suspect), now)
        if state is HealthState.RECOVERING and found.suspect:
            cause, reason = _joined(found.suspect)
            return self._move(HealthState.UNHEALTHY, cause, reason + " while recovering", now)
        if not tick or not found.clean:
            return None
        if state is HealthState.UNHEALTHY:
            self._outcomes.clear()  # recovery is judged on fresh requests only
            self._requests = self._failures = 0
            return self._move(HealthState.RECOVERING, "clean", "cause cleared; holding before returning to the pool",
                              now)
        if state is HealthState.SUSPECT and now - self._last_fault >= p.clean_s:
            return self._move(HealthState.HEALTHY, "clean", f"nothing wrong for {p.clean_s:g} s", now)
        if state is HealthState.RECOVERING and now - self.since >= p.hold_s:
            return self._move(HealthState.HEALTHY, "recovered", f"recovery checks passed for {p.hold_s:g} s", now)
        return None

    def _move(self, to: HealthState, cause: str, reason: str, now: float) -> Transition:
        t = Transition(self.device_id, self.state, to, reason, cause)
        self.state, self.reason, self.since = to, reason, now
        return t


def _joined(found: list[tuple[str, str]]) -> tuple[str, str]:
    """The first finding's cause, and every finding's reason."""
    return found[0][0], "; ".join(reason for _, reason in found)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _growth(before: int | None, after: int | None) -> int:
    """How much a counter grew; 0 when either reading is missing or it went down (a driver reload reset it)."""
    if before is None or after is None or after < before:
        return 0
    return after - before


class HealthBook:
    """Every device's state machine on this node: fed each tick's samples (which then carry their state), logs
    each transition once and counts them for /metrics."""

    def __init__(self, policy: HealthPolicy | None = None) -> None:
        self.policy = policy or HealthPolicy()
        self.devices: dict[str, DeviceHealth] = {}
        # (device id, from, to, cause) -> transitions since the agent started; read by /metrics on its thread
        self.transitions: dict[tuple[str, str, str, str], int] = {}

    def device(self, device_id: str) -> DeviceHealth:
        if (h := self.devices.get(device_id)) is None:
            h = self.devices[device_id] = DeviceHealth(device_id, self.policy)
        return h

    def observe(self, samples: Iterable[DeviceSample], now: float) -> list[Transition]:
        """Feed each sample to its device and write the device's state into the sample."""
        out = []
        for s in samples:
            h = self.device(s.device_id)
            if (t := h.observe(s, now)) is not None:
                out.append(self._record(t))
            s.health_state, s.health_state_reason = h.state.value, h.reason or None
        return out

    def inference(self, device_id: str, ok: bool, now: float, count: int = 1) -> Transition | None:
        t = self.device(device_id).inference(ok, now, count)
        return None if t is None else self._record(t)

    def _record(self, t: Transition) -> Transition:
        key = (t.device_id, t.from_state.value, t.to_state.value, t.cause)
        self.transitions = {**self.transitions, key: self.transitions.get(key, 0) + 1}  # swapped whole
        level = logging.WARNING if t.to_state in (HealthState.UNHEALTHY, HealthState.SUSPECT) else logging.INFO
        log.log(level, "device %s: %s -> %s: %s", t.device_id, t.from_state.value, t.to_state.value, t.reason)
        return t
