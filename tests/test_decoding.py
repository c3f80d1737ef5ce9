"""Undecodable requests over real gRPC on 127.0.0.1: the agent's OIP endpoint, the controller's admin/link server and
its router all answer INVALID_ARGUMENT with a rate-limited log line, never a traceback; a fuzz test over
ModelInferRequest bytes; empty model names answer NOT_FOUND."""

from __future__ import annotations

import logging
import resource
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models import save, scale
from xpud.agent.serving.manager import ModelManager
from xpud.agent.serving.servicer import InferenceServer
from xpud.controller.routes import DeploymentRoutes, ReplicaEndpoint
from xpud.controller.server import start_controller
from xpud.proto.decoding import BadRequestLog
from xpud.proto.oip import pb

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
GARBAGE = [b"\xff\xff\xff\xff\xff", b"\x0a\xff\x01abc", b"\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01"]
DOCUMENTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
SCALE_CONFIG = """
max_batch_size: 8
input [{ name: "x", data_type: TYPE_FP32, dims: [16] }]
output [{ name: "y", data_type: TYPE_FP32, dims: [16] }]
"""


def good_request(name: str = "scale") -> Any:
    x = np.ones((1, 16), dtype=np.float32)
    req = pb.ModelInferRequest(model_name=name)
    req.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    req.raw_input_contents.append(x.tobytes())
    return req


GOOD = good_request().SerializeToString()


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[str]:
    save(scale(), tmp_path / "repo", "scale", SCALE_CONFIG)
    manager = ModelManager(tmp_path / "repo")
    await manager.load_all()
    server = InferenceServer(manager)
    port = await server.start("127.0.0.1", 0)
    await server.set_ready(True)
    yield f"127.0.0.1:{port}"
    await server.stop(0)
    await manager.close()


async def call_raw(channel: grpc.aio.Channel, method: str, data: bytes) -> tuple[grpc.StatusCode, str, bytes]:
    try:
        reply = await channel.unary_unary(method)(data, timeout=10)
        return grpc.StatusCode.OK, "", reply
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", b""


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert "Traceback" not in record.getMessage()


async def test_garbage_gets_invalid_argument_and_few_log_lines(agent: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with grpc.aio.insecure_channel(agent) as channel:
        code, details, _ = await call_raw(channel, INFER, GARBAGE[0])
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert f"request to {INFER} is not a valid ModelInferRequest" in details
        for i in range(200):
            code, _, _ = await call_raw(channel, INFER, GARBAGE[i % len(GARBAGE)])
            assert code is grpc.StatusCode.INVALID_ARGUMENT
        code, _, reply = await call_raw(channel, INFER, GOOD)
        assert code is grpc.StatusCode.OK, code
        out = pb.ModelInferResponse.FromString(reply)
        assert np.frombuffer(out.raw_output_contents[0], dtype=np.float32).shape == (16,)
    lines = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert 1 <= len(lines) <= 2
    assert_no_traceback(caplog)


async def test_a_bad_stream_message_ends_the_stream(agent: str, caplog: pytest.LogCaptureFixture) -> None:
    async with grpc.aio.insecure_channel(agent) as channel:
        call = channel.stream_stream(STREAM)()
        await call.write(GOOD)
        first = pb.ModelStreamInferResponse.FromString(await call.read())
        assert not first.error_message and first.infer_response.model_name == "scale"
        await call.write(GARBAGE[1])
        with pytest.raises(grpc.aio.AioRpcError) as info:
            while True:
                if await call.read() is grpc.aio.EOF:
                    break
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid ModelInferRequest" in (info.value.details() or "")
        code, _, _ = await call_raw(channel, INFER, GOOD)
        assert code is grpc.StatusCode.OK
    assert_no_traceback(caplog)


async def test_empty_model_name_is_not_found_on_the_agent(agent: str) -> None:
    async with grpc.aio.insecure_channel(agent) as channel:
        for method, request in ((INFER, good_request("")),
                                ("/inference.GRPCInferenceService/ModelMetadata", pb.ModelMetadataRequest()),
                                ("/inference.GRPCInferenceService/ModelConfig", pb.ModelConfigRequest())):
            code, details, _ = await call_raw(channel, method, request.SerializeToString())
            assert code is grpc.StatusCode.NOT_FOUND, (method, code, details)
            assert "a model name is needed" in details


async def test_controller_servers_and_router(agent: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    running = await start_controller("127.0.0.1:0", 0, tmp_path / "state", inference_host="127.0.0.1")
    try:
        running.router.update({"scale": DeploymentRoutes(
            "scale", (ReplicaEndpoint(agent, "n0", ("cpu:0",), "1", ""),), "")})
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as admin:
            for method in ("/xpud.v1.Admin/ListNodes", "/xpud.v1.Admin/CreateDeployment"):
                code, details, _ = await call_raw(admin, method, GARBAGE[0])
                assert code is grpc.StatusCode.INVALID_ARGUMENT, (method, code, details)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin.stream_unary("/xpud.v1.Admin/PushModel")(iter([GARBAGE[1]]), timeout=10)
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.inference_port}") as router:
            for _ in range(50):
                code, details, _ = await call_raw(router, INFER, GARBAGE[2])
                assert code is grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid ModelInferRequest" in details
            code, details, _ = await call_raw(router, INFER, good_request("").SerializeToString())
            assert code is grpc.StatusCode.NOT_FOUND and "a model name is needed" in details
            code, details, _ = await call_raw(router, INFER, GOOD)
            assert code is grpc.StatusCode.OK, details
    finally:
        await running.stop(0)
    assert_no_traceback(caplog)


def mutations() -> st.SearchStrategy[bytes]:
    """Random bytes, and the good request with bytes flipped, cut or spliced in."""

    def mutate(args: tuple[int, int, bytes]) -> bytes:
        at, cut, insert = args
        at %= len(GOOD) + 1
        return GOOD[:at] + insert + GOOD[at + cut:]

    return st.one_of(st.binary(max_size=256),
                     st.tuples(st.integers(0, 1 << 16), st.integers(0, 8), st.binary(max_size=8)).map(mutate))


async def test_fuzz_model_infer_bytes(agent: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    seen: set[grpc.StatusCode] = set()
    async with grpc.aio.insecure_channel(agent) as channel:
        samples: list[bytes] = []

        @settings(max_examples=2000, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(mutations())
        def collect(data: bytes) -> None:
            samples.append(data)

        collect()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for data in samples:
            code, details, _ = await call_raw(channel, INFER, data)
            assert code in DOCUMENTED, (code, details, data)
            seen.add(code)
        code, _, _ = await call_raw(channel, INFER, GOOD)
        assert code is grpc.StatusCode.OK
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mib < 100, grown_mib
    assert grpc.StatusCode.INVALID_ARGUMENT in seen
    assert_no_traceback(caplog)
    assert len([r for r in caplog.records if "undecodable" in r.getMessage()]) <= 3


@pytest.mark.parametrize("times,expected_lines", [
    ([0.0], 1), ([0.0, 1.0, 2.0], 1), ([0.0, 1.0, 11.0], 2), ([0.0, 10.0, 20.0, 25.0], 3),
])
def test_bad_request_log_rate(times: list[float], expected_lines: int, caplog: pytest.LogCaptureFixture) -> None:
    clock = iter(times)
    bad = BadRequestLog(interval=10.0, clock=lambda: next(clock), logger=logging.getLogger("test.decoding"))
    with caplog.at_level(logging.WARNING, logger="test.decoding"):
        for _ in times:
            bad.note("/m", "broken")
    assert len(caplog.records) == expected_lines
    assert bad.total == len(times)
