"""What keeps the controller's hot path short at scale: cached node views, in-place telemetry deltas, one store
transaction per reconcile and per failure-detector pass, and an admin call that answers with everything persisted."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import grpc

from models import mlp, onnx_bytes
from xpud.controller.catalog import Catalog
from xpud.controller.control import Controller
from xpud.controller.core import NODE_READY
from xpud.controller.pool import Pool, merge_delta
from xpud.controller.server import start_controller
from xpud.controller.store import ArtifactStore, SqliteStore
from xpud.controller.tuning import ProcessTuning, Tuning
from xpud.proto import admin_pb2 as apb
from xpud.proto import admin_pb2_grpc, link_pb2_grpc
from xpud.proto import link_pb2 as lpb
from xpud.proto import telemetry_pb2 as tpb
from xpud.proto.samples import apply_delta

MODEL = onnx_bytes(mlp())  # a push is loaded before it is kept

GiB = 1 << 30


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def core(tmp_path: Path, tuning: Tuning | None = None, **kw: Any) -> tuple[SqliteStore, Controller]:
    """A store and a controller on it (artifacts beside); `tuning`: none unless given."""
    store = SqliteStore(tmp_path)
    return store, Controller(store, ArtifactStore(tmp_path / "artifacts"), tuning=tuning, **kw)


def tuned_at_scale(tmp_path: Path, monkeypatch: Any, clock: Clock) -> tuple[SqliteStore, Controller, ProcessTuning]:
    """A controller with the process tuning installed, in scale mode from 3 nodes on, warming up at once."""
    from xpud.controller import heap, passes

    monkeypatch.setattr(passes, "WARM_DELAY", 0.01)
    monkeypatch.setattr(heap, "SCALE_NODES", 3)
    tuning = ProcessTuning(clock)
    store, controller = core(tmp_path, tuning=tuning, clock=clock)
    return store, controller, tuning


def hello(node: str) -> lpb.Hello:
    out = lpb.Hello(node=node, execution_providers=["CPUExecutionProvider"], inference_endpoint="127.0.0.1:9")
    out.devices.add(id="sim:0", vendor="sim", kind="gpu", memory_total=80 * GiB)
    return out


def telemetry(**fields: Any) -> lpb.Telemetry:
    return lpb.Telemetry(samples=[tpb.DeviceSample(device_id="sim:0", **fields)])


def test_a_node_view_is_rebuilt_only_when_what_the_filters_read_changes():
    pool = Pool(Clock())
    node = pool.node("n1")
    pool.hello(node, hello("n1"), 0.0)
    pool.telemetry(node, telemetry(full=True, health=tpb.HEALTH_OK, utilization=0.50, memory_used=10 * GiB))
    first = pool.views()[0]
    assert first.devices[0].health == "ok" and first.devices[0].utilization is None  # load comes through `load`
    assert pool.load.get(("n1", "sim:0")) == 0.50
    assert not pool.telemetry(node, telemetry(utilization=0.95, memory_used=70 * GiB, temperature=60.0))
    assert pool.views()[0] is first  # live readings moved: the same view, the new load
    assert pool.load.get(("n1", "sim:0")) == 0.95 and node.samples["sim:0"].temperature == 60.0
    assert pool.load.get(("n1", "sim:1")) is None and pool.load.get(("n2", "sim:0")) is None
    assert not pool.telemetry(node, telemetry(health=tpb.HEALTH_OK))  # health sent again, unchanged
    assert pool.views()[0] is first
    assert pool.telemetry(node, telemetry(health=tpb.HEALTH_FAILED))  # the controller schedules again
    assert not pool.telemetry(node, telemetry(health=tpb.HEALTH_FAILED))
    assert pool.views()[0].devices[0].health == "failed"
    same = pool.views()[0]
    assert pool.telemetry(node, telemetry(cleared=["health"]))  # a cleared reading is unknown
    assert pool.views()[0].devices[0].health == "unknown"
    same = pool.views()[0]
    node.state = NODE_READY  # state and cordon are read straight from the node, however they were set
    node.cordoned = True
    assert pool.views()[0] is not same and pool.views()[0].cordoned and pool.views()[0].state == NODE_READY


def test_a_health_state_change_rebuilds_the_view_and_is_recorded_as_a_move():
    pool = Pool(Clock())
    node = pool.node("n1")
    pool.hello(node, hello("n1"), 0.0)
    pool.telemetry(node, telemetry(full=True, health=tpb.HEALTH_OK, health_state=tpb.DEVICE_HEALTH_HEALTHY))
    first = pool.views()[0]
    assert first.devices[0].health_state == "healthy" and pool.health_moves == []
    assert not pool.telemetry(node, telemetry(utilization=0.5))  # no health_state in a delta: unchanged
    assert pool.telemetry(node, telemetry(health_state=tpb.DEVICE_HEALTH_UNHEALTHY,
                                          health_state_reason="XID storm: 5 XIDs in 60 s"))
    assert pool.views()[0].devices[0].health_state == "unhealthy"
    assert pool.health_moves == [("n1", "sim:0", "healthy", "unhealthy", "XID storm: 5 XIDs in 60 s")]
    assert not pool.telemetry(node, telemetry(health_state=tpb.DEVICE_HEALTH_UNHEALTHY))


def test_views_keep_their_places_as_nodes_join():
    pool = Pool(Clock())
    for name in ("b", "c", "a"):
        pool.hello(pool.node(name), hello(name), 0.0)
        assert [v.name for v in pool.views()] == list(pool.nodes)  # joined ones after the others
    before = pool.views()
    pool.nodes["c"].state = NODE_READY  # only c is looked at again
    after = pool.views()
    assert after is not before and [v.state for v in after] == ["Suspect", "Ready", "Suspect"]
    assert after[0] is before[0] and after[2] is before[2] and after[1] is not before[1]


def test_measured_memory_follows_what_nodes_report(tmp_path: Path) -> None:
    """The most memory per device a READY instance of each deployment uses, kept from the nodes that reported
    since the last pass: equal to a walk over every node's instances, through random reports."""
    rng = random.Random(7)
    _, controller = core(tmp_path)
    pool = controller.pool
    for step in range(300):
        name = f"n{rng.randrange(12)}"
        node = pool.node(name)
        report = lpb.StatusReport(generation=step)
        for deployment in rng.sample(["a", "b", "c", "d"], rng.randint(0, 3)):
            report.instances.add(deployment=deployment, state=rng.choice(["READY", "READY", "LOADING", "FAILED"]),
                                 devices=["sim:0", "sim:1"][:rng.randint(1, 2)],
                                 memory_bytes=rng.choice([0, 1, 2, 3, 4]) * GiB)
        if rng.random() < 0.2:
            pool.hello(node, lpb.Hello(node=name, instances=report.instances), 0.0)
        else:
            pool.status(node, report)
        if rng.random() < 0.5:
            continue  # reports pile up between passes
        walked: dict[str, int] = {}
        for n in pool.nodes.values():
            for deployment, inst in n.instances.items():
                if inst.state == "READY" and inst.memory_bytes:
                    per = inst.memory_bytes // len(inst.devices)
                    walked[deployment] = max(walked.get(deployment, 0), per)
        assert controller.measured() == walked, step
    controller.thread.close()


def test_merge_delta_matches_apply_delta():
    full = tpb.DeviceSample(device_id="sim:0", full=True, health=tpb.HEALTH_OK, utilization=0.5, temperature=40.0)
    full.events.add(kind="xid", message="13")
    deltas = [
        tpb.DeviceSample(device_id="sim:0", utilization=0.7, power_draw=100.0),  # scalars: merged in place
        tpb.DeviceSample(device_id="sim:0", cleared=["temperature"]),
        tpb.DeviceSample(device_id="sim:0", health=tpb.HEALTH_DEGRADED, extra={"x": 1.0}),
        tpb.DeviceSample(device_id="sim:0", full=True, utilization=0.1),
    ]
    for delta in deltas:
        expected = apply_delta(apply_delta(None, full), delta)
        held = apply_delta(None, full)
        assert merge_delta(held, delta) == expected, delta
    held = apply_delta(None, full)
    assert merge_delta(held, deltas[0]) is held and not held.events  # in place; events belong to one sample


def test_catalog_resolves_models_like_the_store(tmp_path):
    with SqliteStore(tmp_path) as store:
        digest, size = ArtifactStore(tmp_path / "artifacts").put([b"\x08model"])
        for version in ("2", "10", "3"):
            store.add_model("m", version, digest, size, "model.onnx")
        catalog = Catalog(store.models())
        for version in ("", "2", "3", "10", "4"):
            expected = store.model("m", version or None)
            assert catalog.find("m", version) == expected, version


def test_store_commit_writes_placement_generations_and_events_at_once(tmp_path):
    from xpud.controller.core import Replica

    with SqliteStore(tmp_path) as store:
        store.set_generations({"n1": 5})
        records = store.commit(placement={"web": [Replica("web", 0, "n1", "sim:0", GiB)]},
                               generations={"n1": 4, "n2": 1}, events=[("Placed", "web", "on n1/sim:0"),
                                                                       ("Moved", "db", "x")], when=7.0)
        assert [(e.kind, e.when) for e in records] == [("Placed", 7.0), ("Moved", 7.0)]
        assert store.events() == records
        assert store.generations() == {"n1": 5, "n2": 1}  # never backwards
        assert store.placement() == {"web": [Replica("web", 0, "n1", "sim:0", GiB)]}
        store.commit(events=[("NodeReady", "n1", "back")])  # placement=None leaves it as it is
        assert store.placement() == {"web": [Replica("web", 0, "n1", "sim:0", GiB)]}


async def test_the_failure_detector_writes_one_transaction_per_pass(tmp_path, monkeypatch):
    clock = Clock()
    store, controller = core(tmp_path, interval=0.01, lease=0.02, clock=clock)
    commits: list[int] = []
    commit = store.commit

    def counting(**kwargs: Any) -> Any:
        records = commit(**kwargs)
        commits.append(len(records))
        return records

    monkeypatch.setattr(store, "commit", counting)
    for i in range(5):
        node = controller.pool.node(f"n{i}")
        controller.pool.seen(node, 0.0)
        node.state = NODE_READY
    clock.t += 1.0  # every node past its lease at the detector's next pass
    detector = asyncio.create_task(controller.nodes.detect_loop(controller.scheduling.busy))
    while not commits:
        await asyncio.sleep(0.005)
    detector.cancel()
    await asyncio.gather(detector, return_exceptions=True)
    assert commits[0] == 5
    assert sorted(e.kind for e in store.events()) == ["NodeLost"] * 5
    await controller.close()
    store.close()


async def test_create_deployment_answers_with_placement_events_and_push_persisted(tmp_path):
    """Over real gRPC: when CreateDeployment returns, the store holds the placement, the pushed generation and
    the events, and the agent's stream has its DesiredState (generation above the join's)."""
    running = await start_controller("127.0.0.1:0", 0, tmp_path / "state")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        call = link_pb2_grpc.AgentLinkStub(channel).Connect()
        await call.write(lpb.AgentMessage(hello=hello("n1")))
        assert (await call.read()).WhichOneof("kind") == "welcome"
        joined = await call.read()  # the first desired state: nothing to run yet
        assert joined.desired.generation >= 1 and not joined.desired.assignments
        admin = admin_pb2_grpc.AdminStub(channel)
        await admin.PushModel(iter([apb.PushModelChunk(name="m", filename="m.onnx", data=MODEL)]))
        status = await admin.CreateDeployment(apb.Deployment(name="web", model="m", device="gpu"))
        store = running.controller.store
        assert [(r.node, r.device) for r in status.replicas] == [("n1", "sim:0")]
        assert [(r.node, r.device) for r in store.placement()["web"]] == [("n1", "sim:0")]
        kinds = [e.kind for e in store.events()]
        assert kinds.index("DeploymentCreated") < kinds.index("Placed")
        pushed = await call.read()
        while pushed.desired.generation <= joined.desired.generation or not pushed.desired.assignments:
            pushed = await call.read()
        assert [a.deployment for a in pushed.desired.assignments] == ["web"]
        assert store.generations()["n1"] == pushed.desired.generation
        call.cancel()
    finally:
        await channel.close()
        await running.stop(0)


async def test_after_a_full_pass_the_plain_pools_are_built_and_a_grown_heap_frozen(tmp_path, monkeypatch):
    import gc

    from xpud.controller import heap

    gc.collect()  # the cyclic garbage earlier tests left would be frozen with the pool, then counted as freed here
    clock = Clock()
    store, controller, tuned = tuned_at_scale(tmp_path, monkeypatch, clock)
    for i in range(3):
        node = controller.pool.node(f"n{i}")
        controller.pool.hello(node, hello(f"n{i}"), 0.0)
        node.state = NODE_READY
    defaults = gc.get_threshold()
    try:
        await controller.reconcile_now()
        assert controller.planner.last == "full" and gc.get_freeze_count() > 0  # 3 nodes: frozen
        assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD  # collections on the controller's schedule
        kept = controller.planner._last
        assert kept is not None
        for _ in range(100):
            if len(kept.pools) == 3:
                break
            await asyncio.sleep(0.01)
        assert sorted(sig[0] for sig in kept.pools) == ["any", "cpu", "gpu"]
        collected = heap.GC_TIME.oldest = -1
        tuned.heap.tick(busy=True)  # a pass runs: later
        assert heap.GC_TIME.oldest == collected
        monkeypatch.setattr(heap, "YOUNG_SKIP", 1 << 40)
        clock.t += heap.YOUNG_PERIOD
        tuned.heap.tick(busy=False)  # too few objects allocated since the freeze to be worth a walk
        assert heap.GC_TIME.oldest == -1 and tuned.heap.skipped == 1
        monkeypatch.setattr(heap, "YOUNG_SKIP", 0)
        clock.t += heap.YOUNG_PERIOD
        tuned.heap.tick(busy=False)
        assert heap.GC_TIME.oldest == 1  # the young generations
        assert tuned.heap.young_period == 2 * heap.YOUNG_PERIOD  # next to nothing freed: twice as long
        clock.t += heap.YOUNG_PERIOD
        heap.GC_TIME.oldest = -1
        tuned.heap.tick(busy=False)
        assert heap.GC_TIME.oldest == -1  # not yet
        clock.t += heap.HEAP_PERIOD
        tuned.heap.tick(busy=False)  # the pool grew (joins' garbage frozen): everything, then frozen again
        assert heap.GC_TIME.oldest == 2 and gc.get_freeze_count() > 0
        assert tuned.heap.heap_period == 2 * heap.HEAP_PERIOD and not tuned.heap.grew
        heap.GC_TIME.oldest = -1
        clock.t += tuned.heap.heap_period
        tuned.heap.tick(busy=False)  # no stream ended, no growth since: nothing frozen can be garbage
        assert heap.GC_TIME.oldest == -1 and tuned.heap.skipped == 2
        await controller.node_left(controller.pool.nodes["n0"])
        clock.t += tuned.heap.heap_period
        tuned.heap.tick(busy=False)
        assert heap.GC_TIME.oldest == 2 and tuned.heap.ended == 0
    finally:
        await controller.close()
        store.close()
    assert gc.get_threshold() == defaults and gc.get_freeze_count() == 0  # given back


def test_collection_periods_double_while_collections_free_next_to_nothing():
    from xpud.controller import heap

    assert heap._next_period(60.0, 60.0, 0) == 120.0
    assert heap._next_period(heap.MAX_PERIOD, 60.0, heap.FEW_FREED - 1) == heap.MAX_PERIOD
    assert heap._next_period(960.0, 60.0, heap.FEW_FREED) == 60.0  # garbage again: back to the start


async def test_nodes_that_join_a_settled_pool_are_frozen_once_it_settles_again(tmp_path, monkeypatch):
    """Joins take no full pass (the Planner refreshes its state), yet the heap is still frozen once they stop."""
    import gc


    clock = Clock()
    store, controller, tuned = tuned_at_scale(tmp_path, monkeypatch, clock)
    try:
        await controller.reconcile_now()  # the first pass: full, no nodes
        while controller.scheduling.warming:
            await asyncio.sleep(0.01)
        for i in range(4):
            node = controller.pool.node(f"n{i}")
            controller.pool.hello(node, hello(f"n{i}"), 0.0)
            node.state = NODE_READY
        await controller.reconcile_now()
        assert controller.planner.last == "same" and controller.planner.refreshed == 4
        assert controller.scheduling.warming
        gc.unfreeze()  # (the pass froze the grown heap too): the settled pool is frozen on its own
        while controller.scheduling.warming:
            await asyncio.sleep(0.01)
        assert gc.get_freeze_count() > 0 and tuned.heap.frozen_nodes == 4
    finally:
        await controller.close()
        store.close()


async def test_a_device_that_fails_in_telemetry_has_its_replica_moved(tmp_path):
    """Over real gRPC: a health change in a telemetry delta triggers a pass (nothing else happens meanwhile), and
    the replica on the failed device is pushed to the other node."""
    running = await start_controller("127.0.0.1:0", 0, tmp_path / "state")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    calls = {}
    try:
        for name in ("n1", "n2"):
            call = calls[name] = link_pb2_grpc.AgentLinkStub(channel).Connect()
            await call.write(lpb.AgentMessage(hello=hello(name)))
            assert (await call.read()).WhichOneof("kind") == "welcome"
            await call.write(lpb.AgentMessage(telemetry=telemetry(full=True, health=tpb.HEALTH_OK)))
        admin = admin_pb2_grpc.AdminStub(channel)
        await admin.PushModel(iter([apb.PushModelChunk(name="m", filename="m.onnx", data=MODEL)]))
        status = await admin.CreateDeployment(apb.Deployment(name="web", model="m", device="gpu"))
        first = status.replicas[0].node
        other = "n2" if first == "n1" else "n1"
        await calls[first].write(lpb.AgentMessage(telemetry=telemetry(health=tpb.HEALTH_FAILED)))

        async def moved() -> lpb.DesiredState:
            while True:
                message = await calls[other].read()
                if message.desired.assignments:
                    return message.desired

        desired = await asyncio.wait_for(moved(), 10)
        assert [a.deployment for a in desired.assignments] == ["web"]
        assert [(r.node, r.device) for r in running.controller.store.placement()["web"]] == [(other, "sim:0")]
        for call in calls.values():
            call.cancel()
    finally:
        await channel.close()
        await running.stop(0)


async def test_a_join_storm_shares_transactions_and_records_every_node(tmp_path, monkeypatch):
    store, controller = core(tmp_path)
    commits: list[int] = []
    commit = store.commit

    def counting(**kwargs: Any) -> Any:
        commits.append(len(kwargs.get("nodes", ())))
        return commit(**kwargs)

    monkeypatch.setattr(store, "commit", counting)
    nodes = []
    for i in range(200):
        node = controller.pool.node(f"n{i:03d}")
        controller.pool.hello(node, hello(node.name), 0.0)
        nodes.append(node)
    await asyncio.gather(*(controller.node_joined(node, hello(node.name)) for node in nodes))
    assert sum(commits) == 200 and len(commits) < 20, commits  # the first alone, then the rest together
    assert sorted(r.name for r in store.nodes()) == [n.name for n in nodes]
    assert [e.kind for e in store.events()] == ["NodeJoined"] * 200
    assert all(n.state == NODE_READY for n in nodes)
    await controller.close()
    store.close()


def test_a_collection_the_collector_starts_itself_at_scale_is_logged(monkeypatch, caplog):
    import gc
    import logging

    from xpud.controller import heap

    monkeypatch.setattr(heap, "SCALE_NODES", 1)
    monkeypatch.setattr(heap, "LOG_SLOW", 0.0)
    h = heap.Heap(Clock())
    heap.GC_TIME.install()  # what `tuning.ProcessTuning` does
    try:
        with caplog.at_level(logging.DEBUG, logger="xpud.controller.heap"):
            h.grown(1)  # scale: the collector runs on the controller's schedule
            gc.collect(0)  # as if the collector had started one inside some call
            h.young_at -= heap.YOUNG_PERIOD
            monkeypatch.setattr(heap, "YOUNG_SKIP", 0)
            h.tick(busy=False)  # Heap's own: logged as such, not as automatic
        automatic = [r for r in caplog.records if r.getMessage().startswith("automatic garbage collection")]
        assert len(automatic) == 1 and "generation 0" in automatic[0].getMessage()
    finally:
        h.close()
        heap.GC_TIME.uninstall()
    assert not heap.GC_TIME.watch and heap.GC_TIME not in gc.callbacks
