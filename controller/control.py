"""The controller's core loop: keep the pool, schedule, persist, push each node its desired state.

Every change (a node joins or is lost, a deployment is applied, a node is drained) marks the state dirty; one
task re-runs the pure scheduler, writes the placement, the generations and the events to the store in one
transaction *before* anything is pushed or answered, and sends each node whose share changed a new DesiredState
with a higher generation. (Pushing while the transaction commits was measured and kept out: on a controller held
to one CPU the store thread and the pushes took turns on the GIL, the admin call took twice as long and the
pushes arrived no sooner; BENCHMARKS.md.) Admin calls run that pass at once; other triggers (joins, instance-state
changes, lost nodes) are coalesced for ``coalesce`` seconds into one pass.

The scheduler runs through a `Planner`, which keeps its state between passes: a pass with nothing new reuses the
last decision, and a deployment added to a settled pool is placed alone (the decision a full pass would make).
It runs on the event loop with Python's cyclic garbage collector paused: it makes no reference
cycles, and with thousands of streams a collection that its allocations trigger cost more than the scheduler
(a full one 200-370 ms at 2,000 nodes). A worker thread was measured too and was slower: the scheduler and the
loop then take turns on the GIL, and the admin call waits for the scheduler either way (BENCHMARKS.md, control
plane scale).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import gc
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from google.protobuf.json_format import MessageToDict, ParseDict

from xpud.proto import admin_pb2 as apb
from xpud.proto import link_pb2 as lpb
from xpud.proto import telemetry_pb2 as tpb

from .core import NODE_LOST, NODE_READY, NODE_SUSPECT, Decision, DeploymentSpec, Replica
from .heap import GC_TIME, Heap
from .planner import Planner
from .pool import NodeState, Pool
from .shares import Share, Shares
from .store import Conflict, EventRecord, ModelRecord, NodeRecord, Store

log = logging.getLogger(__name__)
T = TypeVar("T")
Event = tuple[str, str, str]  # kind, subject, message


MEMORY_FACTOR = 3  # replica memory estimate: model file size x this, until the agent measures it
MIN_MEMORY = 64 << 20
RETURN_GRACE = 300.0  # seconds after a restart past which a known node that has not come back is Lost regardless
LOG_EACH = 10  # events of one kind in one transaction logged one line each below this many, else in one line
COALESCE = 0.05  # seconds a background trigger waits for others (a join storm) to share one scheduling pass
STORE_SWITCH_INTERVAL = 0.0005  # seconds: the GIL switch interval while the store thread writes
COMMIT_BLOCK = 0.02  # seconds the loop waits blocked for a store call before it awaits the rest (`db_soon`)
WARM_DELAY = 1.0  # seconds with no full scheduling pass before the plain signatures' device pools are built


class Catalog:
    """The models as stored, resolved like ``Store.model``: a version, or the latest (highest whole number)."""

    def __init__(self, models: Sequence[ModelRecord]) -> None:
        self.exact = {(m.name, m.version): m for m in models}
        self.latest: dict[str, ModelRecord] = {}
        for m in models:  # in creation order, so among versions that are not whole numbers the last one wins
            held = self.latest.get(m.name)
            if held is None or _rank(m.version) >= _rank(held.version):
                self.latest[m.name] = m

    def find(self, name: str, version: str) -> ModelRecord | None:
        return self.exact.get((name, version)) if version else self.latest.get(name)


class Controller:
    def __init__(self, store: Store, *, interval: float = 1.0, lease: float = 3.0,
                 clock: Callable[[], float] = time.monotonic, coalesce: float = COALESCE) -> None:
        self.store = store
        self.interval, self.lease, self.coalesce = interval, lease, coalesce
        self.clock = clock
        self.pool = Pool(clock)
        self.specs: dict[str, DeploymentSpec] = {}
        self.placement: dict[str, list[Replica]] = {}
        self.pending: dict[str, str] = {}
        self.generations: dict[str, int] = {}
        self.shares = Shares()  # each node's share of the placement, and what it was last sent
        self._catalog: Catalog | None = None  # the models as stored (None: read them again)
        self._measured_by: dict[str, dict[str, int]] = {}  # node -> deployment -> memory per device, READY ones
        self._measured_max: dict[str, int] = {}  # deployment -> the most of those (`_measured`)
        self.draining: set[str] = set()
        self.event_listeners: set[asyncio.Queue[Any]] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._joined: set[str] = set()  # nodes whose running instances the next pass adopts
        self._node_events: list[Event] = []  # NodeReady events for the failure detector's next transaction
        self._started = 0.0  # clock time of start()
        self.planner = Planner()  # the scheduler with its state between passes (shortcuts for settled pools)
        self._dirty = asyncio.Event()
        self._reconciling = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.schedules = 0
        self._committed = False  # whether the pass running now has written its transaction
        self._joins: list[tuple[NodeRecord, Event]] = []  # joins waiting for the next join transaction
        self._joins_done: asyncio.Future[None] | None = None  # resolved when that transaction is written
        self._joining = asyncio.Lock()
        self.heap = Heap(clock)  # the cyclic garbage collector on the controller's schedule at scale
        self._warming: asyncio.TimerHandle | None = None

    async def db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call on the store's own thread (SQLite commits fsync: never on the event loop)."""
        return await asyncio.wrap_future(self._submit(fn, *args, **kwargs))

    async def db_soon(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`db` for what an admin call waits on: the loop waits for it blocked up to COMMIT_BLOCK, then awaits
        the rest. A store call takes 1-3 ms; behind a loop busy with 10,000 agents, the thread's result waited
        5-8 ms more for the loop to get round to it (BENCHMARKS.md). A slow disk only costs COMMIT_BLOCK."""
        done = self._submit(fn, *args, **kwargs)
        with contextlib.suppress(TimeoutError):
            return done.result(timeout=COMMIT_BLOCK)
        return await asyncio.wrap_future(done)

    def _submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        return self._executor.submit(_promptly, functools.partial(fn, *args, **kwargs))

    async def start(self) -> None:
        self.specs = {s.name: s for s in await self.db(self.store.deployments)}
        self.placement = await self.db(self.store.placement)
        self.generations = await self.db(self.store.generations)
        now = self.clock()
        for record in await self.db(self.store.nodes):
            node = self.pool.node(record.name)
            node.labels, node.zone, node.cordoned = dict(record.labels), record.zone, record.cordoned
            # known before the restart: its devices as last seen, and a lease to come back before anything moves
            devices = [ParseDict(d, tpb.DeviceInfo()) for d in record.info.get("devices", [])
                       if isinstance(d, dict)]
            node.devices = {d.id: d for d in devices}
            node.providers = list(record.info.get("providers", []))
            node.endpoint = str(record.info.get("endpoint", ""))
            node.state, node.last_seen = NODE_SUSPECT, now
        self.pool.returning = set(self.pool.nodes)
        self.pool.returning_until = now + self.lease
        self._started = now
        log.info("controller state: %d deployment(s), %d node(s) known", len(self.specs), len(self.pool.nodes))
        self._tasks = [asyncio.create_task(self._schedule_loop()), asyncio.create_task(self._detect_loop())]
        self._dirty.set()

    async def close(self) -> None:
        self.heap.close()
        if self._warming is not None:
            self._warming.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=True)

    # -- events -----------------------------------------------------------------------------------
    async def event(self, kind: str, subject: str, message: str) -> None:
        await self.emit([(kind, subject, message)])

    async def emit(self, events: Sequence[Event]) -> None:
        """Write several events in one transaction, then tell the watchers."""
        if events:
            self._notify(await self.db(self.store.commit, events=events, when=time.time()))

    def _notify(self, records: Sequence[EventRecord]) -> None:
        """Tell the watchers (`xpud events --follow`) every event; log each, or one line for a kind that came
        LOG_EACH times or more in one transaction (a join storm: 10,000 lines, then one per batch)."""
        kinds: dict[str, list[EventRecord]] = {}
        for record in records:
            kinds.setdefault(record.kind, []).append(record)
            for queue in list(self.event_listeners):
                queue.put_nowait(record)
        for kind, group in kinds.items():
            if len(group) < LOG_EACH:
                for record in group:
                    log.info("event %s %s: %s", kind, record.subject, record.message)
            else:
                log.info("event %s x %d: %s, ... (%s; each one in `xpud events`)", kind, len(group),
                         ", ".join(r.subject for r in group[:3]), group[0].message)

    def changed(self) -> None:
        self._dirty.set()

    # -- deployments ------------------------------------------------------------------------------
    async def memory_estimate(self, spec: DeploymentSpec) -> int:
        return _estimate(spec, self._measured(), await self.catalog())

    async def catalog(self, *wanted: tuple[str, str]) -> Catalog:
        """The models as stored, read again after `models_changed`, or when one of the `wanted` (name, version)
        is not in the cached catalog (a model written past `models_changed`, or truly gone)."""
        if self._catalog is not None and any(self._catalog.find(name, version) is None for name, version in wanted):
            self._catalog = None
        if self._catalog is None:
            self._catalog = Catalog(await self.db_soon(self.store.models))
        return self._catalog

    def models_changed(self) -> None:
        self._catalog = None

    def _measured(self) -> dict[str, int]:
        """Per deployment, the most memory a READY instance uses per device. Kept per node, and updated from the
        nodes that reported since the last call: a join storm does not walk every node's instances each pass."""
        by, most = self._measured_by, self._measured_max
        dropped: set[str] = set()
        for name in self.pool.take_reported():
            node = self.pool.nodes.get(name)
            now: dict[str, int] = {}
            for deployment, inst in (node.instances.items() if node is not None else ()):
                if inst.state == "READY" and inst.memory_bytes:
                    now[deployment] = inst.memory_bytes // max(len(inst.devices), 1)
            before = by.pop(name, {})
            if now:
                by[name] = now
            for deployment, memory in now.items():
                if memory >= most.get(deployment, 0):
                    most[deployment] = memory
            dropped.update(d for d, memory in before.items() if now.get(d, 0) < memory == most.get(d))
        for deployment in dropped:  # the node that held the most reports less now: the most of the others
            values = [held[deployment] for held in by.values() if deployment in held]
            if values:
                most[deployment] = max(values)
            else:
                del most[deployment]
        return most

    # -- nodes ------------------------------------------------------------------------------------
    async def node_joined(self, node: NodeState, hello: lpb.Hello) -> None:
        info = {"devices": [MessageToDict(d, preserving_proto_field_name=True) for d in node.devices.values()],
                "endpoint": node.endpoint, "version": node.agent_version, "providers": node.providers}
        joined = (f"{len(node.devices)} device(s), endpoint {node.endpoint or 'none'}, "
                  f"{len(hello.instances)} instance(s) running, generation {hello.generation}")
        await self._record_join(NodeRecord(node.name, dict(node.labels), node.zone, info=info),
                                ("NodeJoined", node.name, joined))
        node.state = NODE_READY
        self._joined.add(node.name)
        if self.pool.returning:  # agents are still coming back after a restart: the others get another lease
            self.pool.returning_until = max(self.pool.returning_until,
                                            min(self.clock() + self.lease, self._started + RETURN_GRACE))
        # never below what the agent applied (a state dir restored from a backup, say): its reports stay readable
        self.generations[node.name] = max(self.generations.get(node.name, 0), hello.generation)
        self.shares.new_stream(node.name)  # send the desired state again
        self.changed()

    async def _record_join(self, record: NodeRecord, event: Event) -> None:
        """Write a join (the node as reported, its event), sharing one transaction with the joins that arrive while
        the previous one commits: a join storm of 10,000 agents is then tens of fsyncs, not 10,000."""
        self._joins.append((record, event))
        if self._joins_done is None:
            self._joins_done = asyncio.get_running_loop().create_future()
            self._tasks.append(asyncio.create_task(self._commit_joins()))
        await asyncio.shield(self._joins_done)  # a stream that ends meanwhile does not cancel the others' write

    async def _commit_joins(self) -> None:
        async with self._joining:  # one at a time: the joins arriving meanwhile wait for the next
            batch, done = self._joins, self._joins_done
            self._joins, self._joins_done = [], None
            assert done is not None
            try:
                records = await self.db(self.store.commit, nodes=[r for r, _ in batch], events=[e for _, e in batch],
                                        when=time.time())
            except Exception as exc:
                done.set_exception(exc)
                done.exception()  # retrieved here too: every joiner may have gone
            else:
                self._notify(records)
                done.set_result(None)
        self._tasks = [t for t in self._tasks if not t.done()]

    def _adopt(self, node: NodeState) -> None:
        """Instances a node already runs for a known deployment count as its replicas (no restart)."""
        for name, inst in node.instances.items():
            spec = self.specs.get(name)
            if spec is None or inst.state not in ("READY", "LOADING") or not inst.devices:
                continue
            replicas = self.placement.setdefault(name, [])
            here = {(r.node, r.device) for r in replicas}
            used = {r.index for r in replicas}
            for device in inst.devices:
                if (node.name, device) in here or len(replicas) >= spec.replicas:
                    continue
                index = next(i for i in range(spec.replicas + len(replicas) + 1) if i not in used)
                used.add(index)
                replicas.append(Replica(name, index, node.name, device, spec.memory_bytes or MIN_MEMORY))

    def node_back(self, node: NodeState) -> None:
        """A Suspect (or Lost) node spoke again: Ready at once, its event written with the failure detector's next
        batch. Its reader must not wait for a commit: under load, nodes whose readers each waited for their own
        commit (one at a time on the store's thread) went silent meanwhile and Suspect again, and their events
        and commits multiplied."""
        was = node.state
        node.state = NODE_READY
        self._node_events.append(("NodeReady", node.name, f"heard from again (was {was})"))
        self.changed()

    async def node_left(self, node: NodeState) -> None:
        node.connected = False
        node.session = None
        self.heap.stream_ended()

    # -- the loops --------------------------------------------------------------------------------
    async def _detect_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self.interval, self.lease) / 4)
            events = [("NodeLost", node.name, f"no message for {self.lease:g} s: its replicas move")
                      if state == NODE_LOST else ("NodeSuspect", node.name, "missed 2 telemetry intervals")
                      for node, state in self.pool.age(self.interval, self.lease)]
            try:
                await self.record_node_states(events)  # one transaction per pass, however many nodes changed
            except Exception:
                log.exception("recording node states failed")
            if any(kind == "NodeLost" for kind, _, _ in events):
                self.changed()
            self.heap.tick(busy=self._reconciling.locked())

    async def record_node_states(self, events: Sequence[Event] = ()) -> None:
        """Write the NodeReady events queued since the last call, then `events`, in one transaction."""
        queued, self._node_events = self._node_events, []
        await self.emit([*queued, *events])

    async def _schedule_loop(self) -> None:
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.coalesce)  # let a burst of triggers land in this one pass
            try:
                async with self._reconciling:
                    if self._dirty.is_set():  # else an admin call's pass has done it meanwhile
                        self._dirty.clear()
                        await self._reconcile((), ())
            except Exception:
                log.exception("scheduling failed")

    async def reconcile_now(self, events: Sequence[Event] = (), *, apply: DeploymentSpec | None = None,
                            create: bool = False) -> Decision:
        """Schedule, persist (with `events`) and push now, one pass at a time; admin calls answer after this.

        `apply` creates (`create`: only if new) or replaces a deployment in the same pass: its row is written in
        the pass's one transaction, and it is not in force should the pass fail before that."""
        async with self._reconciling:
            undo: tuple[str, DeploymentSpec | None] | None = None
            if apply is not None:
                if create and apply.name in self.specs:
                    raise Conflict(f"deployment {apply.name!r} already exists; change it with `xpud apply -f FILE` "
                                   "or remove it with `xpud undeploy`")
                undo = (apply.name, self.specs.get(apply.name))
                self.specs[apply.name] = apply
            self._dirty.clear()
            self._committed = False
            try:
                return await self._reconcile(events, [apply] if apply is not None else [])
            except BaseException:
                if undo is not None and not self._committed:
                    name, before = undo
                    if before is None:
                        self.specs.pop(name, None)
                    else:
                        self.specs[name] = before
                raise

    def status(self, name: str) -> apb.DeploymentStatus:
        spec = self.specs[name]
        out = apb.DeploymentStatus(spec=apb.Deployment(
            name=spec.name, model=spec.model, version=spec.version, replicas=spec.replicas, device=spec.device,
            memory_bytes=spec.memory_bytes, priority=spec.priority, labels=dict(spec.labels), zone=spec.zone,
            max_batch_size=spec.max_batch_size, strategy=spec.strategy))
        failed = 0
        for r in sorted(self.placement.get(name, []), key=lambda r: r.index):
            node = self.pool.nodes.get(r.node)
            inst = node.instances.get(name) if node is not None else None
            state, reason = "PENDING", "waiting for the node to load it"
            if node is not None and node.state == NODE_LOST:
                state, reason = "PENDING", f"node {r.node} is lost"
            elif inst is not None and r.device in inst.devices:
                state, reason = inst.state, inst.reason
            out.replicas.add(node=r.node, device=r.device, state=state, reason=reason)
            out.ready += state == "READY"
            failed += state == "FAILED"
        pending = self.pending.get(name, "")
        if not out.replicas:
            out.phase, out.reason = "Pending", pending or "not scheduled yet"
        elif failed:
            out.phase = "Degraded"
            out.reason = next(r.reason for r in out.replicas if r.state == "FAILED")
        elif out.ready >= spec.replicas:
            out.phase, out.reason = "Running", ""
        else:
            out.phase, out.reason = "Progressing", pending
        return out

    async def _reconcile(self, events: Sequence[Event], deployments: Sequence[DeploymentSpec]) -> Decision:
        started, gc_before, GC_TIME.oldest = time.perf_counter(), GC_TIME.seconds, -1
        catalog = await self.catalog(*((spec.model, spec.version) for spec in self.specs.values()))
        stored = {k: list(v) for k, v in self.placement.items()}  # adopting changes it in memory only
        joined = bool(self._joined)
        for name in self._joined:
            if (node := self.pool.nodes.get(name)) is not None:
                self._adopt(node)
        self._joined.clear()
        measured = self._measured()
        specs = [replace(spec, memory_bytes=_estimate(spec, measured, catalog)) for spec in self.specs.values()]
        old, refreshed = self.placement, self.planner.refreshed
        scheduling, cpu = time.perf_counter(), time.thread_time()
        with _cyclic_gc_paused():
            views = self.pool.views()
            viewed = time.perf_counter()
            decision = self.planner.schedule(views, specs, old, draining=frozenset(self.draining), load=self.pool.load)
        scheduled, cpu = time.perf_counter(), time.thread_time() - cpu
        self.schedules += 1
        placement = {k: list(v) for k, v in decision.replicas.items() if v}
        events = [*events, *(("Preempted", name, reason) for name, reason in decision.preempted),
                  *(("Moved", name, reason) for name, reason in decision.moved),
                  *(("Pending", name, reason) for name, reason in decision.pending.items()
                    if self.pending.get(name) != reason)]
        for name, replicas in placement.items():
            if replicas == old.get(name):  # most deployments, most passes (the same replicas: compared by identity)
                continue
            before = {(r.node, r.device) for r in old.get(name, [])}
            new = sorted({f"{r.node}/{r.device}" for r in replicas if (r.node, r.device) not in before})
            if new:
                events.append(("Placed", name, f"on {', '.join(new)}"))
        self.shares.update(placement, self.specs, catalog.find)
        pushes = self.shares.changed(self._reachable)
        generations = {name: self.generations.get(name, 0) + 1 for name in pushes}
        moved = [name for name in placement.keys() | stored.keys() if placement.get(name) != stored.get(name)]
        # placement (the deployments whose replicas changed), generations (never backwards, even after a crash) and
        # events: one transaction, before any push
        prepared = time.perf_counter()
        records, cancelled = await self._commit(deployments=deployments,
                                                placement={name: placement.get(name, []) for name in moved},
                                                replacing={name: stored.get(name, []) for name in moved},
                                                generations=generations, events=events, when=time.time())
        self._committed = True
        committed = time.perf_counter()
        self.placement, self.pending = placement, dict(decision.pending)
        self._push(pushes, generations)
        pushed = time.perf_counter()
        self._notify(records)
        self.heap.grown(len(self.pool.nodes), joined=joined)
        if self.planner.last == "full" or refreshed != self.planner.refreshed:
            self._warm_later()  # new pools, or nodes joined: once the pool settles, build what is missing, freeze
        log.debug("pass (%s): inputs %.1f ms, views %.1f ms, schedule %.1f ms (views and schedule: %.1f ms of CPU), "
                  "shares %.1f ms, commit %.1f ms, %d push(es) %.1f ms, garbage collection %.1f ms (oldest "
                  "generation %d)",
                  self.planner.last if self.planner.last != "full" else f"full: {self.planner.why}",
                  (scheduling - started) * 1e3, (viewed - scheduling) * 1e3, (scheduled - viewed) * 1e3, cpu * 1e3,
                  (prepared - scheduled) * 1e3, (committed - prepared) * 1e3, len(pushes), (pushed - committed) * 1e3,
                  (GC_TIME.seconds - gc_before) * 1e3, GC_TIME.oldest)
        if cancelled:
            raise asyncio.CancelledError  # what the task was asked, now that the pass is whole
        return decision

    async def _commit(self, **writes: Any) -> tuple[list[EventRecord], bool]:
        """A pass's transaction (`db_soon`), awaited to its end even if the task is cancelled meanwhile (an admin
        client that goes away): the pass then finishes, so memory and the agents follow what was written. Returns
        the events written and whether a cancellation came in."""
        done = self._submit(self.store.commit, **writes)  # as db_soon does (a task would start a loop turn later)
        with contextlib.suppress(TimeoutError):
            return done.result(timeout=COMMIT_BLOCK), False
        written = asyncio.wrap_future(done)
        cancelled = False
        while True:
            try:
                return await asyncio.shield(written), cancelled
            except asyncio.CancelledError:
                if written.cancelled():
                    raise
                cancelled = True

    def _push(self, pushes: dict[str, Share], generations: dict[str, int]) -> None:
        for name, share in pushes.items():
            self.generations[name] = generations[name]
            self.shares.mark_sent(name, share)
            node = self.pool.nodes[name]
            if node.session is not None:
                node.session.push(lpb.ControllerMessage(desired=lpb.DesiredState(
                    generation=generations[name], assignments=_assignments(share))))

    def _warm_later(self, delay: float | None = None) -> None:
        if self._warming is not None:
            self._warming.cancel()
        self._warming = asyncio.get_running_loop().call_later(WARM_DELAY if delay is None else delay, self._warm)

    def _warm(self) -> None:
        """One pool at a time between passes (each walks every node's filters once): the first deployment of a
        device kind with no labels or zone then finds its pool ready, as later ones of a kind in use do."""
        self._warming = None
        if self._reconciling.locked():
            self._warm_later(self.coalesce)
            return
        started = time.perf_counter()
        with _cyclic_gc_paused():
            built = self.planner.warm()
        if built:
            log.debug("a plain signature's device pool built in %.1f ms", (time.perf_counter() - started) * 1e3)
            self._warm_later(0.0)
        else:  # the pool has settled (no full pass for WARM_DELAY): what lives now is the long-lived heap
            self.heap.grown(len(self.pool.nodes), settled=True)

    def _reachable(self, name: str) -> bool:
        """Whether a node can be sent its share now: connected, and not lost (no await: the table is stable)."""
        node = self.pool.nodes.get(name)
        return node is not None and node.session is not None and node.state != NODE_LOST


def _promptly(call: Callable[[], T]) -> T:
    """Run `call` (on the store's thread) with a short GIL switch interval. Each SQLite statement gives the GIL
    up and takes it back; beside an event loop busy with thousands of streams, taking it back waited for the
    loop's switch interval (5 ms) every time: a scheduling pass's commit took 40 ms instead of 1.5 ms (7 ms now)."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(STORE_SWITCH_INTERVAL)
    try:
        return call()
    finally:
        sys.setswitchinterval(before)


def _assignments(share: Share) -> list[lpb.ModelAssignment]:
    return [lpb.ModelAssignment(deployment=a.deployment, model=a.model, version=a.version, digest=a.digest,
                                size_bytes=a.size, devices=a.devices, max_batch_size=a.max_batch_size,
                                priority=a.priority) for a in share]


@contextlib.contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """No cyclic collection while the block runs: the garbage it frees by reference counting never counts
    towards one, so a burst of short-lived tuples does not make the collector walk the whole heap."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _rank(version: str) -> tuple[int, int]:
    """Whole-number versions above the others, by number; the others all rank the same (the later one wins)."""
    return (1, int(version)) if version.isdigit() else (0, 0)


def _estimate(spec: DeploymentSpec, measured: dict[str, int], catalog: Catalog) -> int:
    """Per replica: what the user said; else what an agent measured; else the model file x a factor."""
    if spec.memory_bytes:
        return spec.memory_bytes
    if spec.name in measured:
        return max(measured[spec.name], MIN_MEMORY)
    model = catalog.find(spec.model, spec.version)
    return max((model.size if model is not None else 0) * MEMORY_FACTOR, MIN_MEMORY)
