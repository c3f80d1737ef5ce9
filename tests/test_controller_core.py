"""The controller's core without processes: memory estimates, failure detection with a stepped clock."""

from __future__ import annotations

from pathlib import Path

from models import mlp, onnx_bytes
from xpud.controller.catalog import MIN_MEMORY
from xpud.controller.control import Controller
from xpud.controller.core import NODE_LOST, NODE_READY, NODE_SUSPECT, DeploymentSpec
from xpud.controller.store import ArtifactStore, SqliteStore
from xpud.proto import link_pb2 as lpb

MODEL, OTHER_MODEL = onnx_bytes(mlp()), onnx_bytes(mlp(seed=1))  # real models: a push is loaded before it is kept


def _core(tmp_path: Path, **kw):  # type: ignore[no-untyped-def]
    """A store and a controller on it (artifacts beside), with no process tuning."""
    store = SqliteStore(tmp_path)
    return store, Controller(store, ArtifactStore(tmp_path / "artifacts"), **kw)


def _with_model(tmp_path):  # type: ignore[no-untyped-def]
    """A store holding one small model "m", and a controller on it."""
    store, controller = _core(tmp_path)
    digest, size = controller.artifacts.put([b"\x08" + b"\0" * 100])
    store.add_model("m", None, digest, size, "model.onnx")
    return store, controller


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def test_memory_estimate_prefers_the_user_then_the_measurement_then_the_file(tmp_path):
    store, controller = _core(tmp_path)
    digest, size = controller.artifacts.put([b"\x08" + b"\0" * (100 << 20)])
    store.add_model("big", None, digest, size, "model.onnx")
    spec = DeploymentSpec("web", "big", "", 2, 0)
    assert await controller.memory_estimate(spec) == 3 * size  # the file x the factor
    node = controller.pool.node("n1")
    def report(memory: int) -> lpb.StatusReport:
        return lpb.StatusReport(instances=[lpb.InstanceStatus(deployment="web", state="READY",
                                                              devices=["cpu:0", "cpu:0"], memory_bytes=memory)])

    controller.pool.status(node, report(600 << 20))
    assert await controller.memory_estimate(spec) == 300 << 20  # measured, per replica
    controller.pool.status(node, report(1 << 20))  # a new report: measured again
    assert await controller.memory_estimate(spec) == MIN_MEMORY  # never below the floor
    assert await controller.memory_estimate(DeploymentSpec("web", "big", "", 2, 5 << 30)) == 5 << 30
    await controller.close()
    store.close()


def test_failure_detection_suspect_then_lost():
    clock = Clock()
    from xpud.controller.pool import Pool

    pool = Pool(clock)
    node = pool.node("n1")
    pool.seen(node, 0.0)
    node.state = NODE_READY
    clock.t += 1.5
    assert pool.age(1.0, 3.0) == []
    clock.t += 0.6  # 2.1 s silent: two intervals missed
    assert pool.age(1.0, 3.0) == [(node, NODE_SUSPECT)]
    clock.t += 1.0  # 3.1 s: past the lease
    assert pool.age(1.0, 3.0) == [(node, NODE_LOST)] and not node.connected
    assert pool.age(1.0, 3.0) == []  # reported once


async def test_a_suspect_node_that_speaks_again_is_ready(tmp_path):
    from xpud.controller.linkservice import AgentLinkService, Session

    store, controller = _core(tmp_path)
    node = controller.pool.node("n1")
    session = Session("n1")
    node.session, node.state = session, NODE_SUSPECT

    async def messages():  # type: ignore[no-untyped-def]
        yield lpb.AgentMessage(telemetry=lpb.Telemetry(seq=1))

    await AgentLinkService(controller)._read(messages(), node, session)
    assert node.state == NODE_READY and store.events() == []  # the reader did not wait for a commit
    await controller.record_node_states([("NodeSuspect", "n2", "missed 2 telemetry intervals")])
    assert [(e.kind, e.subject) for e in store.events()] == [("NodeReady", "n1"), ("NodeSuspect", "n2")]
    await controller.close()
    store.close()


async def test_a_deployment_is_written_in_its_pass_and_not_in_force_when_that_fails(tmp_path, monkeypatch):
    import pytest

    from xpud.controller.store import Conflict, StoreError

    store, controller = _with_model(tmp_path)
    spec = DeploymentSpec("web", "m", "", 1, 0)
    await controller.reconcile_now([("DeploymentCreated", "web", "")], apply=spec, create=True)
    assert store.deployments() == [spec] and controller.specs == {"web": spec}
    with pytest.raises(Conflict, match="already exists"):
        await controller.reconcile_now(apply=spec, create=True)

    def broken(**kw):  # type: ignore[no-untyped-def]
        raise StoreError("disk full")

    monkeypatch.setattr(store, "commit", broken)
    with pytest.raises(StoreError):  # a new one: gone from memory again
        await controller.reconcile_now(apply=DeploymentSpec("api", "m", "", 1, 0), create=True)
    with pytest.raises(StoreError):  # a replaced one: the stored spec back in force
        await controller.reconcile_now(apply=DeploymentSpec("web", "m", "", 3, 0))
    assert controller.specs == {"web": spec}
    monkeypatch.undo()
    assert store.deployments() == [spec]
    await controller.close()
    store.close()


async def _joined(controller: Controller, name: str, generation: int = 0):  # type: ignore[no-untyped-def]
    """A node with one CPU device joined over an in-memory session (its outbox holds what is pushed)."""
    import time

    from xpud.controller.linkservice import Session
    from xpud.proto import telemetry_pb2 as tpb

    node = controller.pool.node(name)
    node.session = Session(name)
    hello = lpb.Hello(node=name, generation=generation, devices=[tpb.DeviceInfo(id="cpu:0", kind="cpu",
                                                                                 memory_total=64 << 30)])
    controller.pool.hello(node, hello, time.time())
    await controller.node_joined(node, hello)
    return node


async def test_generations_resume_above_what_an_agent_reports(tmp_path):
    """A state dir older than what the agents applied (restored from a backup): the next push still counts up."""
    store, controller = _core(tmp_path)
    await controller.start()
    node = await _joined(controller, "n1", generation=41)  # the store knows no generation for it
    await controller.reconcile_now()
    assert node.session.outbox.get_nowait().desired.generation == 42
    assert store.generations() == {"n1": 42}
    await controller.close()
    store.close()


async def test_a_pass_runs_to_its_end_when_the_call_that_asked_for_it_is_cancelled(tmp_path, monkeypatch):
    """An admin client that goes away mid-call (its handler cancelled) leaves memory and store agreeing."""
    import asyncio
    import threading

    import pytest

    store, controller = _with_model(tmp_path)
    node = await _joined(controller, "n1")
    await controller.reconcile_now()
    node.session.outbox.get_nowait()  # the join's desired state
    entered, release, commit = threading.Event(), threading.Event(), store.commit

    def slow(**kw):  # type: ignore[no-untyped-def]
        entered.set()
        assert release.wait(10)
        return commit(**kw)

    monkeypatch.setattr(store, "commit", slow)
    spec = DeploymentSpec("web", "m", "", 1, 0)
    call = asyncio.ensure_future(controller.reconcile_now(apply=spec, create=True))
    while not entered.is_set():
        await asyncio.sleep(0.01)
    call.cancel()
    await asyncio.sleep(0.05)  # the cancellation lands while the transaction is being written
    release.set()
    with pytest.raises(asyncio.CancelledError):  # the caller still learns it was cancelled, once the pass is whole
        await call
    async with controller.scheduling.lock:
        assert controller.specs == {"web": spec} and store.deployments() == [spec]
        assert [r.node for r in controller.state.placement["web"]] == ["n1"]
        assert [a.deployment for a in node.session.outbox.get_nowait().desired.assignments] == ["web"]
    await controller.close()
    store.close()


async def test_a_storm_of_events_is_logged_in_one_line_per_kind_and_each_reaches_the_watchers(tmp_path, caplog):
    import asyncio
    import logging

    from xpud.controller import events

    store, controller = _core(tmp_path)
    watcher: asyncio.Queue[object] = asyncio.Queue()
    controller.events.listeners.add(watcher)
    joined = [("NodeJoined", f"n{i}", "3 device(s)") for i in range(events.LOG_EACH + 5)]
    with caplog.at_level(logging.INFO, logger="xpud.controller.events"):
        await controller.emit([*joined, ("NodeLost", "m1", "no message for 3 s")])
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"event NodeJoined x {len(joined)}: n0, n1, n2, ... (3 device(s); each one in `xpud events`)",
                     "event NodeLost m1: no message for 3 s"]
    assert watcher.qsize() == len(joined) + 1 and len(store.events()) == len(joined) + 1
    await controller.close()
    store.close()


async def test_after_a_restart_known_nodes_are_not_lost_while_agents_are_still_coming_back(tmp_path):
    """A restarted controller with many agents takes a while to hear them all: a node known from before is Lost only
    once a lease has passed with no agent coming back, so nothing moves because the controller was slow to take the
    joins."""
    import time

    from xpud.controller.store import NodeRecord

    clock = Clock()
    store, controller = _core(tmp_path, clock=clock, lease=3.0)
    store.commit(nodes=[NodeRecord(f"n{i}", {}, "", info={}) for i in range(3)])
    await controller.start()
    pool = controller.pool
    assert {n.state for n in pool.nodes.values()} == {NODE_SUSPECT} and pool.returning == {"n0", "n1", "n2"}
    clock.t += 2.0
    n0 = await _joined(controller, "n0")  # agents are coming back: the others get another lease from now
    assert pool.returning == {"n1", "n2"}
    clock.t += 2.0  # 4 s after the start: past the lease
    pool.seen(n0, time.time())
    assert pool.age(1.0, 3.0) == []
    clock.t += 1.5  # 3.5 s after the last join
    pool.seen(n0, time.time())
    assert sorted((n.name, state) for n, state in pool.age(1.0, 3.0)) == [("n1", NODE_LOST), ("n2", NODE_LOST)]
    await controller.close()
    store.close()


async def test_delete_and_cordon_are_written_in_their_pass_and_undone_when_it_fails(tmp_path, monkeypatch):
    import pytest

    from xpud.controller.store import StoreError
    from xpud.proto.status import NotFound

    store, controller = _with_model(tmp_path)
    node = await _joined(controller, "n1")
    spec = DeploymentSpec("web", "m", "", 1, 0)
    await controller.apply_deployment(spec, create=True)

    def broken(**kw):  # type: ignore[no-untyped-def]
        raise StoreError("disk full")

    monkeypatch.setattr(store, "commit", broken)
    with pytest.raises(StoreError):
        await controller.delete_deployment("web")
    with pytest.raises(StoreError):
        await controller.set_cordon("n1", True, drain=True)
    assert controller.specs == {"web": spec} and not node.cordoned and not controller.state.draining
    monkeypatch.undo()
    with pytest.raises(NotFound, match="unknown deployment 'api'; deployments: web"):
        await controller.delete_deployment("api")
    with pytest.raises(NotFound, match="unknown node 'n2'; nodes: n1"):
        await controller.set_cordon("n2", True)
    await controller.set_cordon("n1", True, drain=True)
    assert [n.cordoned for n in store.nodes()] == [True] and controller.state.draining == {"n1"}
    assert "web" not in controller.state.placement  # drained: nowhere else to go
    await controller.delete_deployment("web")
    assert store.deployments() == [] and controller.specs == {}
    kinds = [e.kind for e in store.events()]
    assert kinds.index("Drained") < kinds.index("DeploymentDeleted") and "DeploymentApplied" not in kinds
    await controller.close()
    store.close()


async def test_routes_changed_hears_the_nodes_concerned(tmp_path):
    store, controller = _with_model(tmp_path)
    heard: list[set[str]] = []
    controller.routes_changed.append(heard.append)
    node = await _joined(controller, "n1")
    assert heard == [{"n1"}]
    await controller.apply_deployment(DeploymentSpec("web", "m", "", 1, 0), create=True)
    assert heard[-1] == set()  # the deployments changed: everything
    heard.clear()
    controller.heard(node, lpb.AgentMessage(status=lpb.StatusReport(instances=[
        lpb.InstanceStatus(deployment="web", state="READY", devices=["cpu:0"])])))
    assert heard == [{"n1"}]
    controller.heard(node, lpb.AgentMessage(status=lpb.StatusReport(instances=[
        lpb.InstanceStatus(deployment="web", state="READY", devices=["cpu:0"])])))
    assert heard == [{"n1"}]  # the same states: nothing to tell
    await controller.node_left(node)
    assert heard[-1] == {"n1"}
    await controller.close()
    store.close()


async def test_a_controller_built_without_tuning_leaves_the_collector_alone(tmp_path, monkeypatch):
    import gc
    import sys

    from xpud.controller import heap

    monkeypatch.setattr(heap, "SCALE_NODES", 1)
    threshold, interval = gc.get_threshold(), sys.getswitchinterval()
    store, controller = _with_model(tmp_path)
    await _joined(controller, "n1")
    await controller.reconcile_now()
    assert gc.get_threshold() == threshold and gc.get_freeze_count() == 0 and heap.GC_TIME not in gc.callbacks
    assert sys.getswitchinterval() == interval and gc.isenabled()
    await controller.close()
    store.close()


async def test_admin_errors_map_to_grpc_status_codes(tmp_path):
    """Over real gRPC: each wrong call ends with the status its error maps to, and a message saying what to do."""
    import grpc
    import pytest

    from xpud.controller.server import start_controller
    from xpud.proto import admin_pb2 as apb
    from xpud.proto import admin_pb2_grpc, link_pb2_grpc

    running = await start_controller("127.0.0.1:0", 0, tmp_path / "state")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    admin = admin_pb2_grpc.AdminStub(channel)
    Code = grpc.StatusCode

    def push(*chunks: apb.PushModelChunk):  # type: ignore[no-untyped-def]
        return admin.PushModel(iter(chunks))

    async def fetch(digest: str) -> list[lpb.ArtifactChunk]:
        return [c async for c in link_pb2_grpc.AgentLinkStub(channel).FetchArtifact(
            lpb.FetchArtifactRequest(digest=digest))]

    try:
        await push(apb.PushModelChunk(name="m", data=MODEL))
        cases = [
            (push(), Code.INVALID_ARGUMENT, "no model bytes were sent"),
            (push(apb.PushModelChunk(name="Bad Name", data=b"\x08")), Code.INVALID_ARGUMENT, "model name 'Bad Name'"),
            (push(apb.PushModelChunk(name="m", version="v2", data=b"\x08")), Code.INVALID_ARGUMENT,
             "must be a whole number"),
            (push(apb.PushModelChunk(name="m", filename="x.txt", data=b"text")), Code.INVALID_ARGUMENT,
             "x.txt is not an ONNX model"),
            (push(apb.PushModelChunk(name="m", version="1", data=OTHER_MODEL)), Code.ALREADY_EXISTS,
             "exists with other content"),
            (admin.CreateDeployment(apb.Deployment(name="web", model="nope")), Code.NOT_FOUND,
             "unknown model 'nope'; push it first"),
            (admin.CreateDeployment(apb.Deployment(name="web", model="m", device="tpu")), Code.INVALID_ARGUMENT,
             "device 'tpu' must be one of"),
            (admin.CreateDeployment(apb.Deployment(name="-web", model="m")), Code.INVALID_ARGUMENT,
             "deployment name '-web'"),
            (admin.CreateDeployment(apb.Deployment(name="web", model="m", memory_bytes=2**63)), Code.INVALID_ARGUMENT,
             "more than 1 PiB per replica"),
            (admin.DeleteDeployment(apb.DeleteDeploymentRequest(name="web")), Code.NOT_FOUND,
             "unknown deployment 'web'"),
            (admin.SetCordon(apb.SetCordonRequest(node="n9", cordoned=True)), Code.NOT_FOUND, "unknown node 'n9'"),
            (fetch("0" * 64), Code.NOT_FOUND, "no artifact with digest"),
        ]
        for call, code, message in cases:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == code and message in (info.value.details() or ""), info.value
        await admin.CreateDeployment(apb.Deployment(name="web", model="m"))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await admin.CreateDeployment(apb.Deployment(name="web", model="m"))
        assert info.value.code() == Code.ALREADY_EXISTS and "already exists" in (info.value.details() or "")
    finally:
        await channel.close()
        await running.stop(0)


async def test_a_store_url_holds_the_state_and_the_state_dir_the_artifacts(tmp_path):
    import grpc

    from xpud.controller.server import start_controller
    from xpud.controller.store import SqliteStore
    from xpud.proto import admin_pb2 as apb
    from xpud.proto import admin_pb2_grpc

    db = tmp_path / "db" / "custom.db"
    running = await start_controller("127.0.0.1:0", 0, tmp_path / "state", store_url=f"sqlite://{db}")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            model = await admin.PushModel(iter([apb.PushModelChunk(name="m", data=MODEL)]))
            await admin.CreateDeployment(apb.Deployment(name="web", model="m"))
    finally:
        await running.stop(0)
    assert (tmp_path / "state" / "artifacts" / model.digest).is_file()
    assert not (tmp_path / "state" / "state.db").exists()
    with SqliteStore(db.parent, db.name) as store:
        assert [d.name for d in store.deployments()] == ["web"] and [m.name for m in store.models()] == ["m"]
