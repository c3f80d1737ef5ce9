"""The OIP endpoint of a real agent process, called with tritonclient (sync and aio), unchanged."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from helpers import AgentProcess, expect_status, metric, metric_values
from models import IDENTITY_TYPES, identities, image_identity, iris_classifier, mlp, mlp_reference, save, scale, slow

SCALE_CONFIG = """
max_batch_size: 8
input [{ name: "x", data_type: TYPE_FP32, dims: [16] }]
output [{ name: "y", data_type: TYPE_FP32, dims: [16] }]
dynamic_batching { max_queue_delay_microseconds: 200000 }
"""

SLOW_CONFIG = """
max_batch_size: 0
instance_group [{ count: 1, kind: KIND_CPU }]
parameters { key: "intra_op_thread_count" value { string_value: "1" } }
dynamic_batching {
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy { max_queue_size: 2, allow_timeout_override: true }
}
"""

IMAGE_CONFIG = "max_batch_size: 0\n"
PLAIN_TYPES = tuple(t for t in IDENTITY_TYPES if t != "BF16")  # ORT takes BF16 through OrtValues: a model of its own


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("repo")
    save(mlp(), root, "mlp")  # no config.pbtxt: auto-completed from the graph
    save(scale(), root, "scale", SCALE_CONFIG)
    save(identities(PLAIN_TYPES), root, "types", "max_batch_size: 4\n")
    save(identities(("BF16", "FP32")), root, "bf16", "max_batch_size: 4\n")
    save(slow(rows=512, layers=24), root, "slow", SLOW_CONFIG)  # ~0.3 s per execution on one core here
    save(image_identity(), root, "image", IMAGE_CONFIG)
    model, _, _ = iris_classifier()
    save(model, root, "iris", "max_batch_size: 32\ndynamic_batching {}\n")
    save(mlp(seed=1), root, "versioned", 'version_policy: { all: {} }\n', version=1)
    save(mlp(seed=2), root, "versioned", None, version=2)
    broken = root / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"this is not an onnx file")
    return root


@pytest.fixture(scope="module")
def server(repo):
    agent = AgentProcess("--model-repo", str(repo), "--grpc-host", "127.0.0.1", "--grpc-port", "0")
    yield agent
    code, out = agent.stop()
    assert code == 0, out[-3000:]


@pytest.fixture
def client(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        yield c


def inp(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    i = grpcclient.InferInput(name, list(array.shape), datatype)
    i.set_data_from_numpy(array)
    return i


# -- server and model RPCs --------------------------------------------------------------------


def test_server_rpcs_and_health(server, client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta.name == "xpud" and "model_repository" in meta.extensions
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_metadata_and_autocompleted_config(client):
    assert client.is_model_ready("mlp")
    meta = client.get_model_metadata("mlp")
    assert meta.platform == "onnxruntime_onnx" and list(meta.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("probs", "FP32", [-1, 3])]
    config = client.get_model_config("mlp").config
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [4]
    # where it really runs: the resolved instance group and the execution provider in use
    assert [(g.kind, g.count) for g in config.instance_group] == [(config.instance_group[0].KIND_CPU, 1)]
    assert config.parameters["xpud.execution_provider"].string_value == "CPUExecutionProvider"


def test_repository_index_shows_failures(client):
    index = {(m.name, m.version): m for m in client.get_model_repository_index().models}
    assert index[("mlp", "1")].state == "READY"
    assert index[("versioned", "1")].state == "READY" and index[("versioned", "2")].state == "READY"
    broken = index[("broken", "")]
    assert broken.state == "UNAVAILABLE" and "broken" in broken.reason
    assert not client.is_model_ready("broken")


def test_infer_matches_the_model_and_echoes_id_and_parameters(client):
    x = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
    result = client.infer("mlp", [inp("x", x, "FP32")], request_id="req-42", parameters={"tenant": "blue"})
    np.testing.assert_allclose(result.as_numpy("probs"), mlp_reference(x), rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response.id == "req-42" and response.model_name == "mlp" and response.model_version == "1"
    assert response.parameters["tenant"].string_param == "blue"


def test_versions_are_addressable(client):
    x = np.ones((1, 4), np.float32)
    v1 = client.infer("versioned", [inp("x", x, "FP32")], model_version="1").as_numpy("probs")
    v2 = client.infer("versioned", [inp("x", x, "FP32")], model_version="2").as_numpy("probs")
    latest = client.infer("versioned", [inp("x", x, "FP32")]).as_numpy("probs")
    np.testing.assert_allclose(v1, mlp_reference(x, seed=1), rtol=1e-5)
    np.testing.assert_allclose(v2, mlp_reference(x, seed=2), rtol=1e-5)
    np.testing.assert_array_equal(latest, v2)


def test_sklearn_model_from_skl2onnx(client):
    _, features, labels = iris_classifier()
    result = client.infer("iris", [inp("X", features, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("label"), labels)
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (len(features), 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)


@pytest.mark.parametrize("datatype", sorted(IDENTITY_TYPES))
def test_every_datatype_round_trips(client, datatype):
    rng = np.random.default_rng(7)
    shape = (2, 5)
    if datatype == "BYTES":
        array = np.array([[f"w{i}{j}-é".encode() for j in range(5)] for i in range(2)], dtype=object)
    elif datatype == "BOOL":
        array = rng.random(shape) > 0.5
    elif datatype == "BF16":
        import ml_dtypes

        array = rng.standard_normal(shape).astype(ml_dtypes.bfloat16)
    elif datatype.startswith("FP"):
        array = rng.standard_normal(shape).astype(datatype.replace("FP", "float"))
    else:
        array = rng.integers(0, 100, shape).astype(datatype.lower())
    model, names = ("bf16", ("BF16", "FP32")) if datatype == "BF16" else ("types", PLAIN_TYPES)
    inputs = [inp(f"in_{name}", array if name == datatype else _zeros(name, 2), name) for name in names]
    result = client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(f"out_{datatype}")])
    got = result.as_numpy(f"out_{datatype}")
    assert [o.name for o in result.get_response().outputs] == [f"out_{datatype}"]  # only what was asked for
    np.testing.assert_array_equal(got, array)


def _zeros(datatype: str, rows: int) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([[b""]] * rows, dtype=object)
    if datatype == "BF16":
        import ml_dtypes

        return np.zeros((rows, 1), dtype=ml_dtypes.bfloat16)
    from xpud.proto.oip import numpy_dtype

    return np.zeros((rows, 1), dtype=numpy_dtype(datatype))


def test_typed_contents_are_accepted(server):
    from xpud.proto.oip import pb, pb_grpc

    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="mlp")
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        tensor.contents.fp32_contents.extend([1, 2, 3, 4])
        reply = stub.ModelInfer(request)
    probs = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(1, 3)
    np.testing.assert_allclose(probs, mlp_reference(np.array([[1, 2, 3, 4]], np.float32)), rtol=1e-5)


def test_a_12_mib_image_fits_the_default_message_limit(client):
    image = np.full((1, 3, 1024, 1024), 0.5, np.float32)
    result = client.infer("image", [inp("image", image, "FP32")])
    assert float(result.as_numpy("mean")) == pytest.approx(0.5)


# -- bad input: precise status, server unaffected ----------------------------------------------


def test_unknown_model_and_version(client):
    x = np.ones((1, 4), np.float32)
    with expect_status("NOT_FOUND", "unknown model 'nope'"):
        client.infer("nope", [inp("x", x, "FP32")])
    with expect_status("NOT_FOUND", "has no version '9'"):
        client.infer("mlp", [inp("x", x, "FP32")], model_version="9")
    with expect_status("NOT_FOUND"):
        client.get_model_metadata("nope")
    with expect_status("UNAVAILABLE", "its load failed"):
        client.infer("broken", [inp("x", x, "FP32")])


@pytest.mark.parametrize(
    ("inputs", "fragments"),
    [
        ([("x", np.ones((1, 4), np.float64), "FP64")], ["input 'x': datatype FP64, expected FP32"]),
        ([("x", np.ones((1, 5), np.float32), "FP32")], ["input 'x': shape [1,5] does not match the model's [-1,4]"]),
        ([("x", np.ones((9, 4), np.float32), "FP32")], ["batch size 9 is outside 1..4"]),
        ([("y", np.ones((1, 4), np.float32), "FP32")], ["has no input 'y'", "['x']"]),
        ([], ["needs input(s) ['x']"]),
    ],
)
def test_bad_tensors_are_invalid_argument(client, inputs, fragments):
    with expect_status("INVALID_ARGUMENT", *fragments):
        client.infer("mlp", [inp(n, a, t) for n, a, t in inputs])


def test_byte_size_and_malformed_bytes(server, client):
    from xpud.proto.oip import pb, pb_grpc

    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="mlp")
        request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        request.raw_input_contents.append(b"\0" * 12)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "input 'x': got 12 bytes, expected 16" in info.value.details()
        request = pb.ModelInferRequest(model_name="types")
        for name in PLAIN_TYPES:
            request.inputs.add(name=f"in_{name}", datatype=name, shape=[1, 1])
            raw = _zeros(name, 1).tobytes() if name != "BYTES" else b"\xff\0\0\0abc"
            request.raw_input_contents.append(raw)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "input 'in_BYTES': malformed BYTES tensor" in info.value.details()
    # and the server is fine afterwards
    assert client.infer("mlp", [inp("x", np.ones((1, 4), np.float32), "FP32")]).as_numpy("probs").shape == (1, 3)


def test_unknown_requested_output(client):
    with expect_status("INVALID_ARGUMENT", "has no output(s) ['nope']"):
        client.infer("mlp", [inp("x", np.ones((1, 4), np.float32), "FP32")],
                     outputs=[grpcclient.InferRequestedOutput("nope")])


def test_shared_memory_trace_and_log_are_unimplemented(client):
    with expect_status("UNIMPLEMENTED", "shared memory is not supported"):
        client.get_system_shared_memory_status()
    with expect_status("UNIMPLEMENTED", "CUDA shared memory"):
        client.get_cuda_shared_memory_status()
    with expect_status("UNIMPLEMENTED", "trace"):
        client.get_trace_settings()
    with expect_status("UNIMPLEMENTED", "log"):
        client.get_log_settings()


def test_a_message_over_the_limit_is_resource_exhausted(repo):
    agent = AgentProcess("--model-repo", str(repo), "--grpc-host", "127.0.0.1", "--grpc-port", "0",
                         "--max-message-bytes", str(1 << 20))
    try:
        with grpcclient.InferenceServerClient(agent.grpc_url) as c:
            with expect_status("RESOURCE_EXHAUSTED"):
                c.infer("image", [inp("image", np.zeros((1, 3, 1024, 1024), np.float32), "FP32")])
            assert c.infer("mlp", [inp("x", np.ones((1, 4), np.float32), "FP32")]).as_numpy("probs").shape == (1, 3)
    finally:
        agent.stop()


# -- batching, priorities, queue policy, cancellation ---------------------------------------------


def stats_of(client, model: str):  # type: ignore[no-untyped-def]
    return client.get_inference_statistics(model).model_stats[0]


async def test_concurrent_requests_are_merged_into_batches(server, client):
    before = stats_of(client, "scale")
    xs = [np.full((1, 16), i, np.float32) for i in range(8)]
    async with aioclient.InferenceServerClient(server.grpc_url) as c:
        results = await asyncio.gather(*(c.infer("scale", [inp("x", x, "FP32")]) for x in xs))
    for x, r in zip(xs, results, strict=True):
        np.testing.assert_array_equal(r.as_numpy("y"), x * 2)  # every caller got its own rows back
    after = stats_of(client, "scale")
    requests = after.inference_stats.success.count - before.inference_stats.success.count
    executions = after.execution_count - before.execution_count
    assert requests == 8 and executions < 8, f"{executions} executions for 8 requests: nothing was merged"
    assert any(b.batch_size > 1 for b in after.batch_stats)
    assert after.inference_count - before.inference_count == 8


async def _blocker(c, done: list[str], tag: str, **kwargs):  # type: ignore[no-untyped-def]
    result = await c.infer("slow", [inp("x", np.ones(1, np.float32), "FP32")], **kwargs)
    done.append(tag)
    return result


async def test_priorities_are_served_in_order(server):
    done: list[str] = []
    async with aioclient.InferenceServerClient(server.grpc_url) as c:
        first = asyncio.create_task(_blocker(c, done, "first"))
        await asyncio.sleep(0.05)
        low = asyncio.create_task(_blocker(c, done, "low", priority=2))
        await asyncio.sleep(0.02)
        high = asyncio.create_task(_blocker(c, done, "high", priority=1))
        await asyncio.gather(first, low, high)
    assert done == ["first", "high", "low"]


async def test_full_queue_is_resource_exhausted(server):
    async with aioclient.InferenceServerClient(server.grpc_url) as c:
        tasks = [asyncio.create_task(c.infer("slow", [inp("x", np.ones(1, np.float32), "FP32")])) for _ in range(5)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, Exception)]
    assert errors and len(errors) < 5
    for e in errors:
        assert isinstance(e, InferenceServerException) and e.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "max_queue_size" in e.message() or "queue" in e.message()


async def test_queue_timeout_is_deadline_exceeded(server):
    done: list[str] = []
    async with aioclient.InferenceServerClient(server.grpc_url) as c:
        blocker = asyncio.create_task(_blocker(c, done, "blocker"))
        await asyncio.sleep(0.05)
        with pytest.raises(InferenceServerException) as info:
            await c.infer("slow", [inp("x", np.ones(1, np.float32), "FP32")], timeout=1000)
        await blocker
    assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"


async def test_cancelled_request_leaves_the_queue(server, client):
    before = stats_of(client, "slow").execution_count
    done: list[str] = []
    async with aioclient.InferenceServerClient(server.grpc_url) as c:
        blocker = asyncio.create_task(_blocker(c, done, "blocker"))
        await asyncio.sleep(0.05)
        with pytest.raises(InferenceServerException):
            await c.infer("slow", [inp("x", np.ones(1, np.float32), "FP32")], client_timeout=0.02)
        await blocker
    time.sleep(0.3)  # let the server finish whatever it would (wrongly) have run
    assert stats_of(client, "slow").execution_count - before == 1  # only the blocker ran


# -- streaming, aio client, metrics -----------------------------------------------------------------


def test_stream_infer(server):
    responses: list = []
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        c.start_stream(callback=lambda result, error: responses.append((result, error)))
        for i in range(5):
            c.async_stream_infer("mlp", [inp("x", np.full((1, 4), i, np.float32), "FP32")], request_id=str(i))
        c.async_stream_infer("mlp", [inp("x", np.ones((1, 5), np.float32), "FP32")], request_id="bad")
        deadline = time.monotonic() + 10
        while len(responses) < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        c.stop_stream()
    good = {r.get_response().id: r for r, e in responses if e is None}
    assert sorted(good) == ["0", "1", "2", "3", "4"]
    np.testing.assert_allclose(good["3"].as_numpy("probs"), mlp_reference(np.full((1, 4), 3, np.float32)), rtol=1e-5)
    errors = [e for _, e in responses if e is not None]
    assert len(errors) == 1 and "INVALID_ARGUMENT" in str(errors[0]) and "shape [1,5]" in str(errors[0])


def test_inference_metrics_are_exported(server, client):
    client.infer("mlp", [inp("x", np.ones((1, 4), np.float32), "FP32")])
    text = server.scrape()
    assert metric(text, "xpud_inference_requests_total", model="mlp", version="1", status="success") >= 1
    assert metric_values(text, "xpud_inference_request_duration_seconds_count")
    assert metric_values(text, "xpud_inference_batch_size_count")
