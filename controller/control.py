"""The controller's core loop: keep the pool, schedule, persist, push each node its desired state.

Every change (a node joins or is lost, a deployment is applied, a node is drained)
marks the state dirty; one task re-runs the pure scheduler, writes the placement
and events to the store *before* anything is pushed or answered, and sends each
node whose share changed a new DesiredState with a higher generation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from google.protobuf.json_format import MessageToDict, ParseDict

from xpud.proto import admin_pb2 as apb
from xpud.proto import link_pb2 as lpb
from xpud.proto import telemetry_pb2 as tpb

from .core import NODE_LOST, NODE_READY, NODE_SUSPECT, Decision, DeploymentSpec, Replica
from .pool import NodeState, Pool
from .scheduler import schedule
from .store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")
MEMORY_FACTOR = 3  # replica memory estimate: model file size x this, until the agent measures it
MIN_MEMORY = 64 << 20


class Controller:
    def __init__(self, store: Store, *, interval: float = 1.0, lease: float = 3.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.interval, self.lease = interval, lease
        self.clock = clock
        self.pool = Pool(clock)
        self.specs: dict[str, DeploymentSpec] = {}
        self.placement: dict[str, list[Replica]] = {}
        self.pending: dict[str, str] = {}
        self.generations: dict[str, int] = {}
        self.sent: dict[str, list[lpb.ModelAssignment]] = {}
        self.draining: set[str] = set()
        self.event_listeners: set[asyncio.Queue[Any]] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._dirty = asyncio.Event()
        self._reconciling = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.schedules = 0

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store call on the store's own thread (SQLite commits fsync: never on the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

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
        log.info("controller state: %d deployment(s), %d node(s) known", len(self.specs), len(self.pool.nodes))
        self._tasks = [asyncio.create_task(self._schedule_loop()), asyncio.create_task(self._detect_loop())]
        self._dirty.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=True)

    # -- events -----------------------------------------------------------------------------------
    async def event(self, kind: str, subject: str, message: str) -> None:
        record = await self.db(self.store.add_event, kind, subject, message, time.time())
        log.info("event %s %s: %s", kind, subject, message)
        for queue in list(self.event_listeners):
            queue.put_nowait(record)

    def changed(self) -> None:
        self._dirty.set()

    # -- deployments ------------------------------------------------------------------------------
    async def memory_estimate(self, spec: DeploymentSpec) -> int:
        """Per replica: what the user said; else what an agent measured; else the model file x a factor."""
        if spec.memory_bytes:
            return spec.memory_bytes
        measured = [inst.memory_bytes // max(len(inst.devices), 1) for node in self.pool.nodes.values()
                    if (inst := node.instances.get(spec.name)) is not None and inst.state == "READY"
                    and inst.memory_bytes]
        if measured:
            return max(max(measured), MIN_MEMORY)
        model = await self.db(self.store.model, spec.model, spec.version or None)
        size = model.size if model is not None else 0
        return max(size * MEMORY_FACTOR, MIN_MEMORY)

    # -- nodes ------------------------------------------------------------------------------------
    async def node_joined(self, node: NodeState, hello: lpb.Hello) -> None:
        info = {"devices": [MessageToDict(d, preserving_proto_field_name=True) for d in node.devices.values()],
                "endpoint": node.endpoint, "version": node.agent_version, "providers": node.providers}
        await self.db(self.store.upsert_node, node.name, dict(node.labels), node.zone, info)
        node.state = NODE_READY
        self._adopt(node)
        await self.event("NodeJoined", node.name,
                         f"{len(node.devices)} device(s), endpoint {node.endpoint or 'none'}, "
                         f"{len(hello.instances)} instance(s) running, generation {hello.generation}")
        self.sent.pop(node.name, None)  # a new stream: send the desired state again
        self.changed()

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

    async def node_back(self, node: NodeState) -> None:
        was = node.state
        node.state = NODE_READY
        await self.event("NodeReady", node.name, f"heard from again (was {was})")
        self.changed()

    async def node_left(self, node: NodeState) -> None:
        node.connected = False
        node.session = None

    # -- the loops --------------------------------------------------------------------------------
    async def _detect_loop(self) -> None:
        while True:
            await asyncio.sleep(min(self.interval, self.lease) / 4)
            for node, state in self.pool.age(self.interval, self.lease):
                if state == NODE_LOST:
                    await self.event("NodeLost", node.name, f"no message for {self.lease:g} s: its replicas move")
                    self.changed()
                else:
                    await self.event("NodeSuspect", node.name, f"missed {2} telemetry intervals")

    async def _schedule_loop(self) -> None:
        while True:
            await self._dirty.wait()
            try:
                await self.reconcile_now()
            except Exception:
                log.exception("scheduling failed")

    async def reconcile_now(self) -> Decision:
        """Schedule, persist and push now (one at a time); admin calls answer after this."""
        async with self._reconciling:
            self._dirty.clear()
            return await self._reconcile()

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

    async def _reconcile(self) -> Decision:
        specs = []
        for spec in self.specs.values():
            memory = await self.memory_estimate(spec)
            specs.append(spec if memory == spec.memory_bytes else _with_memory(spec, memory))
        decision = schedule(self.pool.views(), specs, self.placement, draining=frozenset(self.draining))
        self.schedules += 1
        placement = {k: list(v) for k, v in decision.replicas.items() if v}
        if placement != self.placement:
            await self.db(self.store.set_placement, placement)
        old = self.placement
        self.placement = placement
        for name, reason in decision.preempted:
            await self.event("Preempted", name, reason)
        for name, reason in decision.moved:
            await self.event("Moved", name, reason)
        for name, reason in decision.pending.items():
            if self.pending.get(name) != reason:
                await self.event("Pending", name, reason)
        for name, replicas in placement.items():
            before = {(r.node, r.device) for r in old.get(name, [])}
            new = sorted({f"{r.node}/{r.device}" for r in replicas if (r.node, r.device) not in before})
            if new:
                await self.event("Placed", name, f"on {', '.join(new)}")
        self.pending = dict(decision.pending)
        await self.push_all()
        return decision

    async def desired(self) -> dict[str, list[lpb.ModelAssignment]]:
        """Every node's share of the placement, built in one pass (one model lookup per deployment)."""
        models = {(m.name, m.version): m for m in await self.db(self.store.models)}
        latest: dict[str, Any] = {}
        for m in models.values():  # store.models() is in creation order: the last of a name is the latest
            if m.name not in latest or _newer(m.version, latest[m.name].version):
                latest[m.name] = m
        per_node: dict[str, dict[str, list[str]]] = {}
        for name, replicas in self.placement.items():
            for r in replicas:
                per_node.setdefault(r.node, {}).setdefault(name, []).append(r.device)
        out: dict[str, list[lpb.ModelAssignment]] = {}
        for node, deployments in per_node.items():
            assignments = []
            for name in sorted(deployments):
                spec = self.specs.get(name)
                if spec is None:
                    continue
                model = models.get((spec.model, spec.version)) if spec.version else latest.get(spec.model)
                if model is None:
                    continue
                assignments.append(lpb.ModelAssignment(
                    deployment=name, model=model.name, version=model.version, digest=model.digest,
                    size_bytes=model.size, devices=sorted(deployments[name]), max_batch_size=spec.max_batch_size,
                    priority=max(spec.priority, 0)))
            out[node] = assignments
        return out

    async def push_all(self) -> None:
        """Send every connected node whose share changed its new desired state: generations are written in one
        transaction first (they never go backwards, even after a crash), then all pushes go out at once."""
        desired = await self.desired()
        changed: dict[str, tuple[Any, list[lpb.ModelAssignment]]] = {}
        for node in list(self.pool.nodes.values()):
            if node.session is None or node.state == NODE_LOST:
                continue
            assignments = desired.get(node.name, [])
            if self.sent.get(node.name) != assignments:
                changed[node.name] = (node, assignments)
        if not changed:
            return
        generations = {name: self.generations.get(name, 0) + 1 for name in changed}
        await self.db(self.store.set_generations, generations)
        for name, (node, assignments) in changed.items():
            self.generations[name] = generations[name]
            self.sent[name] = assignments
            if node.session is not None:
                node.session.push(lpb.ControllerMessage(desired=lpb.DesiredState(
                    generation=generations[name], assignments=assignments)))


def _newer(a: str, b: str) -> bool:
    """Is model version a newer than b? Whole numbers compare as numbers."""
    if a.isdigit() and b.isdigit():
        return int(a) > int(b)
    return True  # later in creation order


def _with_memory(spec: DeploymentSpec, memory: int) -> DeploymentSpec:
    return replace(spec, memory_bytes=memory)
