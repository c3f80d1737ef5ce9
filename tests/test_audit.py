"""The audit log: a JSON line per state-changing admin call with actor and result, rotation by size, and a log that
cannot be written never failing a call."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import grpc
import pytest

from helpers import run_xpud
from models import mlp, onnx_bytes
from xpud.controller.audit import AuditError, AuditLog
from xpud.controller.server import start_controller
from xpud.proto import admin_pb2 as apb
from xpud.proto import admin_pb2_grpc, pki
from xpud.proto.credentials import TlsFiles, channel_credentials


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rotation_keeps_the_newest_files_and_whole_lines(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log", max_bytes=1000, keep=2, clock=lambda: 0.0)
    for i in range(60):
        log.record("DeleteDeployment", f"d{i}", {"name": f"d{i}"}, "OK", actor="user:a")
    log.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["audit.log", "audit.log.1", "audit.log.2"]
    for name in names:
        assert (tmp_path / name).stat().st_size <= 1000
    newest = lines(tmp_path / "audit.log")
    assert newest[-1]["target"] == "d59" and newest[-1]["time"] == "1970-01-01T00:00:00.000Z"
    older = lines(tmp_path / "audit.log.1")
    assert int(older[-1]["target"][1:]) + 1 == int(newest[0]["target"][1:])  # no line lost between files
    assert (tmp_path / "audit.log").stat().st_mode & 0o777 == 0o600


def test_a_log_that_cannot_be_written_never_fails_a_call(caplog: pytest.LogCaptureFixture) -> None:
    log = AuditLog(Path("/dev/full"))  # opens, but every write fails with ENOSPC
    with caplog.at_level(logging.ERROR):
        for _ in range(5):
            log.record("SetCordon", "n1", {}, "OK", actor="user:a")
    log.close()
    assert log.failures == 5
    assert len([r for r in caplog.records if "cannot write the audit log" in r.getMessage()]) == 1


def test_a_log_that_cannot_be_opened_stops_the_controller(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="cannot open the audit log"):
        AuditLog(Path("/dev/null/audit.log"))
    result = run_xpud("controller", "--listen", "127.0.0.1:0", "--inference-port", "0", "--state", str(tmp_path),
                      "--audit-log", "/dev/null/audit.log")
    assert result.returncode == 2 and "cannot open the audit log '/dev/null/audit.log'" in result.stderr


async def test_admin_calls_are_recorded_with_actor_and_result(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    ca = pki.init_ca(d)
    server = pki.issue(d, "controller", "controller", "controller", ["localhost", "127.0.0.1"])
    pki.issue(d, "user-root", "root", "admin")
    pki.issue(d, "user-eve", "eve", "viewer")
    running = await start_controller("127.0.0.1:0", 0, tmp_path / "state",
                                     tls=TlsFiles(str(ca.cert), str(server.cert), str(server.key)))

    def creds(stem: str) -> grpc.ChannelCredentials:
        return channel_credentials(TlsFiles(str(ca.cert), str(d / f"{stem}.pem"), str(d / f"{stem}.key")))

    address = f"127.0.0.1:{running.port}"
    try:
        async with grpc.aio.secure_channel(address, creds("user-root")) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)
            await admin.ListNodes(apb.ListNodesRequest())  # a read: not recorded
            model = onnx_bytes(mlp())
            await admin.PushModel(iter([apb.PushModelChunk(name="m", version="1", data=model)]))
            with pytest.raises(grpc.aio.AioRpcError):
                await admin.CreateDeployment(apb.Deployment(name="d", model="nope"))
            made = await admin.CreateToken(apb.CreateTokenRequest(name="ci", role="viewer"))
        async with grpc.aio.secure_channel(address, creds("user-eve")) as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await admin_pb2_grpc.AdminStub(ch).DeleteDeployment(apb.DeleteDeploymentRequest(name="d"))
    finally:
        await running.stop(0)
    path = tmp_path / "state" / "audit.log"
    records = lines(path)
    assert [(r["actor"], r["rpc"], r["target"], r["code"]) for r in records] == [
        ("user:root", "PushModel", "m", "OK"),
        ("user:root", "CreateDeployment", "d", "NOT_FOUND"),
        ("user:root", "CreateToken", "ci", "OK"),
        ("user:eve", "DeleteDeployment", "", "PERMISSION_DENIED"),
    ]
    assert records[0]["args"] == {"name": "m", "version": "1", "bytes": len(model)}
    assert records[1]["args"] == {"name": "d", "model": "nope"} and "unknown model" in records[1]["message"]
    assert records[2]["args"] == {"name": "ci", "role": "viewer"}
    assert made.token not in path.read_text()
    assert "needs the role operator" in records[3]["message"]


async def test_a_plaintext_pool_records_anonymous(tmp_path: Path) -> None:
    log = tmp_path / "elsewhere" / "audit.jsonl"
    running = await start_controller("127.0.0.1:0", 0, tmp_path / "state", audit_log=log)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await admin_pb2_grpc.AdminStub(ch).SetCordon(apb.SetCordonRequest(node="n", cordoned=True))
    finally:
        await running.stop(0)
    assert [(r["actor"], r["rpc"], r["target"], r["code"]) for r in lines(log)] == [
        ("anonymous", "SetCordon", "n", "NOT_FOUND")]
