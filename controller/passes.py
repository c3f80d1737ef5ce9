"""The scheduling pass: schedule, persist, push; one at a time, admin calls at once, other triggers coalesced.

A pass runs the pure scheduler (through a `Planner`, which keeps its state between passes), writes the
placement, the generations, the events and the admin change that asked for it in one transaction *before*
anything is pushed or answered, then sends each node whose share changed a new DesiredState. Background
triggers (joins, instance-state changes, lost nodes) wait ``coalesce`` seconds to share one pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from xpud.proto.status import NotFound

from .catalog import Measured, Models, estimate
from .core import Decision, DeploymentSpec
from .events import EventLog
from .handover import Retiring
from .nodes import adopt
from .planner import Planner
from .pushes import push, reachable
from .rollout import wanted
from .state import State
from .store import Conflict, Event, StateStore
from .storethread import StoreThread
from .tuning import Tuning

log = logging.getLogger("xpud.controller.control")  # the pass's debug line: benchmarks read it under this name
COALESCE = 0.05  # seconds a background trigger waits for others (a join storm) to share one scheduling pass
WARM_DELAY = 1.0  # seconds with no full scheduling pass before the plain signatures' device pools are built


@dataclass(frozen=True)
class Change:
    """An admin change, in force in memory for its pass and written in the pass's transaction; undone should the
    pass fail before that."""

    apply: DeploymentSpec | None = None  # a deployment created (`create`: only if new) or replaced
    create: bool = False
    delete: str | None = None  # a deployment removed
    cordon: tuple[str, bool, bool] | None = None  # (node, cordoned, drain)


class Scheduling:
    def __init__(self, state: State, store: StateStore, thread: StoreThread, events: EventLog, models: Models,
                 tuning: Tuning, *, coalesce: float = COALESCE) -> None:
        self.state, self.store, self.thread, self.events, self.models = state, store, thread, events, models
        self.tuning, self.coalesce = tuning, coalesce
        self.measured = Measured(state.pool)
        self.planner = Planner()  # the scheduler with its state between passes (shortcuts for settled pools)
        self.schedules = 0
        self.timed: Callable[[float], None] | None = None  # told each pass's duration in seconds (/metrics)
        self._dirty = asyncio.Event()
        self.lock = asyncio.Lock()  # one pass at a time
        self._committed = False  # whether the pass running now has written its transaction
        self._warming: asyncio.TimerHandle | None = None
        self._expiring: asyncio.TimerHandle | None = None  # the pass that drops a kept replica past its grace

    def changed(self) -> None:
        self._dirty.set()

    def busy(self) -> bool:
        return self.lock.locked()

    def close(self) -> None:
        for timer in (self._warming, self._expiring):
            if timer is not None:
                timer.cancel()

    async def loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.coalesce)  # let a burst of triggers land in this one pass
            try:
                async with self.lock:
                    if self._dirty.is_set():  # else an admin call's pass has done it meanwhile
                        self._dirty.clear()
                        await self._reconcile((), {})
            except Exception:
                log.exception("scheduling failed")

    async def now(self, events: Sequence[Event] = (), change: Change | None = None, actor: str = "") -> Decision:
        """Schedule, persist (with `events` and `change`, the pass's events caused by `actor`) and push now; admin
        calls answer after this."""
        async with self.lock:
            undo = self._apply(change) if change is not None else None
            return await self._pass(events, {**_writes(change), "actor": actor}, undo)

    async def advance(self, compute: Callable[[], tuple[list[DeploymentSpec], list[Event]]]) -> bool:
        """A pass for deployments the controller changes itself (rollouts moving on), `compute`d under the pass
        lock from the state as it is then; none when nothing changed. Returns whether one ran."""
        async with self.lock:
            specs, events = compute()
            if not specs:
                return False
            before = {spec.name: self.state.specs.get(spec.name) for spec in specs}
            self.state.specs.update({spec.name: spec for spec in specs})

            def undo() -> None:
                for name, spec in before.items():
                    _restore(self.state.specs, name, spec)

            await self._pass(events, {"deployments": specs}, undo)
        return True

    async def _pass(self, events: Sequence[Event], writes: dict[str, Any],
                    undo: Callable[[], None] | None) -> Decision:
        """One pass under the lock, with what was put in force in memory taken back (`undo`) should it fail before
        its transaction is written."""
        self._dirty.clear()
        self._committed = False
        try:
            return await self._reconcile(events, writes)
        except BaseException:
            if undo is not None and not self._committed:
                undo()
            raise

    def _apply(self, change: Change) -> Callable[[], None]:
        """Put `change` in force in memory; returns what takes it back."""
        specs, state = self.state.specs, self.state
        if change.apply is not None:
            spec = change.apply
            if change.create and spec.name in specs:
                raise Conflict(f"deployment {spec.name!r} already exists; change it with `xpud apply -f FILE` "
                               "or remove it with `xpud undeploy`")
            before = specs.get(spec.name)
            specs[spec.name] = spec
            return lambda: _restore(specs, spec.name, before)
        if change.delete is not None:
            name = change.delete
            if name not in specs:
                raise NotFound(f"unknown deployment {name!r}; deployments: {', '.join(sorted(specs)) or 'none'}")
            gone = specs.pop(name)
            return lambda: _restore(specs, name, gone)
        assert change.cordon is not None
        name, cordoned, drain = change.cordon
        node = state.pool.nodes.get(name)
        if node is None:
            known = ", ".join(sorted(state.pool.nodes)) or "none"
            raise NotFound(f"unknown node {name!r}; nodes: {known}")
        was, drained = node.cordoned, name in state.draining
        node.cordoned = cordoned
        if cordoned and drain:
            state.draining.add(name)
        elif not cordoned:
            state.draining.discard(name)

        def undo() -> None:
            node.cordoned = was
            (state.draining.add if drained else state.draining.discard)(name)

        return undo

    async def _reconcile(self, events: Sequence[Event], writes: dict[str, Any]) -> Decision:
        state, pool = self.state, self.state.pool
        started, gc_mark = time.perf_counter(), self.tuning.gc_mark()
        catalog = await self.models.catalog(*(pair for spec in state.specs.values() for pair in wanted(spec)))
        stored = {k: list(v) for k, v in state.placement.items()}  # adopting changes it in memory only
        joined = bool(state.joined)
        for name in state.joined:
            if (node := pool.nodes.get(name)) is not None:
                adopt(node, state.specs, state.placement)
        state.joined.clear()
        now = pool.clock()
        # replicas that stayed FAILED or unreported past the grace leave their device (`drift`)
        events = [*events, *state.drift.check(state.placement, state.shares.now, pool, state.generations, now)]
        measured = self.measured()
        specs = [replace(spec, memory_bytes=estimate(spec, measured, catalog)) for spec in state.specs.values()]
        old, refreshed = state.placement, self.planner.refreshed
        scheduling, cpu = time.perf_counter(), time.thread_time()
        with self.tuning.scheduling():
            views = pool.views()
            viewed = time.perf_counter()
            decision = self.planner.schedule(views, specs, old, draining=frozenset(state.draining), load=pool.load,
                                             reserved=state.handover.reserved(), avoid=state.drift.avoid(now),
                                             prefer=_latest_too(state.profiles.preference(), specs, catalog.find))
        scheduled, cpu = time.perf_counter(), time.thread_time() - cpu
        self.schedules += 1
        placement = {k: list(v) for k, v in decision.replicas.items() if v}
        # cross-node moves keep the old replica while the new one loads (`handover`); those done are dropped
        handed, dropped = state.handover.update(old, placement, state.specs, views, frozenset(state.draining), pool,
                                                now)
        events = [*events, *(("Preempted", name, reason) for name, reason in decision.preempted),
                  *(("Moved", name, reason) for name, reason in decision.moved),
                  *(("Pending", name, reason) for name, reason in decision.pending.items()
                    if state.pending.get(name) != reason), *handed]
        for name, replicas in placement.items():
            if replicas == old.get(name):  # most deployments, most passes (the same replicas: compared by identity)
                continue
            before = {(r.node, r.device) for r in old.get(name, [])}
            new = sorted({f"{r.node}/{r.device}" for r in replicas if (r.node, r.device) not in before})
            if new:
                events.append(("Placed", name, f"on {', '.join(new)}"))
        state.shares.update(state.handover.desired(placement), state.specs, catalog.find)
        pushes = state.shares.changed(lambda name: reachable(pool, name))
        generations = {name: state.generations.get(name, 0) + 1 for name in pushes}
        moved = [name for name in placement.keys() | stored.keys() if placement.get(name) != stored.get(name)]
        # placement (the deployments whose replicas changed), generations (never backwards, even after a crash),
        # events and the admin change: one transaction, before any push
        prepared = time.perf_counter()
        records, cancelled = await self.thread.through(
            self.store.commit, **writes, placement={name: placement.get(name, []) for name in moved},
            replacing={name: stored.get(name, []) for name in moved}, generations=generations, events=events,
            when=time.time())
        self._committed = True
        committed = time.perf_counter()
        state.placement, state.pending = placement, dict(decision.pending)
        if withheld := self._withhold(dropped):
            state.routes(withheld)  # no new request goes to an old replica once its node is told to drop it
        push(pool, state.shares, pushes, generations, state.generations)
        self._expire_later()
        pushed = time.perf_counter()
        if self.timed is not None:
            self.timed(pushed - started)
        self.events.notify(records)
        state.routes(set())  # deployments added or deleted, why one has no ready replica: after every pass
        self.tuning.grown(len(pool.nodes), joined=joined)
        if self.planner.last == "full" or refreshed != self.planner.refreshed:
            self._warm_later()  # new pools, or nodes joined: once the pool settles, build what is missing, freeze
        gc_seconds, gc_oldest = self.tuning.gc_since(gc_mark)
        log.debug("pass (%s): inputs %.1f ms, views %.1f ms, schedule %.1f ms (views and schedule: %.1f ms of CPU), "
                  "shares %.1f ms, commit %.1f ms, %d push(es) %.1f ms, garbage collection %.1f ms (oldest "
                  "generation %d)",
                  self.planner.last if self.planner.last != "full" else f"full: {self.planner.why}",
                  (scheduling - started) * 1e3, (viewed - scheduling) * 1e3, (scheduled - viewed) * 1e3, cpu * 1e3,
                  (prepared - scheduled) * 1e3, (committed - prepared) * 1e3, len(pushes), (pushed - committed) * 1e3,
                  gc_seconds * 1e3, gc_oldest)
        if cancelled:
            raise asyncio.CancelledError  # what the task was asked, now that the pass is whole
        return decision

    def _withhold(self, dropped: Sequence[Retiring]) -> set[str]:
        """The old replicas handed over whose deployment leaves their node's share are routed there no more (till
        the node stops reporting them); returns those nodes. Deployments back in a node's share are routed again."""
        state, nodes = self.state, set()
        for k in dropped:
            node, name = k.replica.node, k.replica.deployment
            if not any(a.deployment == name for a in state.shares.now.get(node, ())):
                state.unrouted.setdefault(node, set()).add(name)
                nodes.add(node)
        for node, names in list(state.unrouted.items()):
            back = {a.deployment for a in state.shares.now.get(node, ())} & names
            if back:
                names -= back
                nodes.add(node)
            if not names:
                del state.unrouted[node]
        return nodes

    def _expire_later(self) -> None:
        """A pass when the first grace ends: a handover that never completes, a replica that stays FAILED, an
        avoided device that may be used again."""
        if self._expiring is not None:
            self._expiring.cancel()
            self._expiring = None
        deadlines = [t for t in (self.state.handover.next_deadline(), self.state.drift.next_deadline())
                     if t is not None]
        if deadlines:
            deadline = min(deadlines)
            delay = max(deadline - self.state.pool.clock(), 0.0) + self.coalesce
            self._expiring = asyncio.get_running_loop().call_later(delay, self.changed)

    def _warm_later(self, delay: float | None = None) -> None:
        if self._warming is not None:
            self._warming.cancel()
        self._warming = asyncio.get_running_loop().call_later(WARM_DELAY if delay is None else delay, self._warm)

    def _warm(self) -> None:
        """One pool at a time between passes (each walks every node's filters once): the first deployment of a
        device kind with no labels or zone then finds its pool ready, as later ones of a kind in use do."""
        self._warming = None
        if self.lock.locked():
            self._warm_later(self.coalesce)
            return
        started = time.perf_counter()
        with self.tuning.scheduling():
            built = self.planner.warm()
        if built:
            log.debug("a plain signature's device pool built in %.1f ms", (time.perf_counter() - started) * 1e3)
            self._warm_later(0.0)
        else:  # the pool has settled (no full pass for WARM_DELAY): what lives now is the long-lived heap
            self.tuning.grown(len(self.state.pool.nodes), settled=True)

    @property
    def warming(self) -> bool:
        return self._warming is not None


def _latest_too(prefer: dict[tuple[str, str], tuple[str, ...]], specs: Sequence[DeploymentSpec],
                find: Callable[[str, str], Any]) -> dict[tuple[str, str], tuple[str, ...]]:
    """The profiles' ranking also under (model, "") for deployments of a model's latest version, as the scheduler
    looks them up by the spec's own (model, version)."""
    if not prefer:
        return prefer
    for spec in specs:
        if not spec.version and (record := find(spec.model, "")) is not None \
                and (ranked := prefer.get((spec.model, record.version))) is not None:
            prefer[(spec.model, "")] = ranked
    return prefer


def _writes(change: Change | None) -> dict[str, Any]:
    """What `change` adds to the pass's transaction."""
    if change is None:
        return {}
    if change.apply is not None:
        return {"deployments": [change.apply]}
    if change.delete is not None:
        return {"deleted": [change.delete]}
    assert change.cordon is not None
    return {"cordons": {change.cordon[0]: change.cordon[1]}}


def _restore(specs: dict[str, DeploymentSpec], name: str, before: DeploymentSpec | None) -> None:
    if before is None:
        specs.pop(name, None)
    else:
        specs[name] = before
