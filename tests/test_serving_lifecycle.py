"""Load and unload while serving, broken models, and execution-provider checks, over a real agent process."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from helpers import AgentProcess
from models import mlp, save, slow, unknown_op

SLOW_CONFIG = """
max_batch_size: 0
instance_group [{ count: 1, kind: KIND_CPU }]
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
"""


@pytest.fixture
def repo(tmp_path):
    save(mlp(), tmp_path, "mlp")
    save(slow(rows=512, layers=12), tmp_path, "slow", SLOW_CONFIG)
    save(unknown_op(), tmp_path, "custom")
    gpu = save(mlp(), tmp_path, "needs_gpu", 'instance_group [{ kind: KIND_GPU }]\n')
    assert gpu.exists()
    return tmp_path


@pytest.fixture
def server(repo):
    agent = AgentProcess("--model-repo", str(repo), "--grpc-host", "127.0.0.1", "--grpc-port", "0")
    yield agent
    code, out = agent.stop()
    assert code == 0, out[-3000:]


def x_input(rows: int = 1) -> grpcclient.InferInput:
    i = grpcclient.InferInput("x", [rows, 4], "FP32")
    i.set_data_from_numpy(np.ones((rows, 4), np.float32))
    return i


def one() -> grpcclient.InferInput:
    i = grpcclient.InferInput("x", [1], "FP32")
    i.set_data_from_numpy(np.ones(1, np.float32))
    return i


def test_bad_models_fail_alone_with_clear_reasons(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        index = {m.name: m for m in c.get_model_repository_index().models}
        assert index["mlp"].state == "READY" and index["slow"].state == "READY"
        assert index["custom"].state == "UNAVAILABLE"
        assert "FrobnicateV9" in index["custom"].reason or "com.example" in index["custom"].reason
        assert index["needs_gpu"].state == "UNAVAILABLE"
        assert "asks for a GPU but this node has none" in index["needs_gpu"].reason
        with pytest.raises(InferenceServerException) as info:
            c.load_model("custom")
        assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
        assert c.infer("mlp", [x_input()]).as_numpy("probs").shape == (1, 3)  # the rest still serves


def test_unload_lets_in_flight_requests_finish_then_reload(server):
    async def scenario() -> None:
        async with aioclient.InferenceServerClient(server.grpc_url) as c:
            in_flight = [asyncio.create_task(c.infer("slow", [one()])) for _ in range(3)]
            await asyncio.sleep(0.1)
            await c.unload_model("slow")  # returns once the queued and running requests are done
            results = await asyncio.gather(*in_flight, return_exceptions=True)
            assert all(not isinstance(r, Exception) for r in results), results
            assert not await c.is_model_ready("slow")
            with pytest.raises(InferenceServerException) as info:
                await c.infer("slow", [one()])
            assert info.value.status() == "StatusCode.UNAVAILABLE"
            assert "not loaded" in info.value.message()
            await c.load_model("slow")
            assert await c.is_model_ready("slow")
            assert (await c.infer("slow", [one()])).as_numpy("y").shape == (1,)

    asyncio.run(scenario())


def test_reload_under_traffic_loses_no_request(server, repo):
    async def scenario() -> None:
        async with aioclient.InferenceServerClient(server.grpc_url) as c:
            stop = asyncio.Event()
            failures: list[BaseException] = []
            served = 0

            async def traffic() -> None:
                nonlocal served
                while not stop.is_set():
                    try:
                        await c.infer("mlp", [x_input(2)])
                        served += 1
                    except InferenceServerException as exc:
                        failures.append(exc)

            workers = [asyncio.create_task(traffic()) for _ in range(4)]
            for version in (2, 3):  # a new version appears in the repository, then it is loaded
                save(mlp(seed=version), repo, "mlp", version=version)
                await c.load_model("mlp")
                await asyncio.sleep(0.2)
            stop.set()
            await asyncio.gather(*workers)
            assert not failures, failures[:3]
            assert served > 0
            meta = await c.get_model_metadata("mlp")
            assert list(meta.versions) == ["3"]

    asyncio.run(scenario())


def test_unknown_model_load_and_unload(server, repo):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        with pytest.raises(InferenceServerException) as info:
            c.load_model("ghost")
        assert info.value.status() == "StatusCode.NOT_FOUND"
        with pytest.raises(InferenceServerException) as info:
            c.unload_model("ghost")
        assert info.value.status() == "StatusCode.NOT_FOUND"
        shutil.copytree(repo / "mlp", repo / "late")  # a model added after start-up
        c.load_model("late")
        assert c.is_model_ready("late")


def test_missing_repository_is_a_usage_error(tmp_path):
    from helpers import run_xpud

    result = run_xpud("agent", "--standalone", "--model-repo", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "is not a directory" in result.stderr and "Traceback" not in result.stderr
