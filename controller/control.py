"""The controller's core and its command API: what the admin and link servicers call.

`Controller` holds the state in memory (`state.State`) and wires the parts that keep it: the store thread
(`storethread`), the events (`events`), the models (`catalog`), the nodes and their joins (`nodes`), the
scheduling pass (`passes`) and the pushes it makes (`pushes`). Every admin change goes through a scheduling
pass's transaction; errors are typed (`xpud.proto.status` errors, `store.Conflict`, `store.StoreError`).
Hooks on `routes_changed` hear which nodes' routable state changed (an empty set: everything).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from xpud.proto import identity
from xpud.proto import link_pb2 as lpb
from xpud.proto.status import FailedPrecondition, InvalidArgument, NotFound

from . import rollout as rollouts
from .catalog import Measured, Models, estimate
from .core import NODE_LOST, Decision, DeploymentSpec
from .drift import GRACE as REPLACE_GRACE
from .drift import Drift
from .events import EventLog
from .handover import GRACE as HANDOVER_GRACE
from .handover import Handover
from .nodes import Nodes
from .onnxcheck import backfill, inspect_model
from .passes import COALESCE, Change, Scheduling
from .planner import Planner
from .pool import NodeState, Pool
from .profiles import FLUSH_S
from .rollback import CHECK_INTERVAL_S, MIN_REQUESTS, breach, check_rate, raised
from .routes import RouteTable
from .state import RoutesChanged, State
from .stats import VersionStats
from .store import ArtifactStore, Event, EventRecord, ModelRecord, StateStore, StoreError
from .storethread import StoreThread
from .tokens import Tokens
from .traffic import Weights, normalized, weights
from .tuning import Tuning
from .validation import ONNX_HEAD, check_model, check_placement, check_spec
from .views import deployment_status

ROLLOUT_TICK_S = 0.2  # how often rollouts in progress are looked at (nothing is done while there are none)
log = logging.getLogger(__name__)
CHUNK = 1 << 20


class Controller:
    def __init__(self, store: StateStore, artifacts: ArtifactStore, *, interval: float = 1.0, lease: float = 3.0,
                 clock: Callable[[], float] = time.monotonic, coalesce: float = COALESCE,
                 tuning: Tuning | None = None, handover_grace: float = HANDOVER_GRACE,
                 replace_grace: float = REPLACE_GRACE, stats: VersionStats | None = None,
                 rollback_min_requests: int = MIN_REQUESTS, rollback_interval: float = CHECK_INTERVAL_S) -> None:
        """`stats`: the router's live figures per version (default: a 30 s window); the auto-rollback guards judge
        a version by them once it has `rollback_min_requests` answers in the window, every `rollback_interval`."""
        self.store, self.artifacts = store, artifacts
        self.stats = stats if stats is not None else VersionStats()
        self.rollback_min_requests, self.rollback_interval = rollback_min_requests, rollback_interval
        self.interval, self.lease, self.clock = interval, lease, clock
        self.tuning = tuning or Tuning()
        self.state = State(Pool(clock), handover=Handover(handover_grace), drift=Drift(replace_grace))
        self.thread = StoreThread(self.tuning.store_call)
        self.events = EventLog(store, self.thread)
        self.models = Models(store, self.thread)
        self.scheduling = Scheduling(self.state, store, self.thread, self.events, self.models, self.tuning,
                                     coalesce=coalesce)
        self.nodes = Nodes(self.state, store, self.thread, self.events, self.tuning, self.scheduling.changed,
                           interval=interval, lease=lease)
        self.tokens = Tokens(store, self.thread, self.events)
        self.tokens.changed = self._push_tokens
        self.token_sessions: set[Any] = set()  # secured links (Session.push) told the live tokens
        self.routes = RouteTable(self._unrouted, self.state.unrouted)  # the router's endpoint table, kept by the hook
        self.state.routes_changed.append(self._route)
        self._tasks: list[asyncio.Task[None]] = []

    def tokens_message(self) -> lpb.ControllerMessage:
        """The live tokens as an agent checks them (hashes, never tokens)."""
        keys = [lpb.TokenKey(id=k.id, name=k.name, role=k.role, salt=k.salt, hash=k.hash) for k in self.tokens.keys()]
        return lpb.ControllerMessage(tokens=lpb.Tokens(tokens=keys))

    def _push_tokens(self) -> None:
        message = self.tokens_message()
        for session in self.token_sessions:
            session.push(message)

    def _unrouted(self, name: str) -> str | None:
        """Why a deployment has no ready replica (None: no such deployment)."""
        return deployment_status(self.state, name).reason if name in self.state.specs else None

    def _route(self, nodes: set[str]) -> None:
        """Bring the endpoint table up to date: the nodes named, or the deployments after a pass."""
        if not nodes:
            self.routes.deployments(self.state.specs, self._splits(), self._limits())
        for name in nodes:
            if (node := self.pool.nodes.get(name)) is not None:
                self._routed_again(node)
                self.routes.node(node)

    def _splits(self) -> dict[str, Weights]:
        """The weights of the deployments served in several versions (the router splits their requests)."""
        return {name: spec.traffic for name, spec in self.state.specs.items() if spec.traffic}

    def _limits(self) -> dict[str, int]:
        """The bounds on requests in flight per replica (the router queues beyond them)."""
        return {name: spec.max_inflight for name, spec in self.state.specs.items() if spec.max_inflight}

    def _routed_again(self, node: NodeState) -> None:
        """Deployments dropped from a node's share (`state.unrouted`) are forgotten once it no longer reports them
        READY: a later placement there is routed as usual."""
        names = self.state.unrouted.get(node.name)
        if names:
            names -= {name for name in names if all(i.state != "READY" for i in node.instances_of(name))}
            if not names:
                del self.state.unrouted[node.name]

    # -- what the other parts read ----------------------------------------------------------------
    @property
    def pool(self) -> Pool:
        return self.state.pool

    @property
    def specs(self) -> dict[str, DeploymentSpec]:
        return self.state.specs

    @property
    def planner(self) -> Planner:
        return self.scheduling.planner

    @property
    def routes_changed(self) -> list[RoutesChanged]:
        """Called with the names of the nodes whose routable state changed, or an empty set after each scheduling
        pass (deployments added or deleted, why one has no ready replica): when a node is welcomed, joins, leaves,
        comes back, goes Suspect or Lost, or reports a change of its instances' states."""
        return self.state.routes_changed

    @property
    def measured(self) -> Measured:
        return self.scheduling.measured

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        state, run = self.state, self.thread.run
        state.specs = {s.name: s for s in await run(self.store.deployments)}
        state.placement = await run(self.store.placement)
        state.generations = await run(self.store.generations)
        self.nodes.restore(await run(self.store.nodes))
        await self.tokens.load()
        state.profiles.load(await run(self.store.profiles))
        # routable as soon as their agents say Hello again
        self.routes.deployments(state.specs, self._splits(), self._limits())
        log.info("controller state: %d deployment(s), %d node(s) known", len(state.specs), len(self.pool.nodes))
        self._tasks = [asyncio.create_task(self.scheduling.loop()),
                       asyncio.create_task(self.nodes.detect_loop(self.scheduling.busy)),
                       asyncio.create_task(self._backfill()),
                       asyncio.create_task(self._rollouts()),
                       asyncio.create_task(self._rollback_loop()),
                       asyncio.create_task(self._keep_profiles())]
        self.scheduling.changed()

    async def _backfill(self) -> None:
        if await backfill(self.store, self.artifacts, self.thread.run):
            self.models.changed()

    async def _keep_profiles(self) -> None:
        """Write the placement profiles that moved every FLUSH_S (never per request)."""
        while True:
            await asyncio.sleep(FLUSH_S)
            await self.flush_profiles()

    async def flush_profiles(self) -> None:
        """Write the placement profiles that moved since the last write (a store error is logged: they are
        written again with the next change)."""
        changed = self.state.profiles.changed()
        if changed:
            try:
                await self.thread.run(self.store.put_profiles, changed)
            except StoreError as exc:
                log.warning("placement profiles not stored: %s", exc)

    async def close(self) -> None:
        self.tuning.close()
        self.scheduling.close()
        tasks = [*self._tasks, *self.nodes.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._tasks:  # started: what moved since the last write is kept too
            await self.flush_profiles()
        self.thread.close()

    def changed(self) -> None:
        """Something the scheduler reads changed: a pass soon (coalesced with other triggers)."""
        self.scheduling.changed()

    async def reconcile_now(self, events: tuple[Event, ...] | list[Event] = (), *,
                            apply: DeploymentSpec | None = None, create: bool = False) -> Decision:
        """A scheduling pass now (with `events`, and `apply` created or replaced in its transaction)."""
        return await self.scheduling.now(events, Change(apply=apply, create=create) if apply is not None else None)

    # -- deployments ------------------------------------------------------------------------------
    async def apply_deployment(self, spec: DeploymentSpec, *, create: bool = False) -> None:
        """Create (`create`: only if new, else `Conflict`) or replace a deployment, in force once its pass has
        written it."""
        check_spec(spec)
        catalog = await self.models.catalog((spec.model, spec.version))  # read again before a no
        if catalog.find(spec.model, spec.version) is None:
            known = sorted({f"{m.name}:{m.version}" for m in await self.thread.run(self.store.models)})
            what = f"{spec.model}:{spec.version}" if spec.version else spec.model
            raise NotFound(f"unknown model {what!r}; push it first with `xpud models push FILE --name {spec.model}` "
                           f"(models: {', '.join(known) or 'none'})")
        check_placement(spec)
        if spec.max_unavailable < -1:
            raise InvalidArgument(f"max_unavailable {spec.max_unavailable} must be >= 0 (replicas a rolling update "
                                  "may take down at once)")
        spec = replace(spec, auto_rollback_error_rate=0.0, rollback_traffic=())  # a deploy replaces the guard
        if spec.traffic:
            spec = replace(spec, traffic=normalized(spec.traffic))
            await self._check_versions(spec)
        kind = "DeploymentCreated" if create else "DeploymentApplied"
        what = f"model {spec.model}{':' + spec.version if spec.version else ''}, {spec.replicas} replica(s) on " \
               f"{spec.device}"
        events: list[Event] = [(kind, spec.name, what)]
        old = self.state.specs.get(spec.name)
        if old is not None and not create:  # a new model version on a placed deployment rolls out node by node
            source = await self._resolved_version(old.model, old.version)
            target = await self._resolved_version(spec.model, spec.version)
            spec = rollouts.begin(old, spec, source, target, time.time(),
                                  rollouts.holders(self.state.placement.get(spec.name, [])))
            if spec.rollout is not None and spec.rollout is not old.rollout:
                events.append(("RollbackStarted" if spec.rollout.rollback else "RolloutStarted", spec.name,
                               f"{spec.rollout.model}:{spec.rollout.version} -> {spec.model}:{spec.rollout.target}"))
        await self.scheduling.now(events, Change(apply=spec, create=create), identity.actor())

    async def _resolved_version(self, model: str, version: str) -> str:
        """The version `version` of `model` stands for ("" for latest: the latest pushed); "" if there is none."""
        record = (await self.models.catalog((model, version))).find(model, version)
        return record.version if record is not None else ""

    async def rollback(self, name: str) -> None:
        """Return a deployment to its previous model version the way it rolled out, or turn back the rollout in
        progress (FailedPrecondition: no previous version, or a traffic split)."""
        spec = self._spec(name)
        source = await self._resolved_version(spec.model, spec.version) if spec.rollout is None else spec.rollout.target
        new = rollouts.rollback(spec, source, time.time(), rollouts.holders(self.state.placement.get(name, [])))
        await self._check_versions(replace(new, rollout=None))
        what = f"{spec.model}:{source} -> {new.model}:{new.version}"
        await self.scheduling.now([("RollbackStarted", name, what)], Change(apply=new), identity.actor())

    def _spec(self, name: str) -> DeploymentSpec:
        spec = self.state.specs.get(name)
        if spec is None:
            known = ", ".join(sorted(self.state.specs)) or "none"
            raise NotFound(f"unknown deployment {name!r}; deployments: {known}")
        return spec

    async def _rollouts(self) -> None:
        """Move rollouts on as their nodes report the new version (`rollout.step`), one pass per move."""
        while True:
            await asyncio.sleep(ROLLOUT_TICK_S)
            if not any(spec.rollout is not None for spec in self.state.specs.values()):
                continue
            try:
                await self.scheduling.advance(self._rollout_steps)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("a rollout step failed")

    def _rollout_steps(self) -> tuple[list[DeploymentSpec], list[Event]]:
        state, now = self.state, time.time()
        totals = {(node.name, d.id): d.memory_total for node in self.pool.nodes.values() for d in node.devices.values()}
        free = rollouts.free_memory(totals, state.placement)
        moved: list[DeploymentSpec] = []
        events: list[Event] = []
        for spec in list(state.specs.values()):
            if spec.rollout is None:
                continue

            def report(node_name: str, name: str = spec.name) -> rollouts.Served | None:
                node = self.pool.nodes.get(node_name)
                inst = node.instances.get(name) if node is not None and node.state != NODE_LOST else None
                return None if inst is None else rollouts.Served(inst.state, inst.model, inst.version, inst.reason)

            new, said = rollouts.step(spec, state.placement.get(spec.name, []), report, free, now)
            if new is not spec:
                moved.append(new)
                events += said
                down = new.rollout.down if new.rollout is not None else ""
                if down and down != spec.rollout.down:  # no new request goes there once it is told to unload
                    state.unrouted.setdefault(down, set()).add(spec.name)
                    state.routes({down})
        return moved, events

    async def set_traffic(self, name: str, pairs: Sequence[tuple[str, int]],
                          auto_rollback_error_rate: float = 0.0) -> None:
        """Split a deployment's requests across model versions (`traffic.py`): NotFound for an unknown deployment
        or version, InvalidArgument for weights that do not sum to 100. One version at 100 serves it alone.
        With `auto_rollback_error_rate` (0, 1], the weights replaced come back should a version whose weight rose
        fail more often than that (`rollback.py`); 0: no guard. Either way the guard set before is replaced."""
        spec = self._spec(name)
        if spec.rollout is not None:
            raise FailedPrecondition(f"deployment {name!r} is rolling out {spec.model}:{spec.rollout.target}; wait "
                                     f"for it to finish (`xpud rollout status {name}`) or `xpud rollback {name}`")
        if auto_rollback_error_rate:
            check_rate(auto_rollback_error_rate)
        split = normalized(pairs)
        new = replace(self._weighed(spec, split), auto_rollback_error_rate=0.0, rollback_traffic=())
        await self._check_versions(new)
        what = " ".join(f"{v}={w}" for v, w in split)
        if auto_rollback_error_rate:
            before = await self._resolved(spec)
            if not raised(before, split):
                now = " ".join(f"{v}={w}" for v, w in before)
                raise InvalidArgument(f"--auto-rollback-error-rate watches the versions whose weight rises, and "
                                      f"none does from {now} to {what}: set new weights, or leave the flag out")
            new = replace(new, auto_rollback_error_rate=auto_rollback_error_rate, rollback_traffic=before)
            what += f", back to {' '.join(f'{v}={w}' for v, w in before)} above {auto_rollback_error_rate:g} errors"
        await self.scheduling.now([("TrafficChanged", name, f"model {spec.model} versions {what}")],
                                  Change(apply=new), identity.actor())

    @staticmethod
    def _weighed(spec: DeploymentSpec, split: Weights) -> DeploymentSpec:
        """`spec` with these (normalized) weights: one version at 100 serves it alone."""
        if len(split) == 1:
            return replace(spec, version=split[0][0], traffic=())
        return replace(spec, traffic=split, replicas=max(spec.replicas, len(split)))  # at least one replica each

    async def _resolved(self, spec: DeploymentSpec) -> Weights:
        """The deployment's weights with "latest" resolved to the version it is now: what a rollback restores."""
        if spec.traffic or spec.version:
            return weights(spec)
        latest = await self._resolved_version(spec.model, "")
        return ((latest, 100),) if latest else weights(spec)

    async def _rollback_loop(self) -> None:
        while True:
            await asyncio.sleep(self.rollback_interval)
            try:
                await self.check_rollbacks()
            except Exception:  # the store's trouble: logged, tried again on the next round
                log.exception("auto-rollback check failed")

    async def check_rollbacks(self) -> list[str]:
        """Put back the weights of every guarded deployment whose watched version fails too often (one
        RollbackTriggered event each, the guard cleared); the names of those rolled back."""
        done: list[str] = []
        if self.scheduling.busy():  # a change in its pass may replace a guard: judged on the next round
            return done
        for spec in list(self.state.specs.values()):
            found = breach(spec, self.stats, self.rollback_min_requests)
            if found is None or self.state.specs.get(spec.name) is not spec:
                continue
            restored = replace(self._weighed(spec, spec.rollback_traffic), auto_rollback_error_rate=0.0,
                               rollback_traffic=())
            message = found.message(self.stats.window_s, spec.rollback_traffic)
            log.warning("deployment %s rolled back: %s", spec.name, message)
            await self.scheduling.now([("RollbackTriggered", spec.name, message)], Change(apply=restored))
            done.append(spec.name)
        return done

    async def _check_versions(self, spec: DeploymentSpec) -> None:
        """Every version the deployment names is in the registry (NotFound otherwise)."""
        wanted = [(spec.model, v) for v, _ in weights(spec)]
        for _, v in wanted:
            check_model(spec.model, v)
        catalog = await self.models.catalog(*wanted)
        missing = [v for _, v in wanted if catalog.find(spec.model, v) is None]
        if missing:
            known = sorted(m.version for m in await self.thread.run(self.store.models) if m.name == spec.model)
            raise NotFound(f"model {spec.model!r} has no version {', '.join(map(repr, missing))}; push it first "
                           f"with `xpud models push FILE --name {spec.model}` (versions: {', '.join(known) or 'none'})")
        if spec.traffic and spec.replicas < len(spec.traffic):
            raise InvalidArgument(f"{len(spec.traffic)} versions need at least {len(spec.traffic)} replicas, "
                                  f"not {spec.replicas}")

    async def delete_deployment(self, name: str) -> None:
        await self.scheduling.now([("DeploymentDeleted", name, "removed by an operator")], Change(delete=name),
                                  identity.actor())
        self.stats.forget(name)

    async def memory_estimate(self, spec: DeploymentSpec) -> int:
        return estimate(spec, self.measured(), await self.models.catalog())

    # -- nodes ------------------------------------------------------------------------------------
    async def set_cordon(self, name: str, cordoned: bool, drain: bool = False) -> NodeState:
        """Cordon (no new replicas; `drain`: its replicas move off too) or uncordon a node."""
        what = "drained" if cordoned and drain else "cordoned" if cordoned else "uncordoned"
        await self.scheduling.now([(what.capitalize(), name, f"node {what} by an operator")],
                                  Change(cordon=(name, cordoned, drain)), identity.actor())
        return self.pool.nodes[name]

    def connect(self, hello: lpb.Hello, session: object) -> NodeState:
        return self.nodes.connect(hello, session, time.time())

    def welcomed(self, node: NodeState) -> None:
        self.nodes.welcomed(node)

    async def node_joined(self, node: NodeState, hello: lpb.Hello) -> None:
        await self.nodes.joined(node, hello)

    def heard(self, node: NodeState, message: lpb.AgentMessage) -> None:
        """A message on a node's link: telemetry or its instances' status."""
        self.nodes.heard(node, message, time.time())

    def node_back(self, node: NodeState) -> None:
        self.nodes.back(node)

    async def node_left(self, node: NodeState) -> None:
        self.nodes.left(node)

    async def record_node_states(self, events: tuple[Event, ...] | list[Event] = ()) -> None:
        await self.nodes.record_node_states(events)

    # -- models and artifacts ---------------------------------------------------------------------
    async def push_model(self, name: str, version: str, filename: str, data: AsyncIterator[bytes]) -> ModelRecord:
        """Store a model's bytes (streamed in) and record it as `version` (empty: the next whole number)."""
        check_model(name, version)
        size = 0
        fd, tmp = self.artifacts.temp_file(".tmp-push-")  # a crash leaves nothing the store keeps
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in data:
                    f.write(chunk)
                    size += len(chunk)
            if size == 0:
                raise InvalidArgument("no model bytes were sent")
            with tmp.open("rb") as src:
                head = src.read(1)
            if head != ONNX_HEAD:
                raise InvalidArgument(f"{filename or 'the file'} is not an ONNX model (.onnx) file")
            # loaded once on the CPU, in a thread of its own: the store thread and the loop go on meanwhile
            inputs, outputs = await asyncio.to_thread(inspect_model, tmp, filename or "model.onnx")

            def store_it() -> ModelRecord:
                with tmp.open("rb") as src:
                    digest, length = self.artifacts.put(iter(lambda: src.read(CHUNK), b""))
                return self.store.add_model(name, version or None, digest, length, filename or "model.onnx",
                                            inputs, outputs)

            record = await self.thread.run(store_it)
            self.models.changed()
        finally:
            tmp.unlink(missing_ok=True)
        await self.emit([("ModelPushed", record.name, f"version {record.version}, {record.size} bytes, "
                          f"sha256 {record.digest[:12]}")], actor=identity.actor())
        self.changed()
        return record

    async def list_models(self) -> list[ModelRecord]:
        return await self.thread.run(self.store.models)

    async def artifact(self, digest: str) -> Path:
        path = await self.thread.run(self.artifacts.path, digest)
        if path is None:
            raise NotFound(f"no artifact with digest {digest[:16]}")
        return path

    # -- events -----------------------------------------------------------------------------------
    async def emit(self, events: tuple[Event, ...] | list[Event], actor: str = "") -> None:
        await self.events.emit(events, actor)

    async def list_events(self, after_seq: int, limit: int, since: float = 0.0,
                          newest: bool = False) -> list[EventRecord]:
        return await self.thread.run(self.store.events, after_seq, limit or 1000, since, newest)

    async def watch_events(self, after_seq: int, limit: int, since: float = 0.0,
                           newest: bool = False) -> AsyncIterator[EventRecord]:
        """The events after `after_seq` (up to `limit` of those stored, from `since`; with `newest` the last
        ones), then each new one as it is written."""
        queue: asyncio.Queue[EventRecord] = asyncio.Queue()
        self.events.listeners.add(queue)
        try:
            last = after_seq
            for e in await self.list_events(after_seq, limit, since, newest):
                last = e.seq
                yield e
            while True:
                e = await queue.get()
                if e.seq > last:
                    last = e.seq
                    yield e
        finally:
            self.events.listeners.discard(queue)
