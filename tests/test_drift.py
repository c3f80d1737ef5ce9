"""Drift past a grace: a replica that stays FAILED or unreported on its node is re-placed on another device, which
its deployment avoids for a while; what the agent does not report shows as PENDING, not as running."""

from __future__ import annotations

from pathlib import Path

from pool_shapes import dep, node, rep, where
from test_handover import Clock, _controller, _join, _kinds, _last_desired, _report

from xpud.controller.core import NODE_LOST, DeploymentSpec
from xpud.controller.pool import NodeState
from xpud.controller.scheduler import schedule
from xpud.controller.views import deployment_status
from xpud.proto import link_pb2 as lpb

GiB = 1 << 30


def test_a_replica_leaves_a_device_its_deployment_avoids_and_is_not_placed_there() -> None:
    nodes = [node("n1", "one-gpu"), node("n2", "one-gpu")]
    d = dep(gib=30)
    placed = {"m": [rep(d, 0, "n1/nvidia:0")]}
    avoid = {"m": frozenset({("n1", "nvidia:0")})}
    decision = schedule(nodes, [d], placed, avoid=avoid)
    assert where(decision, "m") == [(0, "n2/nvidia:0")]
    assert decision.moved == [("m", "replica failed on n1/nvidia:0: replica 0 moved n1/nvidia:0 -> n2/nvidia:0")]
    assert where(schedule(nodes, [dep("other", gib=30)], {}, avoid=avoid), "other") == [(0, "n1/nvidia:0")]
    decision = schedule(nodes[:1], [d], placed, avoid=avoid)  # nowhere else: pending
    assert decision.replicas["m"] == [] and "m" in decision.pending


def _failed(controller, node: NodeState, reason: str = "load failed: out of memory") -> None:  # type: ignore[no-untyped-def]
    controller.heard(node, lpb.AgentMessage(status=lpb.StatusReport(generation=node.generation_observed, instances=[
        lpb.InstanceStatus(deployment="web", state="FAILED", devices=["sim:0"], reason=reason)])))


async def _on_n1(tmp_path: Path, replicas: int = 1):  # type: ignore[no-untyped-def]
    clock = Clock()
    store, controller = _controller(tmp_path, clock)
    n1, n2 = await _join(controller, "n1", 40 * GiB), await _join(controller, "n2", 80 * GiB)
    await controller.apply_deployment(DeploymentSpec("web", "m", "", replicas, GiB, device="gpu"), create=True)
    assert [r.node for r in controller.state.placement["web"]] == ["n1"] * replicas
    assert _last_desired(n1) == ["web"]
    return clock, store, controller, n1, n2


async def test_a_replica_failed_past_the_grace_is_replaced_elsewhere_and_its_device_avoided(tmp_path: Path) -> None:
    clock, store, controller, n1, n2 = await _on_n1(tmp_path)
    _failed(controller, n1)
    await controller.reconcile_now()
    assert [r.node for r in controller.state.placement["web"]] == ["n1"]  # within the grace: the agent may heal it
    assert deployment_status(controller.state, "web").phase == "Degraded"
    clock.t += 31
    await controller.reconcile_now()
    assert [r.node for r in controller.state.placement["web"]] == ["n2"]
    (replaced,) = [e for e in store.events() if e.kind == "Replaced"]
    assert "replica 0 on n1/sim:0 FAILED: load failed: out of memory for 30 s" in replaced.message, replaced.message
    kinds = _kinds(store)
    assert kinds.index("Replaced") < kinds.index("Moved")
    assert _last_desired(n1) == [] and _last_desired(n2) == ["web"]  # it did not serve: nothing to hand over
    _report(controller, n2, "web")
    assert deployment_status(controller.state, "web").phase == "Running"

    n2.state = NODE_LOST  # while n1/sim:0 is avoided: pending rather than back there
    await controller.reconcile_now()
    assert "web" not in controller.state.placement and "web" in controller.state.pending
    clock.t += 300  # no longer avoided
    await controller.reconcile_now()
    assert [r.node for r in controller.state.placement["web"]] == ["n1"]
    await controller.close()
    store.close()


async def test_a_replica_healed_within_the_grace_stays(tmp_path: Path) -> None:
    clock, store, controller, n1, _ = await _on_n1(tmp_path)
    _failed(controller, n1)
    await controller.reconcile_now()
    clock.t += 20
    _report(controller, n1, "web")  # the agent loaded it again
    await controller.reconcile_now()
    clock.t += 20
    await controller.reconcile_now()
    assert [r.node for r in controller.state.placement["web"]] == ["n1"] and "Replaced" not in _kinds(store)
    await controller.close()
    store.close()


async def test_a_replica_its_node_does_not_report_is_pending_then_replaced(tmp_path: Path) -> None:
    clock, store, controller, n1, _ = await _on_n1(tmp_path, replicas=2)
    generation = controller.state.generations["n1"]
    controller.heard(n1, lpb.AgentMessage(status=lpb.StatusReport(generation=generation - 1)))
    status = deployment_status(controller.state, "web")  # not applied yet: waiting
    assert [r.state for r in status.replicas] == ["PENDING"] * 2 and status.phase == "Progressing"
    controller.heard(n1, lpb.AgentMessage(status=lpb.StatusReport(generation=generation, instances=[
        lpb.InstanceStatus(deployment="web", state="READY", devices=["sim:0"])])))  # one of the two
    status = deployment_status(controller.state, "web")
    assert [r.state for r in status.replicas] == ["READY", "PENDING"] and status.ready == 1
    assert status.phase == "Degraded" and "n1 does not report it" in status.reason
    controller.heard(n1, lpb.AgentMessage(status=lpb.StatusReport(generation=generation)))  # none at all
    status = deployment_status(controller.state, "web")
    assert [r.state for r in status.replicas] == ["PENDING"] * 2 and status.ready == 0
    assert status.reason == f"node n1 does not report it (generation {generation} applied)"
    await controller.reconcile_now()
    clock.t += 31
    await controller.reconcile_now()
    assert [r.node for r in controller.state.placement["web"]] == ["n2", "n2"]
    (replaced,) = [e for e in store.events() if e.kind == "Replaced"]  # one device avoided: one event
    assert "not reported by its node" in replaced.message
    await controller.close()
    store.close()
