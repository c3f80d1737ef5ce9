"""Nodes: joins (written in shared transactions), adoption of what they run, the failure detector."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from google.protobuf.json_format import MessageToDict, ParseDict

from xpud.proto import link_pb2 as lpb
from xpud.proto import telemetry_pb2 as tpb

from .catalog import MIN_MEMORY
from .core import NODE_LOST, NODE_READY, NODE_SUSPECT, DeploymentSpec, Replica
from .events import EventLog
from .pool import NodeState
from .state import State
from .store import Event, NodeRecord, StateStore
from .storethread import StoreThread
from .traffic import replica_versions
from .tuning import Tuning

log = logging.getLogger(__name__)
RETURN_GRACE = 300.0  # seconds after a restart past which a known node that has not come back is Lost regardless


class Nodes:
    def __init__(self, state: State, store: StateStore, thread: StoreThread, events: EventLog, tuning: Tuning,
                 changed: Callable[[], None], *, interval: float, lease: float) -> None:
        self.state, self.store, self.thread, self.events, self.tuning = state, store, thread, events, tuning
        self.changed = changed  # something the scheduler reads changed: a pass soon
        self.interval, self.lease = interval, lease
        self.pool = state.pool
        self.started = 0.0  # clock time of `restore`
        self._failed: set[tuple[str, str]] = set()  # (node, deployment) that stopped serving, till it serves again
        self._node_events: list[Event] = []  # NodeReady events for the failure detector's next transaction
        self._joins: list[tuple[NodeRecord, Event]] = []  # joins waiting for the next join transaction
        self._joins_done: asyncio.Future[None] | None = None  # resolved when that transaction is written
        self._joining = asyncio.Lock()
        self.tasks: list[asyncio.Task[None]] = []

    def restore(self, records: Sequence[NodeRecord]) -> None:
        """The nodes known before a restart: Suspect, with their devices as last seen and a lease to come back
        before anything moves."""
        now = self.pool.clock()
        for record in records:
            node = self.pool.node(record.name)
            node.labels, node.zone, node.cordoned = dict(record.labels), record.zone, record.cordoned
            devices = [ParseDict(d, tpb.DeviceInfo()) for d in record.info.get("devices", []) if isinstance(d, dict)]
            node.devices = {d.id: d for d in devices}
            node.providers = list(record.info.get("providers", []))
            node.endpoint = str(record.info.get("endpoint", ""))
            node.endpoint_tls = bool(record.info.get("endpoint_tls", False))
            node.state, node.last_seen = NODE_SUSPECT, now
        self.pool.returning = set(self.pool.nodes)
        self.pool.returning_until = now + self.lease
        self.started = now

    # -- the link ---------------------------------------------------------------------------------
    def connect(self, hello: lpb.Hello, session: object, wall: float) -> NodeState:
        """A stream said Hello: the node with its new session (a newer stream replaces an older one)."""
        node = self.pool.node(hello.node)
        if node.session is not None:
            node.session.close()
        node.session = session
        self.pool.hello(node, hello, wall)
        return node

    def welcomed(self, node: NodeState) -> None:
        """The node was welcomed: Ready, and its messages are read from now on, before the join is written (a slow
        store must not make it look silent). What its Hello says it serves is routable now."""
        node.state = NODE_READY
        self.state.routes({node.name})

    async def joined(self, node: NodeState, hello: lpb.Hello) -> None:
        info = {"devices": [MessageToDict(d, preserving_proto_field_name=True) for d in node.devices.values()],
                "endpoint": node.endpoint, "version": node.agent_version, "providers": node.providers,
                **({"endpoint_tls": True} if node.endpoint_tls else {})}
        joined = (f"{len(node.devices)} device(s), endpoint {node.endpoint or 'none'}, "
                  f"{len(hello.instances)} instance(s) running, generation {hello.generation}")
        await self._record_join(NodeRecord(node.name, dict(node.labels), node.zone, info=info),
                                ("NodeJoined", node.name, joined))
        node.state = NODE_READY
        self.state.joined.add(node.name)
        if self.pool.returning:  # agents are still coming back after a restart: the others get another lease
            self.pool.returning_until = max(self.pool.returning_until,
                                            min(self.pool.clock() + self.lease, self.started + RETURN_GRACE))
        # never below what the agent applied (a state dir restored from a backup, say): its reports stay readable
        generations = self.state.generations
        generations[node.name] = max(generations.get(node.name, 0), hello.generation)
        self.state.shares.new_stream(node.name)  # send the desired state again
        self.state.routes({node.name})
        self.changed()

    def heard(self, node: NodeState, message: lpb.AgentMessage, wall: float) -> None:
        """A message on a node's link: seen now (a Suspect or Lost node that speaks again is back), then its
        telemetry or its instances' status."""
        pool = self.pool
        pool.seen(node, wall)
        if node.state != NODE_READY:
            self.back(node)
        kind = message.WhichOneof("kind")
        if kind == "telemetry":
            if pool.telemetry(node, message.telemetry):  # a device's health changed
                self._health_events()
                self.changed()
        elif kind == "status":
            before = {k: v.state for k, v in node.instances.items()}
            versions = [(i.deployment, i.version, i.state) for i in node.every_instance()]
            pool.status(node, message.status)
            self.state.drift.watched.add(node.name)  # the next pass looks for replicas it does not serve
            after = {k: v.state for k, v in node.instances.items()}
            # a new state, or a version loaded in place or beside another (`xpud traffic`): the node's routes change
            if before != after or versions != [(i.deployment, i.version, i.state) for i in node.every_instance()]:
                self._instance_events(node, before, after)
                self.state.routes({node.name})
                self.changed()
            elif node.generation_observed >= self.state.generations.get(node.name, 0) \
                    and node.instance_count() < len(self.state.shares.now.get(node.name, ())):
                self.changed()  # it applied its desired state and some replica is not reported: `drift` notes it

    def _instance_events(self, node: NodeState, before: dict[str, str], after: dict[str, str]) -> None:
        """A replica that stopped serving (drift: unloaded by hand, its session failed) and one serving again are
        events; written with the failure detector's next batch, like NodeReady."""
        for name, state in after.items():
            key = (node.name, name)
            if before.get(name) == "READY" and state == "FAILED":
                self._failed.add(key)
                reason = node.instances[name].reason
                self._node_events.append(("ReplicaFailed", name, f"on {node.name}: {reason}"))
            elif state == "READY" and key in self._failed:  # through LOADING, usually
                self._failed.discard(key)
                self._node_events.append(("ReplicaRecovered", name, f"on {node.name}: serving again"))
        for name in set(before) - set(after):
            self._failed.discard((node.name, name))

    def _health_events(self) -> None:
        """A device whose health state moved is an event (DeviceUnhealthy, ...), with the agent's reason; written
        with the failure detector's next batch."""
        for node, device, before, now, reason in self.pool.health_moves:
            self._node_events.append((f"Device{now.capitalize()}", f"{node}/{device}",
                                      f"{before} -> {now}: {reason or 'no reason given'}"))
        self.pool.health_moves.clear()

    def back(self, node: NodeState) -> None:
        """Ready at once, its event written with the failure detector's next batch: the reader does not wait for
        a commit (readers each waiting their turn on the store thread went silent and Suspect again)."""
        was = node.state
        node.state = NODE_READY
        self._node_events.append(("NodeReady", node.name, f"heard from again (was {was})"))
        self.state.routes({node.name})
        self.changed()

    def left(self, node: NodeState) -> None:
        node.connected = False
        node.session = None
        self.tuning.stream_ended()
        self.state.routes({node.name})

    async def _record_join(self, record: NodeRecord, event: Event) -> None:
        """Write a join, sharing one transaction with the joins that arrive while the previous one commits: a
        join storm of thousands of agents is then tens of fsyncs."""
        self._joins.append((record, event))
        if self._joins_done is None:
            self._joins_done = asyncio.get_running_loop().create_future()
            self.tasks.append(asyncio.create_task(self._commit_joins()))
        await asyncio.shield(self._joins_done)  # a stream that ends meanwhile does not cancel the others' write

    async def _commit_joins(self) -> None:
        async with self._joining:  # one at a time: the joins arriving meanwhile wait for the next
            batch, done = self._joins, self._joins_done
            self._joins, self._joins_done = [], None
            assert done is not None
            try:
                records = await self.thread.run(self.store.commit, nodes=[r for r, _ in batch],
                                                events=[e for _, e in batch], when=time.time())
            except Exception as exc:
                done.set_exception(exc)
                done.exception()  # retrieved here too: every joiner may have gone
            else:
                self.events.notify(records)
                done.set_result(None)
        self.tasks = [t for t in self.tasks if not t.done()]

    # -- the failure detector ---------------------------------------------------------------------
    async def detect_loop(self, busy: Callable[[], bool]) -> None:
        """Age the nodes a few times per interval; `busy`: a scheduling pass runs (the tuning collects later)."""
        while True:
            await asyncio.sleep(min(self.interval, self.lease) / 4)
            aged = self.pool.age(self.interval, self.lease)
            events = [("NodeLost", node.name, f"no message for {self.lease:g} s: its replicas move")
                      if state == NODE_LOST else ("NodeSuspect", node.name, "missed 2 telemetry intervals")
                      for node, state in aged]
            try:
                await self.record_node_states(events)  # one transaction per pass, however many nodes changed
            except Exception:
                log.exception("recording node states failed")
            if aged:
                self.state.routes({node.name for node, _ in aged})
            if any(kind == "NodeLost" for kind, _, _ in events):
                self.changed()
            self.tuning.tick(busy=busy())

    async def record_node_states(self, events: Sequence[Event] = ()) -> None:
        """Write the NodeReady events queued since the last call, then `events`, in one transaction."""
        queued, self._node_events = self._node_events, []
        await self.events.emit([*queued, *events])


def adopt(node: NodeState, specs: dict[str, DeploymentSpec], placement: dict[str, list[Replica]]) -> None:
    """Instances a node already runs for a known deployment count as its replicas (no restart); a version's
    instance takes the indexes the deployment's split gives that version first."""
    for inst in node.every_instance():
        name = inst.deployment
        spec = specs.get(name)
        if spec is None or inst.state not in ("READY", "LOADING") or not inst.devices:
            continue
        replicas = placement.setdefault(name, [])
        versions = replica_versions(spec) if spec.traffic else []
        here = {(r.node, r.device) for r in replicas}
        used = {r.index for r in replicas}
        for device in inst.devices:
            if (node.name, device) in here or len(replicas) >= spec.replicas:
                continue
            free = [i for i in range(spec.replicas + len(replicas) + 1) if i not in used]
            index = next((i for i in free if i < len(versions) and versions[i] == inst.version), free[0])
            used.add(index)
            replicas.append(Replica(name, index, node.name, device, spec.memory_bytes or MIN_MEMORY))
