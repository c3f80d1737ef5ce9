"""A pushed model is loaded by ONNX Runtime before it is kept: a file that does not load is refused with the
parser's words and leaves nothing behind; a good one's inputs and outputs are recorded and listed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import grpc
import pytest

from models import mlp, onnx_bytes, slow
from xpud.controller.onnxcheck import short_message
from xpud.controller.server import start_controller
from xpud.controller.store import MIGRATIONS, ArtifactStore, SqliteStore, TensorSpec
from xpud.proto import admin_pb2 as apb
from xpud.proto import admin_pb2_grpc


@pytest.mark.parametrize(("message", "short"), [
    ("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from /state/artifacts/.tmp-push-x failed:Protobuf "
     "parsing failed.", "Protobuf parsing failed."),
    ("[ONNXRuntimeError] : 1 : FAIL : Load model from /t/.tmp-push-y failed:/onnxruntime_src/core/graph/model.cc:256 "
     "onnxruntime::Model::Model(onnx::ModelProto&&, const Logger&) Unsupported model IR version: 14, max 13",
     "Unsupported model IR version: 14, max 13"),
    ("first line\nsecond line\nthird line of frames", "first line second line"),
    ("", "ValueError"),
])
def test_short_message(message: str, short: str) -> None:
    assert short_message(ValueError(message)) == short


async def test_a_truncated_model_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    data = onnx_bytes(slow())[:5000]  # `head -c 5000 model.onnx`: the header is right, the rest is missing
    running = await start_controller("127.0.0.1:0", 0, tmp_path / "state")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin.PushModel(iter([apb.PushModelChunk(name="m", filename="model.onnx", data=data)]))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details() == "model.onnx is not a loadable ONNX model: Protobuf parsing failed."
            assert not (await admin.ListModels(apb.ListModelsRequest())).models
            events = await admin.ListEvents(apb.ListEventsRequest())
            assert not [e for e in events.events if e.kind == "ModelPushed"]
    finally:
        await running.stop(0)
    assert not list((tmp_path / "state" / "artifacts").iterdir())


async def test_a_models_inputs_and_outputs_are_answered_listed_and_kept(tmp_path: Path) -> None:
    want_in = apb.TensorInfo(name="x", datatype="FP32", shape=[-1, 4], dim_names=["batch", ""])
    want_out = apb.TensorInfo(name="probs", datatype="FP32", shape=[-1, 3], dim_names=["batch", ""])
    for restart in (False, True):
        running = await start_controller("127.0.0.1:0", 0, tmp_path / "state")
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
                admin = admin_pb2_grpc.AdminStub(channel)
                if not restart:
                    pushed = await admin.PushModel(iter([apb.PushModelChunk(name="m", data=onnx_bytes(mlp()))]))
                    assert list(pushed.inputs) == [want_in] and list(pushed.outputs) == [want_out]
                (listed,) = (await admin.ListModels(apb.ListModelsRequest())).models
                assert list(listed.inputs) == [want_in] and list(listed.outputs) == [want_out]
        finally:
            await running.stop(0)


def test_a_database_of_the_previous_schema_migrates(tmp_path: Path) -> None:
    """A models row written before inputs and outputs were kept reads back with none; new rows keep theirs."""
    tmp_path.mkdir(exist_ok=True)
    with sqlite3.connect(tmp_path / "state.db") as conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        conn.execute("INSERT INTO models (name, version, digest, size, filename, created) "
                     "VALUES ('old', '1', ?, 10, 'model.onnx', 1.0)", ("a" * 64,))
        conn.execute("INSERT INTO events (kind, subject, message, time) VALUES ('NodeJoined', 'n1', 'joined', 1.0)")
    conn.close()
    x = TensorSpec("x", "FP32", (-1, 4), ("batch", ""))
    with SqliteStore(tmp_path) as store:
        assert store.schema_version() == len(MIGRATIONS) == 4
        assert [(e.kind, e.actor) for e in store.events()] == [("NodeJoined", "")]  # no actor recorded then
        assert store.tokens() == []
        (old,) = store.models()
        assert (old.name, old.digest, old.inputs, old.outputs) == ("old", "a" * 64, (), ())
        new = store.add_model("new", None, "b" * 64, 20, "model.onnx", [x], [])
        assert new.inputs == (x,)
    with SqliteStore(tmp_path) as store:
        assert store.model("new") == new and store.model("old") == old


async def test_models_stored_before_inputs_were_kept_are_filled_in_at_start(tmp_path: Path) -> None:
    """The controller reads the inputs and outputs of older models from their stored files, once, at start; a file
    that does not load is left as it was (with a warning)."""
    state = tmp_path / "state"
    artifacts = ArtifactStore(state / "artifacts")
    good, _ = artifacts.put(iter([onnx_bytes(mlp())]))
    bad, _ = artifacts.put(iter([onnx_bytes(slow())[:5000]]))
    with sqlite3.connect(state / "state.db") as conn:
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        for name, digest in (("old", good), ("broken", bad)):
            conn.execute("INSERT INTO models (name, version, digest, size, filename, created) "
                         "VALUES (?, '1', ?, 10, 'model.onnx', 1.0)", (name, digest))
    conn.close()
    running = await start_controller("127.0.0.1:0", 0, state)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            for _ in range(200):  # the back-fill runs beside start-up: wait for it, bounded
                models = {m.name: m for m in (await admin.ListModels(apb.ListModelsRequest())).models}
                if models["old"].outputs:
                    break
                await asyncio.sleep(0.05)
            assert [i.name for i in models["old"].inputs] == ["x"]
            assert [o.name for o in models["old"].outputs] == ["probs"]
            assert not models["broken"].inputs and not models["broken"].outputs
    finally:
        await running.stop(0)
