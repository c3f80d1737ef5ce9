"""Assignments -> served models: the in-memory configuration, desired.json, and the reconciler over a real model
manager (real ONNX Runtime) and artifact cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from models import mlp
from xpud.agent.link.artifacts import ArtifactCache
from xpud.agent.link.assignment import PRIORITY_PARAMETER, Assignment, model_config
from xpud.agent.link.client import LinkClient
from xpud.agent.link.reconcile import Reconciler
from xpud.agent.serving.inference import infer
from xpud.agent.serving.manager import ModelManager, ModelNotFound, ModelUnavailable
from xpud.agent.serving.repository import ModelConfigError
from xpud.proto import link_pb2 as lpb
from xpud.proto.oip import mc, pb

GPU, CPU, AUTO = mc.ModelInstanceGroup.KIND_GPU, mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_AUTO


def model_bytes() -> bytes:
    model = mlp()
    model.ir_version = 9
    return model.SerializeToString()


MODEL = model_bytes()
DIGEST = hashlib.sha256(MODEL).hexdigest()


def assignment(name: str = "web", devices: tuple[str, ...] = ("cpu:0",), max_batch_size: int = 0,
               priority: int = 0, version: str = "1") -> Assignment:
    return Assignment(name, "mlp", version, DIGEST, len(MODEL), devices, max_batch_size, priority)


@pytest.mark.parametrize(
    ("devices", "groups"),
    [
        (("nvidia:0", "nvidia:1"), [(GPU, 1, [0, 1])]),
        (("cpu:0", "sim:3"), [(CPU, 2, [])]),  # simulated GPUs run on the CPU
        (("amd:2", "cpu:0"), [(GPU, 1, [2]), (CPU, 1, [])]),
        (("nvidia:0/mig:1",), [(CPU, 1, [])]),  # a MIG slice is no execution-provider device
        ((), [(CPU, 1, [])]),
    ],
)
def test_instances_on_the_assigned_devices(devices, groups):
    config = model_config(assignment(devices=devices))
    assert [(g.kind, g.count, list(g.gpus)) for g in config.instance_group] == groups
    assert (config.name, config.platform, config.backend) == ("web", "onnxruntime_onnx", "onnxruntime")


@pytest.mark.parametrize(("max_batch_size", "batching"), [(0, False), (16, True)])
def test_batching_and_priority(max_batch_size, batching):
    config = model_config(assignment(max_batch_size=max_batch_size, priority=5))
    assert config.max_batch_size == max_batch_size
    assert config.HasField("dynamic_batching") is batching
    assert batching is False or config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.parameters[PRIORITY_PARAMETER].string_value == "5"


def test_a_bad_deployment_name_is_refused():
    with pytest.raises(ModelConfigError, match="is not valid"):
        model_config(assignment(name="../etc"))


@pytest.mark.parametrize(
    ("saved", "expected"),
    [
        ({"deployment": "web", "model": "mlp", "version": "1", "digest": DIGEST, "size_bytes": 1, "devices": ["cpu:0"],
          "max_batch_size": 4}, Assignment("web", "mlp", "1", DIGEST, 1, ("cpu:0",), 4, 0)),  # before priority
        ({"deployment": "web", "model": "mlp", "version": "1", "digest": DIGEST, "size_bytes": 1, "devices": [],
          "priority": 3, "from_the_future": True}, Assignment("web", "mlp", "1", DIGEST, 1, (), 0, 3)),
    ],
)
def test_saved_assignments_load(saved, expected):
    assert Assignment.from_dict(saved) == expected


def fetcher(calls: list[str]):  # type: ignore[no-untyped-def]
    async def fetch(digest: str, offset: int):  # type: ignore[no-untyped-def]
        calls.append(digest)
        yield MODEL[offset:]

    return fetch


def node(root: Path) -> tuple[ModelManager, Reconciler]:
    manager = ModelManager(None)
    return manager, Reconciler(manager, ArtifactCache(root / "artifacts"), root / "desired.json")


async def answer(manager: ModelManager, name: str) -> np.ndarray:
    req = pb.ModelInferRequest(model_name=name)
    x = np.ones((1, 4), np.float32)
    req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    req.raw_input_contents.append(x.tobytes())
    reply = await infer(manager, req)
    return np.frombuffer(reply.raw_output_contents[0], np.float32)


async def test_an_assignment_is_served_from_the_cache_with_its_priority(tmp_path):
    manager, reconciler = node(tmp_path)
    calls: list[str] = []
    await reconciler.apply(4, [assignment(devices=("cpu:0", "sim:1"), max_batch_size=8, priority=7, version="3")],
                           fetcher(calls))
    assert [r.state for r in reconciler.statuses()] == ["READY"], reconciler.statuses()
    mv = manager.get("web")
    assert mv.version == 3 and len(mv.instances) == 2 and mv.config.max_batch_size == 8
    assert mv.config.parameters[PRIORITY_PARAMETER].string_value == "7"  # what ModelConfig answers
    assert (await answer(manager, "web")).shape == (3,)
    assert calls == [DIGEST]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "desired.json"]  # no repository written
    assert json.loads((tmp_path / "desired.json").read_text())["assignments"][0]["priority"] == 7

    await manager.unload("web")  # RepositoryModelLoad brings an assigned model back from its source
    with pytest.raises(ModelUnavailable, match="not loaded"):
        manager.get("web")
    await manager.load("web")
    assert manager.get("web").config.parameters[PRIORITY_PARAMETER].string_value == "7"

    await reconciler.apply(5, [], fetcher(calls))  # removed: forgotten, not merely unloaded
    assert manager.names() == [] and reconciler.statuses() == []
    with pytest.raises(ModelUnavailable, match="unloaded here a moment ago"):  # a late request: retried elsewhere
        manager.get("web")
    manager.removed["web"] -= 60  # long gone: unknown, as any other name
    with pytest.raises(ModelNotFound, match="unknown model 'web'"):
        manager.get("web")
    await manager.close()


async def test_a_restarted_node_serves_its_last_desired_state_without_a_controller(tmp_path):
    manager, reconciler = node(tmp_path)
    await reconciler.apply(2, [assignment(priority=1)], fetcher([]))
    await manager.close()

    manager, reconciler = node(tmp_path)  # restarted: no controller, so nothing to fetch from
    generation, saved = reconciler.saved()
    assert generation == 2 and saved == [assignment(priority=1)]
    await reconciler.apply(generation, saved, None)
    assert reconciler.applied.generation == 2 and [r.state for r in reconciler.statuses()] == ["READY"]
    assert (await answer(manager, "web")).shape == (3,)
    await manager.close()


async def test_higher_priorities_load_first(tmp_path):
    manager, reconciler = node(tmp_path)
    order: list[str] = []

    def changed() -> None:
        order.extend(n for (n, _), r in reconciler.reports.items() if r.state == "LOADING" and n not in order)

    reconciler.on_change = changed
    wanted = [assignment("a-low"), assignment("b-high", priority=9), assignment("c-mid", priority=2)]
    await reconciler.apply(1, wanted, fetcher([]))
    assert order == ["b-high", "c-mid", "a-low"]
    assert sorted(manager.models) == ["a-low", "b-high", "c-mid"]
    await manager.close()


async def test_a_model_unloaded_by_hand_is_loaded_again_whichever_report_found_it(tmp_path):
    """Drift found by a status report (a Hello's, say) rather than by the heal itself is still healed: the link
    client applies its last desired state again from the artifact cache."""
    manager, reconciler = node(tmp_path)
    client = LinkClient("127.0.0.1:1", node="n1", labels={}, zone="", endpoint="", telemetry=None,  # type: ignore[arg-type]
                        reconciler=reconciler, providers=list)
    client._desired(lpb.DesiredState(generation=1, assignments=[lpb.ModelAssignment(
        deployment="web", model="mlp", version="1", digest=DIGEST, size_bytes=len(MODEL), devices=["cpu:0"])]))
    await reconciler.apply(1, [assignment()], fetcher([]))  # cached; the client's own applier finds it cached too
    assert client._applier is not None
    await client._applier
    await manager.unload("web")  # RepositoryModelUnload behind the controller's back
    assert [r.state for r in reconciler.statuses()] == ["FAILED"]  # the report marks it, not `_heal`
    client._heal()
    assert client._applier is not None
    await client._applier
    assert [r.state for r in reconciler.statuses()] == ["READY"]
    assert (await answer(manager, "web")).shape == (3,)
    await manager.close()


async def test_a_replica_moved_to_other_devices_is_reported_ready_until_the_new_one_serves(tmp_path):
    manager, reconciler = node(tmp_path)
    await reconciler.apply(1, [assignment(devices=("sim:0",))], fetcher([]))
    seen: list[tuple[str, tuple[str, ...]]] = []

    def changed() -> None:  # what a status report would say at each change
        seen.extend((r.state, r.devices) for r in reconciler.statuses())

    reconciler.on_change = changed
    await reconciler.apply(2, [assignment(devices=("sim:1",))], fetcher([]))  # off an unhealthy sim:0, say
    assert ("LOADING", ("sim:1",)) not in seen and seen[-1] == ("READY", ("sim:1",)), seen
    assert all(state == "READY" for state, _ in seen)
    assert (await answer(manager, "web")).shape == (3,)
    await manager.close()


async def versions_answer(manager: ModelManager) -> dict[int, tuple[int, ...]]:
    """Per version loaded: the devices its instances run on, after a pinned request to it answered."""
    out = {}
    for number, mv in sorted(manager.models["web"].items()):
        req = pb.ModelInferRequest(model_name="web", model_version=str(number))
        req.inputs.add(name="x", datatype="FP32", shape=[1, 4])
        req.raw_input_contents.append(np.ones((1, 4), np.float32).tobytes())
        reply = await infer(manager, req)
        assert reply.model_version == str(number)
        out[number] = tuple(d for i in mv.instances for d in i.placement.devices)
    return out


async def test_several_versions_of_a_deployment_load_and_unload_one_at_a_time(tmp_path):
    manager, reconciler = node(tmp_path)
    one, two = assignment(devices=("sim:0",)), assignment(devices=("sim:1",), version="2")
    await reconciler.apply(1, [assignment(devices=("sim:0",))], fetcher([]))
    first = manager.models["web"][1]
    seen: list[list[tuple[str, str]]] = []
    reconciler.on_change = lambda: seen.append([(r.version, r.state) for r in reconciler.statuses()])

    await reconciler.apply(2, [one, two], fetcher([]))  # a split: version 2 beside version 1, which is not rebuilt
    assert manager.models["web"][1] is first and first.state.value == "READY"
    assert [(r.deployment, r.version, r.state, r.devices) for r in reconciler.statuses()] == \
        [("web", "1", "READY", ("sim:0",)), ("web", "2", "READY", ("sim:1",))]
    assert ("1", "READY") in seen[0] and ("2", "LOADING") in seen[0]  # version 1 served on while 2 loaded
    assert await versions_answer(manager) == {1: ("sim:0",), 2: ("sim:1",)}
    assert manager.get("web").version == 2  # unpinned: the highest version

    _, saved = reconciler.saved()  # desired.json holds both, and a restarted node serves both again
    assert saved == [one, two]
    await manager.close()
    manager, reconciler = node(tmp_path)
    generation, saved = reconciler.saved()
    await reconciler.apply(generation, saved, None)
    assert [(r.version, r.state) for r in reconciler.statuses()] == [("1", "READY"), ("2", "READY")]
    kept = manager.models["web"][2]

    seen.clear()
    reconciler.on_change = lambda: seen.append([(r.version, r.state) for r in reconciler.statuses()])
    await reconciler.apply(3, [two], fetcher([]))  # version 2 alone: version 1 unloads, drained; 2 is not rebuilt
    assert sorted(manager.models["web"]) == [2] and manager.models["web"][2] is kept
    assert [(r.version, r.state) for r in reconciler.statuses()] == [("2", "READY")]
    assert seen[0] == [("1", "UNLOADING"), ("2", "READY")]  # reported before it goes: no request is sent there
    with pytest.raises(ModelUnavailable, match="version 1 was unloaded"):  # one sent before: retried elsewhere
        manager.get("web", "1")
    assert await versions_answer(manager) == {2: ("sim:1",)}

    await reconciler.apply(4, [assignment(devices=("sim:0", "sim:1"), version="3")], fetcher([]))  # a rollout's
    assert sorted(manager.models["web"]) == [3]  # replacement, make before break: the one version in one load
    assert [(r.version, r.state) for r in reconciler.statuses()] == [("3", "READY")]
    await manager.close()


async def test_a_version_that_fails_to_load_leaves_the_others_serving(tmp_path):
    manager, reconciler = node(tmp_path)
    bad = Assignment("web", "mlp", "2", "0" * 64, 10, ("sim:1",))  # not cached, and no controller to fetch it from
    await reconciler.apply(1, [assignment(devices=("sim:0",)), bad], None)
    assert [(r.version, r.state) for r in reconciler.statuses()] == [("1", "FAILED"), ("2", "FAILED")]
    await reconciler.apply(1, [assignment(devices=("sim:0",))], fetcher([]))  # cached now
    await reconciler.apply(2, [assignment(devices=("sim:0",)), bad], None)
    states = {r.version: (r.state, r.reason) for r in reconciler.statuses()}
    assert states["1"] == ("READY", "") and states["2"][0] == "FAILED" and "not cached" in states["2"][1]
    assert sorted(manager.models["web"]) == [1] and manager.get("web").version == 1
    await manager.close()
