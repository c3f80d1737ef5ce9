"""Routing policies: which ready replica of a deployment gets a request.

The router hands a policy the request and the deployment's `DeploymentRoutes` (pushed by the controller); on an
UNAVAILABLE answer it asks again with the replicas tried so far, and it reports every call's outcome. A policy
that weighs load, latency, zones or versions reads them from there: the request's parameters, the replicas'
fields, `done`; `RoundRobin` needs none of it. Every replica `choose` returns is told to `done` exactly once, so a
policy may count calls in flight from one to the other (`P2CEwma`, the router's default, does).

Zone affinity (both policies): a request's ``xpud-zone`` parameter, else the router's own zone (`zone`), names the
zone whose replicas it prefers; it spills over to the others while every ready replica there has `zone_bound`
calls in flight or more (the deployment's --max-inflight, when it has one), or when none is healthy there.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from .routes import DeploymentRoutes, ReplicaEndpoint, RouteUpdate


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """One request to route."""

    deployment: str
    method: str  # the OIP RPC it is forwarded as: ModelInfer, ModelMetadata, ModelConfig
    message: Any  # the OIP request as received (a policy may read its parameters)


class RoutingPolicy(Protocol):
    def choose(self, request: RouteRequest, routes: DeploymentRoutes,
               tried: Sequence[ReplicaEndpoint] = ()) -> ReplicaEndpoint | None:
        """The replica for ``request`` among ``routes.replicas`` (never empty), other than those ``tried`` already
        (they answered UNAVAILABLE); None when there is no other to try."""
        ...

    def done(self, request: RouteRequest, replica: ReplicaEndpoint, code: grpc.StatusCode, seconds: float) -> None:
        """The call to ``replica`` ended with ``code`` (OK or the agent's status) after ``seconds``."""
        ...

    def update(self, changed: RouteUpdate) -> None:
        """The table changed (None: the deployment is gone): drop what is kept for what is no longer listed."""
        ...


ZONE_PARAMETER = "xpud-zone"  # a request parameter: the zone whose replicas the request prefers
ZONE_BOUND = 16  # calls in flight at which a replica counts as saturated for zone affinity (no --max-inflight)


def zone_of(message: Any, default: str = "") -> str:
    """The zone a request prefers: its ``xpud-zone`` parameter (a string), else `default` (the router's zone)."""
    parameters = getattr(message, "parameters", None)
    if parameters is None or ZONE_PARAMETER not in parameters:
        return default
    p = parameters[ZONE_PARAMETER]
    kind = p.WhichOneof("parameter_choice")
    return str(getattr(p, kind)) if kind else default


class RoundRobin:
    """Each deployment's replicas in turn, in the table's order; a retry goes to the next one after the one that
    failed (skipping those tried). With a zone (the request's or `zone`), its unsaturated replicas in turn."""

    def __init__(self, *, zone: str = "", zone_bound: int = ZONE_BOUND) -> None:
        self.zone, self.zone_bound = zone, zone_bound
        self._turns: dict[str, int] = {}  # per deployment, the next turn
        self._in_flight: dict[tuple[str, str], int] = {}  # per (deployment, address): for zone saturation only

    def choose(self, request: RouteRequest, routes: DeploymentRoutes,
               tried: Sequence[ReplicaEndpoint] = ()) -> ReplicaEndpoint | None:
        pick = self._pick(request, routes, tried)
        if pick is not None:
            key = (request.deployment, pick.address)
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
        return pick

    def _pick(self, request: RouteRequest, routes: DeploymentRoutes,
              tried: Sequence[ReplicaEndpoint]) -> ReplicaEndpoint | None:
        replicas = routes.replicas
        if not replicas:
            return None
        zone = zone_of(request.message, self.zone)
        if zone:
            bound = routes.max_inflight or self.zone_bound
            near = [r for r in replicas if r.zone == zone and r not in tried
                    and self._in_flight.get((request.deployment, r.address), 0) < bound]
            # the zone's unsaturated replicas in turn, else (spill-over) the other zones' in turn
            turns = near or [r for r in replicas if r.zone != zone and r not in tried]
            if turns:
                turn = self._turns.get(routes.name, 0)
                self._turns[routes.name] = turn + 1
                return turns[turn % len(turns)]
        if not tried:
            turn = self._turns.get(routes.name, 0)
            self._turns[routes.name] = turn + 1
            return replicas[turn % len(replicas)]
        start = replicas.index(tried[-1]) + 1 if tried[-1] in replicas else 0
        for step in range(len(replicas)):
            candidate = replicas[(start + step) % len(replicas)]
            if candidate not in tried:
                return candidate
        return None

    def done(self, request: RouteRequest, replica: ReplicaEndpoint, code: grpc.StatusCode, seconds: float) -> None:
        key = (request.deployment, replica.address)
        left = self._in_flight.get(key, 0) - 1
        if left > 0:
            self._in_flight[key] = left
        else:
            self._in_flight.pop(key, None)

    def update(self, changed: RouteUpdate) -> None:
        for name, routes in changed.items():
            if routes is None:
                self._turns.pop(name, None)


Emit = Callable[[str, str, str], None]  # an event: kind, subject (the deployment), message
Load = Callable[[ReplicaEndpoint], float | None]  # a replica's device utilization from telemetry (None: unknown)
FAILURES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED})
HEALTHY, EJECTED, PROBING = "healthy", "ejected", "probing"


@dataclass(slots=True)
class _Replica:
    """What the policy keeps of one replica of one deployment."""

    in_flight: int = 0  # calls the router has forwarded to it and not yet seen end
    ewma_s: float = 0.0  # latency estimate (0: no sample yet)
    slow_s: float = 0.0  # a slower-moving one, for the outlier check: a burst of slow calls is not an outlier
    last_s: float = 0.0  # when the estimate was last fed (the policy's clock)
    samples: int = 0
    errors: int = 0  # consecutive failures
    state: str = HEALTHY
    until: float = 0.0  # ejected: when it may be probed
    ejections: int = 0  # back-to-back ejections (the back-off doubles with each)
    returned_at: float = 0.0
    probing: bool = False  # a probe is in flight


class P2CEwma:
    """Power of two choices over the ready replicas, scored by the router's own in-flight count and a latency EWMA
    per replica, with outlier ejection.

    Score = (in_flight + 1) x EWMA latency: the expected wait for this request if it queues behind the calls already
    there (Finagle's and Linkerd's load balancers weigh the same two), so a replica twice as slow gets about half
    the concurrent share and one that is idle wins ties. A pair with a replica that has no sample yet is decided by
    calls in flight alone (a new replica is tried, and learns); an estimate not fed for a while decays toward zero
    (`stale_s`), so a replica starved because it was slow is tried again. A failure (FAILURES) never lowers the
    estimate (a replica that fails fast must not look fast); failures are ejection's business.

    Ejection: `eject_errors` consecutive failures, or a slow-moving EWMA (`outlier_alpha`) above `outlier_factor`
    x the median of its healthy peers' (each with `min_samples`) and `outlier_min_s` above it, take a replica out
    for `backoff_s`, doubled on each repeat up to `max_backoff_s` (reset after `reset_s` healthy). Then it is
    half-open: one probe at a time, at most one request in `probe_every`; a probe that succeeds returns it, one
    that fails ejects it again. The last healthy replica is never ejected, and when every one left is out the
    request goes to them anyway. Ejections and returns are told to `emit` (ReplicaEjected, ReplicaReturned). Two
    scores within `tie` of each other are told apart by `load` (the devices' utilization in the agents'
    telemetry), when it knows both. With a zone (the request's ``xpud-zone``, else `zone`), the two are drawn from
    that zone's healthy replicas with fewer than `zone_bound` calls in flight (the deployment's --max-inflight
    when it has one), from every healthy replica when there is none such."""

    def __init__(self, *, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic,
                 emit: Emit | None = None, load: Load | None = None, tie: float = 0.05, alpha: float = 0.3,
                 stale_s: float = 10.0, eject_errors: int = 5, outlier_factor: float = 5.0, min_samples: int = 20,
                 backoff_s: float = 5.0, max_backoff_s: float = 300.0, reset_s: float = 60.0,
                 probe_every: int = 20, outlier_alpha: float = 0.05, outlier_min_s: float = 0.005,
                 zone: str = "", zone_bound: int = ZONE_BOUND) -> None:
        self.zone, self.zone_bound = zone, zone_bound
        self.rng = rng if rng is not None else random.Random()
        self.clock, self.emit, self.load, self.tie = clock, emit, load, tie
        self.alpha, self.stale_s = alpha, stale_s
        self.eject_errors, self.outlier_factor, self.min_samples = eject_errors, outlier_factor, min_samples
        self.backoff_s, self.max_backoff_s, self.reset_s = backoff_s, max_backoff_s, reset_s
        self.probe_every = probe_every
        self.outlier_alpha, self.outlier_min_s = outlier_alpha, outlier_min_s
        self._kept: dict[str, dict[str, _Replica]] = {}  # per deployment, per replica address
        self._calls: dict[str, int] = {}  # per deployment, requests routed (paces probes)

    # -- what a replica looks like -----------------------------------------------------------
    def stats(self, deployment: str, address: str) -> _Replica | None:
        """What is kept of one replica (tests, diagnostics)."""
        return self._kept.get(deployment, {}).get(address)

    def _get(self, deployment: str, address: str) -> _Replica:
        kept = self._kept.setdefault(deployment, {})
        r = kept.get(address)
        if r is None:
            r = kept[address] = _Replica()
        return r

    def _score(self, r: _Replica, now: float) -> float:
        ewma = r.ewma_s
        if ewma and now - r.last_s > self.stale_s:  # unfed: trust it less, so that it gets tried again
            ewma *= math.exp(-(now - r.last_s - self.stale_s) / self.stale_s)
        return (r.in_flight + 1) * ewma

    # -- choose ---------------------------------------------------------------------------
    def choose(self, request: RouteRequest, routes: DeploymentRoutes,
               tried: Sequence[ReplicaEndpoint] = ()) -> ReplicaEndpoint | None:
        """The pick, counted in flight until `done` is told of it."""
        name, now = routes.name, self.clock()
        calls = self._calls[name] = self._calls.get(name, 0) + 1
        kept = self._kept.setdefault(name, {})
        healthy: list[tuple[ReplicaEndpoint, _Replica]] = []
        out: list[ReplicaEndpoint] = []
        probe: tuple[ReplicaEndpoint, _Replica] | None = None
        for replica in routes.replicas:
            if replica in tried:
                continue
            r = kept.get(replica.address)
            if r is None:
                r = kept[replica.address] = _Replica()
            if r.state == HEALTHY:
                healthy.append((replica, r))
                continue
            out.append(replica)
            if r.state == EJECTED and now >= r.until:
                r.state = PROBING
            if r.state == PROBING and not r.probing and probe is None:
                probe = (replica, r)
        if probe is not None and (not healthy or calls % self.probe_every == 0):
            probe[1].probing = True
            return self._start(probe[0], probe[1])
        if not healthy:  # every one left is out (or tried): better an ejected replica than none
            if not out:
                return None
            pick = out[self.rng.randrange(len(out))]
            return self._start(pick, kept[pick.address])
        zone = zone_of(request.message, self.zone)
        if zone and len(healthy) > 1:
            bound = routes.max_inflight or self.zone_bound
            near = [h for h in healthy if h[0].zone == zone and h[1].in_flight < bound]
            if near:  # else spill over: every healthy replica, the zone's saturated ones too
                healthy = near
        if len(healthy) == 1:
            return self._start(*healthy[0])
        i = self.rng.randrange(len(healthy))
        j = self.rng.randrange(len(healthy) - 1)
        a, b = healthy[i], healthy[j + (j >= i)]
        score_a, score_b = self._score(a[1], now), self._score(b[1], now)
        if not a[1].samples or not b[1].samples:  # unknown latency: the one with fewer calls in flight
            score_a, score_b = a[1].in_flight, b[1].in_flight
        if self.load is not None and abs(score_a - score_b) <= self.tie * max(score_a, score_b):
            load_a, load_b = self.load(a[0]), self.load(b[0])
            if load_a is not None and load_b is not None and load_a != load_b:
                return self._start(*(b if load_b < load_a else a))
        return self._start(*(b if score_b < score_a else a))

    @staticmethod
    def _start(replica: ReplicaEndpoint, r: _Replica) -> ReplicaEndpoint:
        r.in_flight += 1
        return replica

    # -- done -----------------------------------------------------------------------------
    def done(self, request: RouteRequest, replica: ReplicaEndpoint, code: grpc.StatusCode, seconds: float) -> None:
        r = self._kept.get(request.deployment, {}).get(replica.address)
        if r is None:  # the replica left the table meanwhile
            return
        r.in_flight = max(0, r.in_flight - 1)
        probe, r.probing = r.probing, False
        if code is grpc.StatusCode.CANCELLED:  # the client gave up: nothing learnt about the replica
            return
        now, failed = self.clock(), code in FAILURES
        if request.method == "ModelInfer" or failed:
            sample = max(seconds, r.ewma_s) if failed else seconds
            r.ewma_s = sample if not r.samples else r.ewma_s + self.alpha * (sample - r.ewma_s)
            r.slow_s = sample if not r.samples else r.slow_s + self.outlier_alpha * (sample - r.slow_s)
            r.samples += 1
            r.last_s = now
        if failed:
            r.errors += 1
            if r.state == PROBING and probe:
                self._eject(request.deployment, replica, r, now, f"the probe failed with {code.name}")
            elif r.state == HEALTHY and r.errors >= self.eject_errors:
                self._eject(request.deployment, replica, r, now, f"{r.errors} failures in a row, the last "
                            f"{code.name}")
            return
        r.errors = 0
        if r.state == PROBING and probe:
            r.state, r.returned_at = HEALTHY, now
            r.samples, r.ewma_s, r.slow_s = 1, seconds, seconds  # fresh estimates: the old ones ejected it
            if self.emit is not None:
                self.emit("ReplicaReturned", request.deployment, f"replica at {replica.address} on {replica.node} "
                          f"is back in rotation: a probe succeeded in {seconds * 1000:.1f} ms")
        elif r.state == HEALTHY and r.samples >= self.min_samples and r.samples % 8 == 0:
            self._check_outlier(request.deployment, replica, r, now)

    def _check_outlier(self, deployment: str, replica: ReplicaEndpoint, r: _Replica, now: float) -> None:
        peers = sorted(p.slow_s for a, p in self._kept[deployment].items()
                       if a != replica.address and p.state == HEALTHY and p.samples >= self.min_samples)
        if not peers:
            return
        median = peers[len(peers) // 2] if len(peers) % 2 else (peers[len(peers) // 2 - 1] + peers[len(peers) // 2]) / 2
        if r.slow_s > self.outlier_factor * median and r.slow_s - median > self.outlier_min_s:
            self._eject(deployment, replica, r, now, f"latency {r.slow_s * 1000:.1f} ms, over "
                        f"{self.outlier_factor:g} x its peers' median {median * 1000:.1f} ms")

    def _eject(self, deployment: str, replica: ReplicaEndpoint, r: _Replica, now: float, why: str) -> None:
        if r.state == HEALTHY:
            others = sum(1 for a, p in self._kept[deployment].items() if a != replica.address and p.state == HEALTHY)
            if not others:  # never the last one
                return
            if r.returned_at and now - r.returned_at >= self.reset_s:
                r.ejections = 0  # healthy long enough: the back-off starts over
        r.ejections += 1
        backoff = min(self.max_backoff_s, self.backoff_s * 2 ** (r.ejections - 1))
        r.state, r.until, r.errors = EJECTED, now + backoff, 0
        if self.emit is not None:
            self.emit("ReplicaEjected", deployment, f"replica at {replica.address} on {replica.node} ejected for "
                      f"{backoff:g} s: {why}")

    def update(self, changed: RouteUpdate) -> None:
        for name, routes in changed.items():
            if routes is None:
                self._kept.pop(name, None)
                self._calls.pop(name, None)
                continue
            kept = self._kept.get(name)
            if kept:
                listed = {r.address for r in routes.replicas}
                for address in [a for a in kept if a not in listed]:
                    del kept[address]
