"""The router's endpoint table: what a node serves, kept per deployment one node at a time, pushed as it changes;
and, over a real controller and a real agent, the version and zone of a replica reaching the router."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from helpers import AgentProcess
from xpud.controller.core import NODE_LOST, NODE_READY, NODE_SUSPECT
from xpud.controller.pool import NodeState, Pool
from xpud.controller.routes import (
    DeploymentRoutes,
    ReplicaEndpoint,
    RouteTable,
    RouteUpdate,
    for_request,
    node_endpoints,
    node_replicas,
)
from xpud.controller.server import start_controller
from xpud.controller.traffic import version_order
from xpud.controller.views import deployment_status
from xpud.proto import admin_pb2 as apb
from xpud.proto import admin_pb2_grpc
from xpud.proto import link_pb2 as lpb
from xpud.proto.oip import pb

T = TypeVar("T")
IRIS = Path(__file__).resolve().parent.parent / "models" / "iris" / "1" / "model.onnx"


def instance(deployment: str, state: str = "READY", version: str = "1", devices: Iterable[str] = ("cpu:0",),
             reason: str = "") -> lpb.InstanceStatus:
    return lpb.InstanceStatus(deployment=deployment, version=version, state=state, devices=list(devices),
                              reason=reason)


class Nodes:
    """A real Pool fed the link's messages, as the link servicer does."""

    def __init__(self) -> None:
        self.pool = Pool(lambda: 0.0)

    def hello(self, name: str, *instances: lpb.InstanceStatus, endpoint: str | None = None,
              zone: str = "z1") -> NodeState:
        node = self.pool.node(name)
        address = f"10.0.0.{len(self.pool.nodes)}:8001" if endpoint is None else endpoint
        self.pool.hello(node, lpb.Hello(node=name, zone=zone, inference_endpoint=address, instances=instances), 0.0)
        node.state = NODE_READY
        return node

    def report(self, name: str, *instances: lpb.InstanceStatus) -> NodeState:
        node = self.pool.nodes[name]
        self.pool.status(node, lpb.StatusReport(instances=instances))
        return node


class Reasons:
    """The controller's side: which deployments exist, and why each has no ready replica."""

    def __init__(self, *names: str) -> None:
        self.why = {name: f"{name} is waiting" for name in names}

    def __call__(self, name: str) -> str | None:
        return self.why.get(name)


def shown(update: RouteUpdate) -> dict[str, tuple[tuple[ReplicaEndpoint, ...], str] | None]:
    """An update as the router shows it: per deployment its replicas and the reason read now (None: deleted)."""
    return {name: None if routes is None else (routes.replicas, routes.reason) for name, routes in update.items()}


def recorder(table: RouteTable) -> list[RouteUpdate]:
    pushed: list[RouteUpdate] = []
    table.subscribe(pushed.append)
    pushed.clear()
    return pushed


# -- what one node serves -------------------------------------------------------------------------

@pytest.mark.parametrize(("state", "endpoint", "instances", "served"), [
    (NODE_READY, "10.0.0.1:8001", [instance("web", version="7", devices=["sim:0", "sim:1"])],
     {"web": ReplicaEndpoint("10.0.0.1:8001", "n1", ("sim:0", "sim:1"), "7", "z9")}),
    (NODE_SUSPECT, "10.0.0.1:8001", [instance("web")],  # missed telemetry: still routed to until Lost
     {"web": ReplicaEndpoint("10.0.0.1:8001", "n1", ("cpu:0",), "1", "z9")}),
    (NODE_READY, "10.0.0.1:8001", [instance("web", "LOADING"), instance("api", "FAILED"), instance("old", "UNLOADING")],
     {}),
    (NODE_LOST, "10.0.0.1:8001", [instance("web")], {}),
    (NODE_READY, "", [instance("web")], {}),  # an agent with no inference endpoint
], ids=["ready", "suspect", "not-ready-instances", "lost", "no-endpoint"])
def test_what_a_node_serves(state: str, endpoint: str, instances: list[lpb.InstanceStatus],
                            served: dict[str, ReplicaEndpoint]) -> None:
    node = Nodes().hello("n1", *instances, endpoint=endpoint, zone="z9")
    node.state = state
    assert node_replicas(node) == served


# -- the table ------------------------------------------------------------------------------------

def test_only_the_deployments_that_changed_are_pushed() -> None:
    nodes, reasons = Nodes(), Reasons("web", "api")
    table = RouteTable(reasons)
    table.deployments(["web", "api"])
    whole: list[RouteUpdate] = []
    table.subscribe(whole.append)
    assert [shown(u) for u in whole] == [{"web": ((), "web is waiting"), "api": ((), "api is waiting")}]
    pushed = recorder(table)
    n1 = nodes.hello("n1", instance("web", "LOADING"))
    assert table.node(n1) == {} and pushed == []
    table.node(nodes.report("n1", instance("web")))
    replica = ReplicaEndpoint(n1.endpoint, "n1", ("cpu:0",), "1", "z1")
    assert [shown(u) for u in pushed] == [{"web": ((replica,), "")}]
    assert table.node(nodes.report("n1", instance("web"))) == {}  # the same report again: nothing to push
    reasons.why["api"] = "api failed: bad model"
    table.node(nodes.report("n1", instance("web"), instance("api", "FAILED", reason="bad model")))
    assert len(pushed) == 1  # api has no ready replica either way: nothing to push...
    assert table.routes["api"].reason == "api failed: bad model"  # ...and its reason is read when asked
    assert table.deployments(["web", "api"]) == {}  # a pass with nothing new
    table.node(nodes.report("n1", instance("api", "FAILED", reason="bad model")))  # web unloaded
    assert shown(pushed[-1]) == {"web": ((), "web is waiting")}
    assert table.routes["web"].state == "UNAVAILABLE" and len(pushed) == 2


def test_a_lost_node_leaves_the_table_and_comes_back_with_its_replicas() -> None:
    nodes = Nodes()
    table = RouteTable(Reasons("web"))
    table.deployments(["web"])
    n1, n2 = nodes.hello("n1", instance("web")), nodes.hello("n2", instance("web"))
    table.node(n1)
    table.node(n2)
    assert [r.node for r in table.routes["web"].replicas] == ["n1", "n2"]
    n1.state = NODE_LOST
    assert table.node(n1) == {"web": DeploymentRoutes("web", (node_replicas(n2)["web"],), "")}
    n1.state = NODE_READY  # heard from again: its instances as last reported
    table.node(n1)
    assert [r.node for r in table.routes["web"].replicas] == ["n1", "n2"]
    moved = nodes.hello("n2", instance("web"), endpoint="10.0.0.9:8001", zone="z2")  # a new agent process
    table.node(moved)
    assert [(r.address, r.zone) for r in table.routes["web"].replicas] == [(n1.endpoint, "z1"), ("10.0.0.9:8001", "z2")]


def test_deployments_come_and_go_with_the_passes() -> None:
    nodes, reasons = Nodes(), Reasons("web")
    table = RouteTable(reasons)
    pushed = recorder(table)
    table.deployments(["web"])
    assert [shown(u) for u in pushed] == [{"web": ((), "web is waiting")}]
    n1 = nodes.hello("n1", instance("new"))  # a deployment the table does not know yet: kept aside
    assert table.node(n1) == {} and "new" not in table.routes
    reasons.why["new"] = "placed"
    table.deployments(["web", "new"])  # the pass that created it
    assert pushed[-1] == {"new": DeploymentRoutes("new", (node_replicas(n1)["new"],), "")}
    assert table.deployments(["web", "new"]) == {}  # a pass with nothing new for the router
    table.deployments(["new"])  # web deleted
    assert pushed[-1] == {"web": None} and set(table.routes) == {"new"}
    del reasons.why["new"]  # deleted before its pass, while the node unloads it: the reason says it is gone
    table.node(nodes.report("n1", instance("new", "UNLOADING")))  # its last replica: the reason asked
    assert pushed[-1] == {"new": None} and table.routes == {}


def test_each_deployment_lists_its_replicas_by_address_as_a_rebuild_would() -> None:
    """Nodes join, report, get lost and come back in a random order; after each step every deployment's replicas
    are what a rebuild over all nodes gives, ordered by address."""
    rng = random.Random(11)
    names = ["a", "b", "c"]
    nodes = Nodes()
    table = RouteTable(Reasons(*names))
    table.deployments(names)
    for step in range(300):
        name = f"n{rng.randrange(40)}"
        serving = [instance(d, rng.choice(["READY", "READY", "LOADING"]), version=v) for d in names
                   if rng.random() < 0.5  # sometimes two versions side by side
                   for v in rng.choice([(str(step),), (str(step), str(step + 1000))])]
        if name not in nodes.pool.nodes or rng.random() < 0.2:
            node = nodes.hello(name, *serving, endpoint=f"10.0.{rng.randrange(3)}.{rng.randrange(200)}:8001")
        elif rng.random() < 0.2:
            node = nodes.pool.nodes[name]
            node.state = NODE_LOST if node.state != NODE_LOST else NODE_READY
        else:
            node = nodes.report(name, *serving)
        table.node(node)
        for d in names:
            expected = sorted((r for n in nodes.pool.nodes.values() for (name, _), r in node_endpoints(n).items()
                               if name == d), key=lambda r: (r.address, r.node, version_order(r.version)))
            assert list(table.routes[d].replicas) == expected, (step, d)


def test_a_node_serving_two_versions_lists_a_replica_of_each() -> None:
    nodes = Nodes()
    table = RouteTable(Reasons("web"))
    table.deployments(["web"], {"web": (("1", 50), ("2", 50))})
    n1 = nodes.hello("n1", instance("web", devices=["sim:0"]), endpoint="10.0.0.1:8001")
    table.node(n1)
    alone = ReplicaEndpoint("10.0.0.1:8001", "n1", ("sim:0",), "1", "z1")
    assert table.routes["web"].replicas == (alone,)  # one version on its node: nothing to name
    both = (instance("web", version="2", devices=["sim:1"]), instance("web", devices=["sim:0"]))
    table.node(nodes.report("n1", *both))
    one, two = (replace(alone, pinned=True), ReplicaEndpoint("10.0.0.1:8001", "n1", ("sim:1",), "2", "z1", pinned=True))
    assert node_endpoints(n1) == {("web", "1"): one, ("web", "2"): two}
    assert node_replicas(n1) == {"web": two}  # by deployment: the highest version, as the agent answers unpinned
    routes = table.routes["web"]
    assert routes.replicas == (one, two) and {v: r.replicas for v, r in routes.by_version.items()} == \
        {"1": (one,), "2": (two,)}
    assert for_request(routes, pb.ModelInferRequest(model_name="web", model_version="2")).replicas == (two,)
    assert n1.instance("web", "1") == both[1] and n1.instance("web", "3") is None and n1.instance("web") == both[0]
    table.node(nodes.report("n1", instance("web", "UNLOADING", devices=["sim:0"]),
                            instance("web", version="2", devices=["sim:1"])))
    assert table.routes["web"].replicas == (two,)  # version 1 unloading: no request goes there; 2 still pinned
    table.node(nodes.report("n1", instance("web", version="2", devices=["sim:1"])))
    assert table.routes["web"].replicas == (replace(two, pinned=False),) and n1.versions == {}


# -- over a real controller and a real agent ---------------------------------------------------------

async def eventually(check: Callable[[], T | None], what: str, timeout: float = 30) -> T:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        found = check()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_the_version_and_zone_of_a_replica_reach_the_router(tmp_path: Path) -> None:
    """The deployment names model "iris" with no version: the latest pushed (7) is what the agent loads, and the
    router's table says so, with the zone from the agent's Hello; the router serves it as soon as it is READY, and
    drops it when the node is lost."""
    running = await start_controller("127.0.0.1:0", 0, tmp_path / "state", interval=0.2, lease=1.0)
    agent: AgentProcess | None = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            for version in ("3", "7"):
                await admin.PushModel(iter([apb.PushModelChunk(name="iris", version=version, filename="model.onnx",
                                                               data=IRIS.read_bytes())]))
            await admin.CreateDeployment(apb.Deployment(name="iris", model="iris", replicas=1))
            assert running.router.routes["iris"].state == "UNAVAILABLE"  # pushed by the pass that created it
            args: list[Any] = ["--controller", f"127.0.0.1:{running.port}", "--node", "n1", "--zone", "z1",
                               "--grpc-host", "127.0.0.1", "--grpc-port", "0", "--cache-dir", str(tmp_path / "n1"),
                               "--sim", "1"]
            agent = await asyncio.to_thread(lambda: AgentProcess(*args, standalone=False))

            def ready() -> tuple[DeploymentRoutes, apb.DeploymentStatus] | None:
                routes, status = running.router.routes["iris"], deployment_status(running.controller.state, "iris")
                return (routes, status) if status.phase == "Running" else None

            routes, status = await eventually(ready, "iris Running")
            (replica,) = routes.replicas  # Running: routable at once
            device = running.controller.pool.nodes["n1"].devices[status.replicas[0].device]  # its Hello's facts
            assert replica == ReplicaEndpoint(agent.grpc_url, "n1", (device.id,), "7", "z1", model="iris",
                                              device_model=device.model, device_memory=device.memory_total)
            assert device.model and device.memory_total
            async with aioclient.InferenceServerClient(f"127.0.0.1:{running.inference_port}") as client:
                x = aioclient.InferInput("X", [1, 4], "FP32")
                x.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], np.float32))
                result = await client.infer("iris", [x])
                assert result.get_response().model_version == "7" and int(result.as_numpy("label")[0]) == 0
                agent.kill()
                reason = await eventually(lambda: running.router.routes["iris"].reason, "iris without its replica")
                assert running.router.routes["iris"].replicas == ()  # n1 is lost, and no other node can take it
                try:
                    await client.infer("iris", [x])
                    raise AssertionError("iris answered with no replica")
                except InferenceServerException as exc:
                    answer = (exc.status(), exc.message())
                assert answer == ("StatusCode.UNAVAILABLE", f"deployment 'iris' has no ready replica ({reason})")
    finally:
        if agent is not None:
            agent.kill()
        await running.stop(0)
