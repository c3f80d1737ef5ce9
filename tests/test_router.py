"""The controller's inference router in front of real agent processes, called with tritonclient (sync and aio).

The router runs on its own event loop in a thread, so that sync clients can call it from the test directly.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from helpers import AgentProcess, expect_status
from models import save, scale
from xpud.controller.policy import P2CEwma, RoundRobin, RouteRequest
from xpud.controller.router import Forwarded, Router, add_router, pinned
from xpud.controller.routes import DeploymentRoutes, ReplicaEndpoint, RouteUpdate
from xpud.controller.traffic import Split
from xpud.proto.oip import pb, pb_grpc

T = TypeVar("T")
SCALE_CONFIG = """
max_batch_size: 8
input [{ name: "x", data_type: TYPE_FP32, dims: [16] }]
output [{ name: "y", data_type: TYPE_FP32, dims: [16] }]
"""
PENDING_REASON = "no device with 8 GiB free"


def table(endpoints: dict[str, list[str]], reasons: dict[str, str] | None = None) -> dict[str, DeploymentRoutes]:
    """An endpoint table as the controller pushes it: per deployment its ready agents, in this order."""
    reasons = reasons or {}
    return {name: DeploymentRoutes(name, tuple(ReplicaEndpoint(a, f"n{i}", ("cpu:0",), "1", "") for i, a in
                                               enumerate(addresses)), "" if addresses else reasons.get(name, ""))
            for name, addresses in endpoints.items()}


class LoopThread:
    """An event loop in a daemon thread: hosts the router's grpc.aio server (and fake agents)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.servers: list[grpc.aio.Server] = []
        self.routers: list[Router] = []

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    async def _serve(self, servicer: pb_grpc.GRPCInferenceServiceServicer) -> str:
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
        if isinstance(servicer, Router):
            self.routers.append(servicer)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self.servers.append(server)
        return f"127.0.0.1:{port}"

    def serve(self, servicer: pb_grpc.GRPCInferenceServiceServicer) -> str:
        return self.run(self._serve(servicer))

    def router(self, routes: dict[str, DeploymentRoutes], **kwargs: Any) -> tuple[Router, str]:
        async def start() -> tuple[Router, str]:
            router = Router(**kwargs)
            router.update(routes)
            server = grpc.aio.server(options=router.channel_options)
            add_router(server, router)
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            self.servers.append(server)
            self.routers.append(router)
            return router, f"127.0.0.1:{port}"

        return self.run(start())

    def stop(self) -> None:
        async def shutdown() -> None:
            for server in self.servers:
                await server.stop(0)
            for router in self.routers:
                await router.close()

        self.run(shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


def wait_ready(url: str, model: str = "scale", timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    with grpcclient.InferenceServerClient(url) as c:
        while time.monotonic() < deadline:
            try:
                if c.is_model_ready(model):
                    return
            except InferenceServerException:
                pass
            time.sleep(0.05)
    raise AssertionError(f"{model} not ready on {url}")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("repo")
    save(scale(), root, "scale", SCALE_CONFIG)
    return root


def agent_args(repo: Any) -> tuple[str, ...]:
    return ("--model-repo", str(repo), "--grpc-host", "127.0.0.1", "--grpc-port", "0")


@pytest.fixture(scope="module")
def agents(repo: Any) -> Iterator[list[AgentProcess]]:
    with ThreadPoolExecutor(2) as pool:
        started = list(pool.map(lambda _: AgentProcess(*agent_args(repo)), range(2)))
    try:
        for agent in started:
            wait_ready(agent.grpc_url)
        yield started
    finally:
        for agent in started:
            agent.kill()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.stop()


@pytest.fixture
def routed(agents: list[AgentProcess], loop_thread: LoopThread) -> Iterator[tuple[Router, str]]:
    routes = table({"scale": [a.grpc_url for a in agents], "pending": []}, {"pending": PENDING_REASON})
    yield loop_thread.router(routes, policy=RoundRobin())  # the tests below count each agent's share


def x_input(x: np.ndarray) -> grpcclient.InferInput:
    i = grpcclient.InferInput("x", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return i


def stats(url: str, name: str = "scale") -> Any:
    with grpcclient.InferenceServerClient(url) as c:
        return c.get_inference_statistics(name, as_json=False)


def summed(*replies: Any) -> dict[str, Any]:
    """The counters the router must report: each agent's, added up here independently of the router's code."""
    out: dict[str, Any] = {"inference_count": 0, "execution_count": 0, "last_inference": 0, "batches": {}}
    for reply in replies:
        (s,) = reply.model_stats
        out["inference_count"] += s.inference_count
        out["execution_count"] += s.execution_count
        out["last_inference"] = max(out["last_inference"], s.last_inference)
        for f in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
            d = getattr(s.inference_stats, f)
            out[f] = (out.get(f, (0, 0))[0] + d.count, out.get(f, (0, 0))[1] + d.ns)
        for b in s.batch_stats:
            c, n = out["batches"].get(b.batch_size, (0, 0))
            out["batches"][b.batch_size] = (c + b.compute_infer.count, n + b.compute_infer.ns)
    return out


# -- over two real agents ----------------------------------------------------------------------


def test_infer_is_correct_and_spread_over_both_agents(agents, routed):
    _, url = routed
    before = [stats(a.grpc_url).model_stats[0].inference_count for a in agents]
    with grpcclient.InferenceServerClient(url) as c:
        for i in range(8):
            x = np.full((2, 16), i, np.float32) + np.arange(16, dtype=np.float32)
            result = c.infer("scale", [x_input(x)], request_id=str(i))
            np.testing.assert_array_equal(result.as_numpy("y"), x * 2)
            assert result.get_response().model_name == "scale" and result.get_response().id == str(i)
    gained = [stats(a.grpc_url).model_stats[0].inference_count - b for a, b in zip(agents, before, strict=True)]
    assert gained == [8, 8]  # round robin: 4 requests of 2 rows each


def test_statistics_are_the_sum_of_the_agents(agents, routed):
    _, url = routed
    with grpcclient.InferenceServerClient(url) as c:
        for rows in (1, 3, 1, 3):
            c.infer("scale", [x_input(np.ones((rows, 16), np.float32))])
        direct = [stats(a.grpc_url) for a in agents]
        via = c.get_inference_statistics("scale", as_json=False)
        everything = c.get_inference_statistics("", as_json=False)
    assert summed(via) == summed(*direct)
    assert summed(via)["batches"].keys() >= {1, 3}
    assert [s.name for s in everything.model_stats] == ["scale"]  # "pending" has no replica to ask
    assert summed(everything) == summed(via)


async def test_aio_client_and_deadline(agents, routed):
    _, url = routed
    async with aioclient.InferenceServerClient(url) as c:
        x = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 16)
        results = await asyncio.gather(*(c.infer("scale", [x_input(x * k)], client_timeout=10) for k in range(6)))
        for k, result in enumerate(results):
            np.testing.assert_allclose(result.as_numpy("y"), x * k * 2)
        assert await c.is_model_ready("scale") and not await c.is_model_ready("pending")


def test_stream_infer(agents, routed):
    _, url = routed
    responses: list[Any] = []
    with grpcclient.InferenceServerClient(url) as c:
        c.start_stream(callback=lambda result, error: responses.append((result, error)))
        for i in range(5):
            c.async_stream_infer("scale", [x_input(np.full((1, 16), i, np.float32))], request_id=str(i))
        c.async_stream_infer("scale", [x_input(np.ones((1, 5), np.float32))], request_id="bad")
        c.async_stream_infer("nope", [x_input(np.ones((1, 16), np.float32))], request_id="unknown")
        deadline = time.monotonic() + 10
        while len(responses) < 7 and time.monotonic() < deadline:
            time.sleep(0.02)
        c.stop_stream()
    good = {r.get_response().id: r for r, e in responses if e is None}
    assert sorted(good) == ["0", "1", "2", "3", "4"]
    np.testing.assert_array_equal(good["3"].as_numpy("y"), np.full((1, 16), 6, np.float32))
    errors = sorted(str(e) for _, e in responses if e is not None)
    assert len(errors) == 2
    assert "INVALID_ARGUMENT" in errors[0] and "NOT_FOUND" in errors[1] and "unknown deployment 'nope'" in errors[1]


def test_errors(agents, routed):
    _, url = routed
    with grpcclient.InferenceServerClient(url) as c:
        with expect_status("NOT_FOUND", "unknown deployment 'nope'; deployments: pending, scale"):
            c.infer("nope", [x_input(np.ones((1, 16), np.float32))])
        with expect_status("UNAVAILABLE", f"deployment 'pending' has no ready replica ({PENDING_REASON})"):
            c.infer("pending", [x_input(np.ones((1, 16), np.float32))])
        with expect_status("NOT_FOUND", "unknown deployment 'nope'"):
            c.get_model_metadata("nope")
        with expect_status("UNIMPLEMENTED", "xpud deploy"):
            c.load_model("scale")
        with expect_status("UNIMPLEMENTED", "xpud undeploy"):
            c.unload_model("scale")
        with expect_status("UNIMPLEMENTED", "shared memory"):
            c.get_system_shared_memory_status()
        with expect_status("UNIMPLEMENTED", "trace"):
            c.get_trace_settings()
        bad = [x_input(np.ones((1, 5), np.float32))]
        with pytest.raises(InferenceServerException) as via:
            c.infer("scale", bad)
    with grpcclient.InferenceServerClient(agents[0].grpc_url) as direct, pytest.raises(InferenceServerException) as ref:
        direct.infer("scale", bad)
    assert (via.value.status(), via.value.message()) == (ref.value.status(), ref.value.message())


def test_server_index_metadata_and_config(agents, routed):
    _, url = routed
    with grpcclient.InferenceServerClient(url) as c, grpcclient.InferenceServerClient(agents[1].grpc_url) as direct:
        assert c.is_server_live() and c.is_server_ready()
        assert c.get_server_metadata().name == "xpud-router"
        index = {m.name: (m.state, m.reason) for m in c.get_model_repository_index().models}
        assert index == {"scale": ("READY", ""), "pending": ("UNAVAILABLE", PENDING_REASON)}
        assert c.is_model_ready("scale") and not c.is_model_ready("pending") and not c.is_model_ready("nope")
        assert c.get_model_metadata("scale") == direct.get_model_metadata("scale")
        config = c.get_model_config("scale")
        assert config == direct.get_model_config("scale") and config.config.max_batch_size == 8


def test_killed_agent_is_retried_on_the_other(repo, agents, start_agent, loop_thread):
    victim = start_agent(*agent_args(repo))
    wait_ready(victim.grpc_url)
    router, url = loop_thread.router(table({"scale": [victim.grpc_url, agents[0].grpc_url]}), policy=RoundRobin())
    x = np.ones((1, 16), np.float32)
    with grpcclient.InferenceServerClient(url) as c:
        for _ in range(2):  # one each: the router holds a connected channel to the victim
            c.infer("scale", [x_input(x)])
        assert stats(victim.grpc_url).model_stats[0].inference_count == 1
        victim.proc.kill()
        victim.proc.wait(timeout=10)
        for _ in range(6):  # half of them go to the dead agent first
            np.testing.assert_array_equal(c.infer("scale", [x_input(x)]).as_numpy("y"), x * 2)
        assert c.get_inference_statistics("scale", as_json=False).model_stats[0].name == "scale"  # skips the dead

    async def victim_gone() -> None:  # the controller's push once the victim is Lost
        router.update(table({"scale": [agents[0].grpc_url]}))
        await router.prune()

    loop_thread.run(victim_gone())
    assert victim.grpc_url not in router._channels and agents[0].grpc_url in router._channels


# -- against fake agents: what reaches the agent ---------------------------------------------------


class FakeAgent(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, code: grpc.StatusCode | None = None, delay_s: float = 0.0) -> None:
        self.code, self.delay_s = code, delay_s  # both may be changed while it serves
        self.calls: list[float | None] = []  # the deadline each forwarded call arrived with

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls.append(context.time_remaining())
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.code is not None:
            await context.abort(self.code, f"fake says {self.code.name}")
        return pb.ModelInferResponse(model_name=request.model_name, id=request.id)


def test_deadline_retry_and_pass_through_reach_the_agent(loop_thread):
    down, up, picky = FakeAgent(grpc.StatusCode.UNAVAILABLE), FakeAgent(), FakeAgent(grpc.StatusCode.INVALID_ARGUMENT)
    urls = {name: loop_thread.serve(fake) for name, fake in (("down", down), ("up", up), ("picky", picky))}
    routes = table({"m": [urls["down"], urls["up"]], "p": [urls["picky"], urls["up"]]})
    _, url = loop_thread.router(routes, forward_timeout_s=7.0, policy=RoundRobin())
    x = np.ones((1, 16), np.float32)
    with grpcclient.InferenceServerClient(url) as c:
        for _ in range(4):
            c.infer("m", [x_input(x)], client_timeout=3.0)
        assert len(down.calls) == 2 and len(up.calls) == 4  # each call to "down" was retried on "up"
        assert all(r is not None and 1.0 < r <= 3.1 for r in up.calls), up.calls  # client's deadline, rounded up
        c.infer("m", [x_input(x)])
        assert up.calls[-1] is not None and 5.0 < up.calls[-1] <= 7.1  # none given: the forward timeout
        with expect_status("INVALID_ARGUMENT", "fake says INVALID_ARGUMENT"):
            c.infer("p", [x_input(x)])
    assert len(picky.calls) == 1 and len(up.calls) == 5  # not retried


class ByZone:
    """A policy of the test's own: the replica in the request's ``xpud-zone`` (any other on a retry); it keeps
    each call's outcome."""

    def __init__(self) -> None:
        self.outcomes: list[tuple[str, str, grpc.StatusCode]] = []  # (zone asked, zone of the replica, code)
        self.updates: list[set[str]] = []

    def choose(self, request: RouteRequest, routes: DeploymentRoutes,
               tried: Sequence[ReplicaEndpoint] = ()) -> ReplicaEndpoint | None:
        zone = request.message.parameters["xpud-zone"].string_param
        left = [r for r in routes.replicas if r not in tried]
        return next((r for r in left if r.zone == zone), left[0] if left else None)

    def done(self, request: RouteRequest, replica: ReplicaEndpoint, code: grpc.StatusCode, seconds: float) -> None:
        assert seconds >= 0
        self.outcomes.append((request.message.parameters["xpud-zone"].string_param, replica.zone, code))

    def update(self, changed: RouteUpdate) -> None:
        self.updates.append(set(changed))


def test_a_policy_sees_the_request_the_replicas_and_each_outcome(loop_thread):
    agents = {zone: FakeAgent(grpc.StatusCode.UNAVAILABLE if zone == "z3" else None) for zone in ("z1", "z2", "z3")}
    replicas = tuple(ReplicaEndpoint(loop_thread.serve(fake), f"n-{zone}", ("cpu:0",), "1", zone)
                     for zone, fake in agents.items())
    policy = ByZone()
    _, url = loop_thread.router({"m": DeploymentRoutes("m", replicas)}, policy=policy)
    x = np.ones((1, 16), np.float32)
    with grpcclient.InferenceServerClient(url) as c:
        for zone in ("z2", "z2", "z1", "z3"):
            c.infer("m", [x_input(x)], parameters={"xpud-zone": zone})
    assert [len(agents[z].calls) for z in ("z1", "z2", "z3")] == [2, 2, 1]  # z3 failed: retried on another
    assert policy.outcomes == [("z2", "z2", grpc.StatusCode.OK), ("z2", "z2", grpc.StatusCode.OK),
                               ("z1", "z1", grpc.StatusCode.OK), ("z3", "z3", grpc.StatusCode.UNAVAILABLE),
                               ("z3", "z1", grpc.StatusCode.OK)]
    assert policy.updates == [{"m"}]


async def test_an_endpoint_that_turns_tls_on_or_off_gets_a_fresh_channel() -> None:
    router = Router(credentials=grpc.ssl_channel_credentials())
    address = "127.0.0.1:1"

    def routes(tls: bool) -> RouteUpdate:
        return {"m": DeploymentRoutes("m", (ReplicaEndpoint(address, "n1", ("cpu:0",), "1", "", tls),))}

    router.update(routes(True))
    secure = router._stub(address)
    router.update(routes(True))
    assert router._stub(address) is secure  # unchanged: the same channel
    router.update(routes(False))
    assert router._stub(address) is not secure and address not in router._tls  # now plaintext
    plain = router._stub(address)
    router.renew(grpc.ssl_channel_credentials())  # a renewed certificate remakes TLS channels only
    assert router._stub(address) is plain
    router.update(routes(True))
    renewed = router._stub(address)
    router.renew(grpc.ssl_channel_credentials())
    assert router._stub(address) is not renewed and router._tls[address] == "n1"
    await router.close()


# -- the default policy (P2CEwma) against fake agents ------------------------------------------------


def test_p2c_gives_a_slow_replica_a_small_share(loop_thread):
    fast, slow = FakeAgent(), FakeAgent(delay_s=0.05)
    routes = table({"m": [loop_thread.serve(fast), loop_thread.serve(slow)]})
    router, url = loop_thread.router(routes)
    assert isinstance(router.policy, P2CEwma)  # the default
    x = np.ones((1, 16), np.float32)
    with grpcclient.InferenceServerClient(url) as c, ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: c.infer("m", [x_input(x)]), range(200)))
    assert len(fast.calls) + len(slow.calls) == 200
    assert len(slow.calls) < 50, (len(fast.calls), len(slow.calls))  # round robin would give it 100


def test_an_erroring_replica_is_ejected_then_returned(loop_thread):
    good, bad = FakeAgent(), FakeAgent(grpc.StatusCode.INTERNAL)
    urls = [loop_thread.serve(good), loop_thread.serve(bad)]
    events: list[tuple[str, str, str]] = []
    clock = [0.0]
    policy = P2CEwma(emit=lambda *e: events.append(e), clock=lambda: clock[0], backoff_s=5.0, probe_every=4)
    _, url = loop_thread.router(table({"m": urls}), policy=policy)
    x = np.ones((1, 16), np.float32)

    def send(count: int) -> int:
        """Requests eight at a time (calls in flight make p2c spread them); how many failed."""
        def one(c: grpcclient.InferenceServerClient) -> int:
            try:
                c.infer("m", [x_input(x)])
                return 0
            except InferenceServerException as exc:
                assert exc.status() == "StatusCode.INTERNAL"
                return 1

        with grpcclient.InferenceServerClient(url) as c, ThreadPoolExecutor(8) as pool:
            return sum(pool.map(lambda _: one(c), range(count)))

    failed = send(200)
    assert 5 <= failed <= 5 + 8  # passed through until the fifth in a row ejects it (and those already sent)
    assert [(e[0], e[1]) for e in events] == [("ReplicaEjected", "m")] and urls[1] in events[0][2]
    assert len(bad.calls) == failed
    assert send(50) == 0 and len(bad.calls) == failed  # out while its back-off lasts
    bad.code = None  # it recovers; once the back-off ends, a probe takes it back
    clock[0] += 5.0
    assert send(100) == 0
    assert [e[0] for e in events] == ["ReplicaEjected", "ReplicaReturned"]
    assert len(bad.calls) > failed + 1  # back in rotation


async def test_model_infer_is_forwarded_and_answered_as_the_same_bytes() -> None:
    """The router parses a ModelInfer request once (model name, parameters) and forwards its bytes unchanged; the
    agent's reply bytes come back unchanged (no re-serialization either way)."""
    # fields out of their canonical order: a message parsed and serialized again would not keep these bytes
    reply = (pb.ModelInferResponse(raw_output_contents=[b"\x01" * 64]).SerializeToString()
             + pb.ModelInferResponse(model_name="m", id="7").SerializeToString())
    got: list[bytes] = []

    async def infer(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        got.append(data)
        return reply

    agent = grpc.aio.server()
    agent.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}),))
    agent_port = agent.add_insecure_port("127.0.0.1:0")
    router = Router()
    replica = ReplicaEndpoint(f"127.0.0.1:{agent_port}", "n1", ("cpu:0",), "1", "")
    router.update({"m": DeploymentRoutes("m", (replica,))})
    server = grpc.aio.server()
    add_router(server, router)
    port = server.add_insecure_port("127.0.0.1:0")
    await agent.start()
    await server.start()
    try:
        request = pb.ModelInferRequest(id="7", raw_input_contents=[b"\x02" * 64])
        request.parameters["xpud-zone"].string_param = "z1"
        data = (request.SerializeToString() + b"\xa0\x06\x01"  # and a field this proto does not know (100: 1)
                + pb.ModelInferRequest(model_name="m").SerializeToString())
        assert pb.ModelInferRequest.FromString(data).SerializeToString() != data
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = await channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")(data, timeout=10)
        assert got == [data] and answer == reply
    finally:
        await server.stop(0)
        await agent.stop(0)
        await router.close()


async def test_a_replica_whose_node_serves_several_versions_gets_the_version_named() -> None:
    """A split deployment's node that serves several of its versions side by side answers an unpinned request with
    its highest one: the router names the version it chose by appending `model_version` to the request's bytes (the
    last value wins), on every replica of a split; a request that names one itself, and a deployment with no split,
    get the bytes unchanged."""
    got: list[bytes] = []

    async def infer(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        got.append(data)
        return pb.ModelInferResponse(model_name="m").SerializeToString()

    agent = grpc.aio.server()
    agent.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}),))
    address = f"127.0.0.1:{agent.add_insecure_port('127.0.0.1:0')}"
    one, two = (ReplicaEndpoint(address, "n1", (f"sim:{v}",), v, "", pinned=True) for v in ("1", "2"))
    router = Router()
    server = grpc.aio.server()
    add_router(server, router)
    port = server.add_insecure_port("127.0.0.1:0")
    await agent.start()
    await server.start()

    def split(first: ReplicaEndpoint, second: ReplicaEndpoint) -> DeploymentRoutes:  # every unpinned one: 1
        by_version = {"1": DeploymentRoutes("m", (first,)), "2": DeploymentRoutes("m", (second,))}
        return DeploymentRoutes("m", (first, second), split=Split.of((("1", 100), ("2", 0))), by_version=by_version)

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
            router.update({"m": split(one, two)})
            unpinned = pb.ModelInferRequest(model_name="m", id="a").SerializeToString()
            named = pb.ModelInferRequest(model_name="m", model_version="2").SerializeToString()
            for data in (unpinned, named):
                await call(data, timeout=10)
            assert got[0].startswith(unpinned) and pb.ModelInferRequest.FromString(got[0]).model_version == "1"
            assert got[1] == named
            router.update({"m": split(replace(one, pinned=False), replace(two, pinned=False))})
            await call(unpinned, timeout=10)  # alone on its node, still named: its node may have loaded another
            assert pb.ModelInferRequest.FromString(got[2]).model_version == "1"
            router.update({"m": DeploymentRoutes("m", (replace(one, pinned=False),))})
            await call(unpinned, timeout=10)
            assert got[3] == unpinned  # no split: the bytes as the client sent them
    finally:
        await server.stop(0)
        await agent.stop(0)
        await router.close()


def test_pinning_a_message_copies_it_and_keeps_a_version_named() -> None:
    metadata = pb.ModelMetadataRequest(name="m")
    assert pinned(metadata, "2") == pb.ModelMetadataRequest(name="m", version="2") and metadata.version == ""
    assert pinned(pb.ModelConfigRequest(name="m", version="1"), "2").version == "1"
    infer = pb.ModelInferRequest(model_name="m", id="x")
    for version in ("12", "9" * 300):  # a length of one varint byte, and of two
        forwarded = pinned(Forwarded(infer.SerializeToString(), infer), version)
        assert pb.ModelInferRequest.FromString(forwarded.data) == pb.ModelInferRequest(model_name="m", id="x",
                                                                                       model_version=version)
