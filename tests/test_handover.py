"""Make-before-break across nodes: the scheduler keeps reserved memory free, and the controller keeps a moved
replica's old copy in its node's desired state (and routable) until the new one is READY, or the grace ends."""

from __future__ import annotations

import time
from pathlib import Path

from pool_shapes import GiB, dep, node, rep, where

from xpud.controller.control import Controller
from xpud.controller.core import NODE_LOST, DeploymentSpec
from xpud.controller.linkservice import Session
from xpud.controller.planner import Planner
from xpud.controller.pool import NodeState
from xpud.controller.scheduler import schedule
from xpud.controller.store import ArtifactStore, SqliteStore
from xpud.proto import link_pb2 as lpb
from xpud.proto import telemetry_pb2 as tpb

# --- the scheduler: reserved memory -----------------------------------------------------------------------------


def test_nothing_is_placed_into_reserved_memory() -> None:
    nodes = [node("n1", "one-gpu"), node("n2", "one-gpu")]
    d = dep(gib=30)
    assert where(schedule(nodes, [d], {}), "m") == [(0, "n1/nvidia:0")]
    held = {("n1", "nvidia:0"): 60 * GiB}  # an old replica kept there while its replacement loads
    assert where(schedule(nodes, [d], {}, reserved=held), "m") == [(0, "n2/nvidia:0")]


def test_reserved_memory_is_not_preempted() -> None:
    nodes = [node("n1", "one-gpu")]
    low, high = dep("low", gib=30), dep("high", gib=50, priority=5)
    placed = {"low": [rep(low, 0, "n1/nvidia:0")]}
    assert where(schedule(nodes, [low, high], placed), "high") == [(0, "n1/nvidia:0")]  # low is preempted
    decision = schedule(nodes, [low, high], placed, reserved={("n1", "nvidia:0"): 40 * GiB})
    assert decision.replicas["high"] == [] and "high" in decision.pending


def test_the_planner_passes_again_when_reserved_memory_changes() -> None:
    nodes = [node("n1", "one-gpu"), node("n2", "one-gpu")]
    d, planner = dep(gib=30), Planner()
    first = planner.schedule(nodes, [d], {})
    current = {"m": first.replicas["m"]}
    planner.schedule(nodes, [d], current)
    assert planner.last == "same"
    held = {("n2", "nvidia:0"): 60 * GiB}
    other = dep("other", gib=30)
    decision = planner.schedule(nodes, [d, other], current, reserved=held)
    assert planner.last == "full" and planner.why == "reserved memory changed"
    assert decision == schedule(nodes, [d, other], current, reserved=held)
    assert where(decision, "other") == [(0, "n1/nvidia:0")]  # n2's memory is held


# --- the controller: handing over -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _controller(tmp_path: Path, clock: Clock) -> tuple[SqliteStore, Controller]:
    store = SqliteStore(tmp_path)
    controller = Controller(store, ArtifactStore(tmp_path / "artifacts"), clock=clock, handover_grace=60.0)
    digest, size = controller.artifacts.put([b"\x08" + b"\0" * 100])
    store.add_model("m", None, digest, size, "model.onnx")
    return store, controller


async def _join(controller: Controller, name: str, memory: int) -> NodeState:
    """A node with one simulated GPU, joined over an in-memory session (its outbox holds what is pushed)."""
    node = controller.pool.node(name)
    node.session = Session(name)
    hello = lpb.Hello(node=name, inference_endpoint=f"127.0.0.1:{len(controller.pool.nodes)}", devices=[
        tpb.DeviceInfo(id="sim:0", kind="gpu", vendor="sim", memory_total=memory)])
    controller.pool.hello(node, hello, time.time())
    await controller.node_joined(node, hello)
    return node


def _report(controller: Controller, node: NodeState, *ready: str) -> None:
    controller.heard(node, lpb.AgentMessage(status=lpb.StatusReport(instances=[
        lpb.InstanceStatus(deployment=name, state="READY", devices=["sim:0"]) for name in ready])))


def _health(controller: Controller, node: NodeState, health: int, state: int) -> None:
    controller.heard(node, lpb.AgentMessage(telemetry=lpb.Telemetry(seq=1, samples=[
        tpb.DeviceSample(device_id="sim:0", full=True, health=health, health_state=state,
                         health_state_reason="XID storm")])))


def _last_desired(node: NodeState) -> list[str]:
    """The deployments in the last desired state pushed to the node."""
    last = None
    while not node.session.outbox.empty():
        message = node.session.outbox.get_nowait()
        if message is not None and message.HasField("desired"):
            last = message.desired
    assert last is not None, f"nothing pushed to {node.name}"
    return [a.deployment for a in last.assignments]


def _routed(controller: Controller, name: str = "web") -> list[str]:
    routes = controller.routes.routes.get(name)
    return sorted(r.node for r in routes.replicas) if routes is not None else []


def _kinds(store: SqliteStore) -> list[str]:
    return [e.kind for e in store.events()]


async def _running_on_n1(tmp_path: Path) -> tuple[Clock, SqliteStore, Controller, NodeState, NodeState]:
    """Two nodes, "web" (1 replica) READY on n1 (the smaller GPU: binpack) and routed there."""
    clock = Clock()
    store, controller = _controller(tmp_path, clock)
    n1, n2 = await _join(controller, "n1", 40 * GiB), await _join(controller, "n2", 80 * GiB)
    await controller.apply_deployment(DeploymentSpec("web", "m", "", 1, GiB, device="gpu"), create=True)
    assert [r.node for r in controller.state.placement["web"]] == ["n1"]
    assert _last_desired(n1) == ["web"]
    _report(controller, n1, "web")
    assert _routed(controller) == ["n1"]
    return clock, store, controller, n1, n2


async def test_a_replica_off_an_unhealthy_device_serves_there_until_its_replacement_is_ready(tmp_path: Path) -> None:
    _clock, store, controller, n1, n2 = await _running_on_n1(tmp_path)
    _health(controller, n1, tpb.HEALTH_OK, tpb.DEVICE_HEALTH_UNHEALTHY)
    await controller.reconcile_now()
    assert [r.node for r in controller.state.placement["web"]] == ["n2"]
    assert _last_desired(n2) == ["web"]
    assert n1.session.outbox.empty()  # n1's share is unchanged: it still runs the old one
    assert controller.state.handover.reserved() == {("n1", "sim:0"): GiB}
    assert _routed(controller) == ["n1"]
    await controller.reconcile_now()  # a pass meanwhile keeps it
    assert n1.session.outbox.empty() and "HandedOver" not in _kinds(store)

    _report(controller, n2, "web")  # the new one serves: both are routed for a moment, then the old one goes
    assert _routed(controller) == ["n1", "n2"]
    await controller.reconcile_now()
    assert _last_desired(n1) == []
    assert _routed(controller) == ["n2"]  # not routed to n1 from the push on, though n1 still reports it
    kinds = _kinds(store)
    assert kinds.index("Moved") < kinds.index("HandedOver")
    (handed,) = [e for e in store.events() if e.kind == "HandedOver"]
    assert "n1/sim:0" in handed.message and "n2/sim:0" in handed.message and "unhealthy" in handed.message
    assert controller.state.handover.reserved() == {}
    _report(controller, n1)  # unloaded there: forgotten, so a later replica on n1 is routed again
    assert controller.state.unrouted == {}
    await controller.close()
    store.close()


async def test_a_drained_node_keeps_serving_until_the_replacement_is_ready(tmp_path: Path) -> None:
    _clock, store, controller, n1, n2 = await _running_on_n1(tmp_path)
    await controller.set_cordon("n1", True, drain=True)
    assert [r.node for r in controller.state.placement["web"]] == ["n2"]
    assert n1.session.outbox.empty() and _routed(controller) == ["n1"]
    _report(controller, n2, "web")
    await controller.reconcile_now()
    assert _last_desired(n1) == [] and _routed(controller) == ["n2"]
    await controller.close()
    store.close()


async def test_a_replacement_that_never_gets_ready_ends_the_wait_at_the_grace(tmp_path: Path) -> None:
    clock, store, controller, n1, _n2 = await _running_on_n1(tmp_path)
    _health(controller, n1, tpb.HEALTH_OK, tpb.DEVICE_HEALTH_UNHEALTHY)
    await controller.reconcile_now()
    clock.t += 30
    await controller.reconcile_now()
    assert n1.session.outbox.empty()
    clock.t += 31
    await controller.reconcile_now()
    assert _last_desired(n1) == [] and _routed(controller) == []
    (expired,) = [e for e in store.events() if e.kind == "HandoverExpired"]
    assert "after 60 s" in expired.message and "n2/sim:0 is not READY" in expired.message
    await controller.close()
    store.close()


async def test_a_failed_device_or_a_lost_node_keeps_nothing(tmp_path: Path) -> None:
    _, store, controller, n1, _ = await _running_on_n1(tmp_path)
    _health(controller, n1, tpb.HEALTH_FAILED, tpb.DEVICE_HEALTH_UNHEALTHY)
    await controller.reconcile_now()
    assert [r.node for r in controller.state.placement["web"]] == ["n2"]
    assert _last_desired(n1) == [] and controller.state.handover.retiring == {}
    await controller.close()
    store.close()

    _clock, store, controller, n1, _n2 = await _running_on_n1(tmp_path / "lost")
    _health(controller, n1, tpb.HEALTH_OK, tpb.DEVICE_HEALTH_UNHEALTHY)
    await controller.reconcile_now()
    assert controller.state.handover.retiring
    n1.state = NODE_LOST  # while its replica is kept: dropped at once
    await controller.reconcile_now()
    assert controller.state.handover.retiring == {} and "HandoverAborted" in _kinds(store)
    await controller.close()
    store.close()
