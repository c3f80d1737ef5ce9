"""Placement profiles: what the router measured of each model version on each device model.

The router tells `Profiles.begin` and `Profiles.end` of every ModelInfer it forwards to a replica (a dict lookup
and a few additions; `router.Router._attempt`). Per (model, model version, device model) a profile keeps:

- requests: forwards that ended, errors: those among them that did not end OK (a client that gave up: neither);
- latency: an EWMA (`LATENCY_ALPHA`) of successful forwards' seconds, as the router timed them;
- throughput: successful forwards per busy second, a replica being busy while the router has at least one forward
  in flight to it, summed over the profile's replicas: what one replica on that device model serves while kept
  busy (at one request at a time, 1 / latency; more with concurrency and batching);
- throughput per GiB: throughput over the device's memory in GiB (a replica's first device).

The controller writes what moved (`changed`) to the store every `FLUSH_S` and at shutdown, reads it back at start
(`load`), shows it in ListModels (`xpud models --json`), and hands `preference` to the scheduler: per model
version with profiles of two device models or more, the device models by throughput per GiB, best first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import grpc

from .routes import ReplicaEndpoint
from .store import ProfileRecord

GiB = 1 << 30
LATENCY_ALPHA = 0.1  # weight of each new sample in the latency EWMA
MIN_REQUESTS = 20  # successful forwards a profile needs before placement trusts it
MARGIN = 0.1  # a ranking stands until a device model ranked below gets this much better per GiB than one above
FLUSH_S = 5.0  # seconds between writes of the profiles that moved

Key = tuple[str, str, str]  # (model, version, device model)
Preference = Mapping[tuple[str, str], tuple[str, ...]]  # (model, version) -> device models, best first


@dataclass(slots=True)
class Profile:
    """One (model, version, device model): counters kept across restarts, and the replicas in flight now."""

    memory: int = 0
    requests: int = 0
    errors: int = 0
    ok: int = 0
    latency_s: float = 0.0
    busy_s: float = 0.0
    flight: dict[str, int] = field(default_factory=dict)  # replica address -> forwards in flight
    since: dict[str, float] = field(default_factory=dict)  # replica address -> busy since (the clock)
    dirty: bool = False  # moved since the store was last given it

    def throughput(self) -> float:
        """Successful forwards per busy second of one replica (0 before any)."""
        return self.ok / self.busy_s if self.busy_s > 0 else 0.0

    def per_gib(self) -> float:
        return self.throughput() / (self.memory / GiB) if self.memory > 0 else 0.0


class Profiles:
    """Every profile the controller knows, fed by the router, read by the scheduling pass and ListModels."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.held: dict[Key, Profile] = {}
        self._ranked: dict[tuple[str, str], tuple[str, ...]] = {}  # the last `preference`

    # -- the router's hot path --------------------------------------------------------------------
    def begin(self, replica: ReplicaEndpoint) -> None:
        """A forward to `replica` starts."""
        key = (replica.model, replica.version, replica.device_model)
        p = self.held.get(key)
        if p is None:
            p = self.held[key] = Profile(memory=replica.device_memory)
        elif replica.device_memory != p.memory:  # a profile loaded from an older store, or a device resized
            p.memory = replica.device_memory
        address = replica.address
        n = p.flight.get(address, 0)
        if not n:
            p.since[address] = self.clock()
        p.flight[address] = n + 1

    def end(self, replica: ReplicaEndpoint, code: grpc.StatusCode, seconds: float) -> None:
        """The forward `begin` was told of ended with `code` after `seconds`."""
        key = (replica.model, replica.version, replica.device_model)
        p = self.held.get(key)
        address = replica.address
        if p is None or address not in p.flight:
            return
        n = p.flight[address] - 1
        if n:
            p.flight[address] = n
        else:
            del p.flight[address]
            p.busy_s += self.clock() - p.since.pop(address)
        p.dirty = True
        if code is grpc.StatusCode.CANCELLED:
            return
        p.requests += 1
        if code is grpc.StatusCode.OK:
            p.ok += 1
            p.latency_s = seconds if p.ok == 1 else p.latency_s + LATENCY_ALPHA * (seconds - p.latency_s)
        else:
            p.errors += 1

    # -- reading and keeping ----------------------------------------------------------------------
    def _settle(self, p: Profile) -> None:
        """Count the busy time of forwards still in flight up to now (so a replica never idle still has some)."""
        if p.since:
            now = self.clock()
            for address, since in p.since.items():
                p.busy_s += now - since
                p.since[address] = now

    def load(self, records: Iterable[ProfileRecord]) -> None:
        """Profiles read from the store at start (before any request)."""
        for r in records:
            self.held[(r.model, r.version, r.device_model)] = Profile(r.memory, r.requests, r.errors, r.ok,
                                                                      r.latency_s, r.busy_s)

    def changed(self) -> list[ProfileRecord]:
        """The profiles that moved since the last call, as the store keeps them."""
        out = []
        for key, p in sorted(self.held.items()):
            if p.dirty:
                p.dirty = False
                self._settle(p)
                out.append(ProfileRecord(*key, p.memory, p.requests, p.errors, p.ok, p.latency_s, p.busy_s))
        return out

    def of(self, model: str, version: str) -> list[tuple[str, Profile]]:
        """One model version's profiles by device model (names order), in flight time counted."""
        found = [(key[2], p) for key, p in self.held.items() if key[0] == model and key[1] == version]
        for _, p in found:
            self._settle(p)
        return sorted(found, key=lambda item: item[0])

    def preference(self, min_requests: int = MIN_REQUESTS) -> dict[tuple[str, str], tuple[str, ...]]:
        """Per (model, version) profiled on two device models or more (each with `min_requests` successful
        forwards, busy time and a known memory size): the device models by throughput per GiB, best first. The last
        ranking of a model version stands while no device model in it gets `MARGIN` better than one ranked above
        (measurements that wobble around a tie do not flip placement, nor make every pass a full one)."""
        scores: dict[tuple[str, str], dict[str, float]] = {}
        for (model, version, device_model), p in self.held.items():
            if device_model and p.ok >= min_requests and p.memory > 0:
                self._settle(p)
                if p.busy_s > 0:
                    scores.setdefault((model, version), {})[device_model] = p.per_gib()
        ranked = {}
        for mv, by_model in scores.items():
            if len(by_model) < 2:
                continue
            order = tuple(sorted(by_model, key=lambda m: (-by_model[m], m)))
            held = self._ranked.get(mv)
            if held is not None and sorted(held) == sorted(order) and all(
                    by_model[low] <= by_model[high] * (1 + MARGIN)
                    for i, high in enumerate(held) for low in held[i + 1:]):
                order = held
            ranked[mv] = order
        self._ranked = ranked
        return dict(ranked)
