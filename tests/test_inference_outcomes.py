"""Inference outcomes count against the devices an instance runs on: real ONNX Runtime sessions, the real
simulator with an inference fault (stepped clock), the real health book. A run the device failed counts; a
client's bad request, a refused tensor, an unload or a queue timeout does not."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import grpc
import numpy as np
import pytest

from models import mlp
from xpud.agent.daemon import inference_checks
from xpud.agent.link.assignment import Assignment, model_config, model_source
from xpud.agent.serving.batcher import BatcherClosed, QueueTimeout, Request
from xpud.agent.serving.inference import InvalidRequest, infer
from xpud.agent.serving.manager import Batch, ModelManager, device_outcome
from xpud.agent.serving.modelconfig import bind_devices, placements
from xpud.agent.serving.runtime import CPU, CUDA, InputRejected, RunFailed, SessionError
from xpud.agent.serving.servicer import CODES
from xpud.agent.telemetry.health import HealthBook, HealthPolicy, HealthState
from xpud.agent.telemetry.inventory import Inventory, PluginSlot
from xpud.agent.telemetry.sampling import Telemetry
from xpud.plugins.sim import SimPlugin
from xpud.proto.oip import mc, pb
from xpud.proto.status import status_of

FAULT_AT_S = 10.0  # the simulated GPU fails every run from then on; sessions load and warm up before


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize(
    ("devices", "bound"),
    [
        (("nvidia:1", "sim:0", "cpu:0"), [("nvidia:1",), ("sim:0",), ("cpu:0",)]),  # by index, then in order
        (("sim:2", "sim:0"), [("sim:2",), ("sim:0",)]),  # simulated GPUs: CPU instances that keep their ids
        ((), [()]),  # nothing assigned: one CPU instance of no device
    ],
)
def test_each_instance_is_bound_to_its_assigned_device(devices, bound):
    a = Assignment("web", "mlp", "1", "0" * 64, 1, devices)
    where = bind_devices(placements(model_config(a), [0, 1], [CUDA, CPU]), devices, {})
    assert [p.devices for p in where] == bound


def test_a_repository_model_takes_the_inventory_id_of_its_gpu():
    config = mc.ModelConfig(name="m")
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, gpus=[1])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU)
    where = bind_devices(placements(config, [0, 1], [CUDA, CPU]), (), {0: "nvidia:0", 1: "nvidia:1"})
    assert [p.devices for p in where] == [("nvidia:1",), ()]


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, True),
        (RunFailed("web_1_0 on nvidia:0: [ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA error"), False),
        (InputRejected("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Unexpected input data type"), None),
        (ValueError("Required inputs (['x']) are missing from input feed"), None),
        (SessionError("a model with BF16 outputs cannot take BYTES inputs here"), None),
        (BatcherClosed("model 'web:1': its instance stopped"), None),
        (QueueTimeout("request timed out after 0.100s in the queue"), None),
    ],
)
def test_only_a_run_the_device_failed_counts_against_it(error, outcome):
    assert device_outcome(error) is outcome


async def served(tmp_path: Path, clock: Clock) -> tuple[ModelManager, list[tuple[str, bool, int]], HealthBook,
                                                         Telemetry]:
    """An agent's serving and telemetry in process: two simulated GPUs, sim:0 failing every run from
    FAULT_AT_S; the model assigned to sim:0."""
    plugin = SimPlugin({"scenario": {"count": 2, "faults": [{"kind": "inference_errors", "device": 0,
                                                             "at_s": FAULT_AT_S, "ratio": 1.0}]}}, clock=clock)
    inventory = Inventory([PluginSlot("sim", None, plugin=plugin, devices=plugin.discover())])
    book = HealthBook(HealthPolicy(min_requests=10))
    telemetry = Telemetry(inventory, clock=clock, health=book)
    seen: list[tuple[str, bool, int]] = []

    def outcome(device: str, ok: bool, count: int) -> None:
        seen.append((device, ok, count))
        telemetry.inference(device, ok, count)

    checks = inference_checks(inventory)
    assert sorted(checks) == ["sim:0"]  # sim:1 has no fault: nothing is called on its runs
    manager = ModelManager(None, outcomes=outcome, device_checks=checks)
    model = mlp()
    model.ir_version = 9
    data = model.SerializeToString()
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    a = Assignment("web", "mlp", "1", hashlib.sha256(data).hexdigest(), len(data), ("sim:0",), max_batch_size=4)
    await manager.load("web", model_source(a, path))
    return manager, seen, book, telemetry


def request(datatype: str = "FP32") -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="web")
    req.inputs.add(name="x", datatype=datatype, shape=[1, 4])
    req.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
    return req


async def test_runs_on_a_failing_sim_gpu_count_against_it_until_it_is_unhealthy(tmp_path):
    clock = Clock()
    manager, seen, book, telemetry = await served(tmp_path, clock)
    try:
        for _ in range(3):
            await infer(manager, request())
        assert seen == [("sim:0", True, 1)] * 3  # warm-up runs are not requests
        clock.t += FAULT_AT_S
        for _ in range(7):
            with pytest.raises(RunFailed, match=r"on sim:0: \[ONNXRuntimeError\] : 6 : RUNTIME_EXCEPTION") as got:
                await infer(manager, request())
            assert status_of(got.value, CODES) is grpc.StatusCode.INTERNAL  # as Triton answers a failed run
        assert seen[3:] == [("sim:0", False, 1)] * 7
        health = book.device("sim:0")
        assert health.state is HealthState.UNHEALTHY and health.reason == "7/10 requests failed in 60 s"
        assert book.transitions == {("sim:0", "healthy", "unhealthy", "inference_failures"): 1}
        snapshot = await telemetry.tick()  # the state goes out with the next tick's sample
        assert snapshot.samples["sim:0"].health_state == "unhealthy"
        assert snapshot.samples["sim:1"].health_state == "healthy"
    finally:
        await manager.close()


async def test_a_clients_bad_requests_never_count_against_the_device(tmp_path):
    clock = Clock()
    manager, seen, book, _ = await served(tmp_path, clock)
    try:
        with pytest.raises(InvalidRequest):  # refused before it is queued
            await infer(manager, request("FP64"))
        mv = manager.get("web")
        wrong = Request(Batch({"x": np.ones((1, 4), np.float64)}))  # past the checks: ONNX Runtime refuses it
        with pytest.raises(InputRejected, match="INVALID_ARGUMENT"):
            await asyncio.wait_for(manager.infer(mv, wrong), 10)
        assert status_of(InputRejected("x"), CODES) is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(ValueError, match="missing"):
            await asyncio.wait_for(manager.infer(mv, Request(Batch({}))), 10)
        assert seen == [] and book.transitions == {}
    finally:
        await manager.close()


async def test_a_fault_active_at_load_fails_the_warm_up_as_a_broken_gpu_would(tmp_path):
    plugin = SimPlugin({"scenario": {"count": 1, "faults": [{"kind": "inference_errors", "device": 0}]}})
    inventory = Inventory([PluginSlot("sim", None, plugin=plugin, devices=plugin.discover())])
    manager = ModelManager(None, device_checks=inference_checks(inventory))
    model = mlp()
    model.ir_version = 9
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    a = Assignment("web", "mlp", "1", "0" * 64, 1, ("sim:0",))
    with pytest.raises(SessionError, match=r"warm-up .* failed on cpu: .*RUNTIME_EXCEPTION"):
        await manager.load("web", model_source(a, path))
    await manager.close()
