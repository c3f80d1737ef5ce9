"""Identities and roles on a secured controller: each role on each RPC group, node impersonation, forged and
foreign certificates, tokens (created, used, revoked, kept across a restart), and the `xpud certs`/`tokens` CLI."""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helpers import ControllerProcess, free_port, run_xpud, wait_for
from xpud.controller.access import RULES
from xpud.controller.server import RunningController, start_controller
from xpud.proto import admin_pb2 as apb
from xpud.proto import admin_pb2_grpc, link_pb2, link_pb2_grpc, pki
from xpud.proto.auth import allows
from xpud.proto.credentials import TlsFiles, channel_credentials

OK, DENIED, UNAUTH = grpc.StatusCode.OK, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED


def test_every_method_of_the_controller_has_a_rule() -> None:
    for service in (apb.DESCRIPTOR.services_by_name["Admin"], link_pb2.DESCRIPTOR.services_by_name["AgentLink"]):
        for method in service.methods:
            assert f"/{service.full_name}/{method.name}" in RULES, f"{method.name} has no role in access.RULES"


def test_roles_include_the_ones_below_and_agent_is_apart() -> None:
    assert allows("admin", "viewer") and allows("operator", "operator") and not allows("viewer", "operator")
    assert not allows("agent", "viewer") and not allows("admin", "agent") and allows("agent", "agent")
    assert not allows("inference", "viewer") and not allows("controller", "viewer")


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    d = tmp_path / "pki"
    pki.init_ca(d)
    pki.issue(d, "controller", "controller", "controller", ["localhost", "127.0.0.1"])
    return d


def _creds(ca: Path, stem: str | None) -> grpc.ChannelCredentials:
    if stem is None:
        return channel_credentials(TlsFiles(str(ca / "ca.pem")))
    return channel_credentials(TlsFiles(str(ca / "ca.pem"), str(ca / f"{stem}.pem"), str(ca / f"{stem}.key")))


async def _start(ca: Path, state: Path, token_port: bool = False) -> RunningController:
    return await start_controller("127.0.0.1:0", 0, state, tls=TlsFiles(
        str(ca / "ca.pem"), str(ca / "controller.pem"), str(ca / "controller.key")),
        token_listen="127.0.0.1:0" if token_port else None)


async def _code(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return OK


# one call per RPC group; an allowed call may still fail for its own reasons (NOT_FOUND for an unknown node)
GROUPS = {
    "viewer": lambda s, md: s.ListNodes(apb.ListNodesRequest(), metadata=md, timeout=10),
    "operator": lambda s, md: s.SetCordon(apb.SetCordonRequest(node="nowhere", cordoned=True), metadata=md,
                                          timeout=10),
    "admin": lambda s, md: s.ListTokens(apb.ListTokensRequest(), metadata=md, timeout=10),
}
EXPECTED = {  # role -> the outcome per group (viewer, operator, admin)
    "inference": (DENIED, DENIED, DENIED),
    "viewer": (OK, DENIED, DENIED),
    "operator": (OK, grpc.StatusCode.NOT_FOUND, DENIED),
    "admin": (OK, grpc.StatusCode.NOT_FOUND, OK),
    "agent": (DENIED, DENIED, DENIED),
}


async def test_each_role_on_each_rpc_group(ca: Path, tmp_path: Path) -> None:
    for role in EXPECTED:
        pki.issue(ca, f"user-{role}", f"u-{role}", role)
    running = await _start(ca, tmp_path / "state")
    try:
        for role, expected in EXPECTED.items():
            async with grpc.aio.secure_channel(f"127.0.0.1:{running.port}", _creds(ca, f"user-{role}")) as ch:
                stub = admin_pb2_grpc.AdminStub(ch)
                got = tuple([await _code(GROUPS[g](stub, None)) for g in ("viewer", "operator", "admin")])
                assert got == expected, role
        # the reason names the caller, its role and what the call needs
        async with grpc.aio.secure_channel(f"127.0.0.1:{running.port}", _creds(ca, "user-viewer")) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin_pb2_grpc.AdminStub(ch).DeleteDeployment(apb.DeleteDeploymentRequest(name="x"))
            assert info.value.details() == ("user:u-viewer has the role viewer; Admin/DeleteDeployment needs the "
                                            "role operator (or admin)")
    finally:
        await running.stop(0)


def _forged(ca: Path, out: Path) -> None:
    """A certificate naming our CA as issuer, signed by another key: what a forger without ca.key can make."""
    real = x509.load_pem_x509_certificate((ca / "ca.pem").read_bytes())
    key, signer = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, "mallory"), x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME,
                                                                                "admin")]))
            .issuer_name(real.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .sign(signer, hashes.SHA256()))
    (out / "user-mallory.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "user-mallory.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))


async def test_forged_certificate_and_no_certificate_are_refused(ca: Path, tmp_path: Path) -> None:
    _forged(ca, ca)
    running = await _start(ca, tmp_path / "state", token_port=True)
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{running.port}", _creds(ca, "user-mallory")) as ch:
            assert await _code(GROUPS["viewer"](admin_pb2_grpc.AdminStub(ch), None)) == grpc.StatusCode.UNAVAILABLE
        # the token port asks for no certificate: a call without a token is refused and says what is missing
        async with grpc.aio.secure_channel(f"127.0.0.1:{running.token_port}", _creds(ca, None)) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await GROUPS["viewer"](admin_pb2_grpc.AdminStub(ch), None)
            assert info.value.code() == UNAUTH and "needs credentials" in info.value.details()
            bad = (("authorization", "Basic abc"),)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await GROUPS["viewer"](admin_pb2_grpc.AdminStub(ch), bad)
            assert info.value.code() == UNAUTH and "'Bearer TOKEN'" in info.value.details()
    finally:
        await running.stop(0)


async def _hello(channel: grpc.aio.Channel, node: str) -> tuple[grpc.StatusCode, str]:
    call = link_pb2_grpc.AgentLinkStub(channel).Connect(timeout=10)
    await call.write(link_pb2.AgentMessage(hello=link_pb2.Hello(node=node, agent_version="test")))
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    call.cancel()
    return OK, first.WhichOneof("kind")


async def test_an_agent_certificate_names_its_node(ca: Path, tmp_path: Path) -> None:
    pki.issue(ca, "node-gpu1", "gpu1", "agent", ["gpu1"])
    pki.issue(ca, "user-ops", "ops", "viewer")
    running = await _start(ca, tmp_path / "state")
    try:
        address = f"127.0.0.1:{running.port}"
        async with grpc.aio.secure_channel(address, _creds(ca, "node-gpu1")) as ch:
            code, details = await _hello(ch, "gpu2")  # gpu1's certificate, another node's name
            assert code == DENIED and "cannot" not in details and "claimed the node name 'gpu2'" in details
            assert await _hello(ch, "gpu1") == (OK, "welcome")
            fetch = link_pb2_grpc.AgentLinkStub(ch).FetchArtifact(link_pb2.FetchArtifactRequest(digest="0" * 64))
            assert await _code(fetch.read()) == grpc.StatusCode.NOT_FOUND  # allowed, no such artifact
        async with grpc.aio.secure_channel(address, _creds(ca, "user-ops")) as ch:
            assert (await _hello(ch, "ops"))[0] == DENIED  # a user certificate cannot join as a node
            events = (await admin_pb2_grpc.AdminStub(ch).ListEvents(apb.ListEventsRequest())).events
            refused = [e for e in events if e.kind == "NodeRefused"]
            assert [(e.subject, e.actor) for e in refused] == [("gpu2", "node:gpu1")]
    finally:
        await running.stop(0)


async def test_tokens_are_used_revoked_and_kept_across_a_restart(ca: Path, tmp_path: Path) -> None:
    pki.issue(ca, "user-root", "root", "admin")
    state = tmp_path / "state"
    running = await _start(ca, state, token_port=True)
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{running.port}", _creds(ca, "user-root")) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)
            made = await admin.CreateToken(apb.CreateTokenRequest(name="ci", role="operator"))
            ro = await admin.CreateToken(apb.CreateTokenRequest(name="dash", role="viewer"))
            assert made.token.startswith(f"xpud_{made.info.id}_") and made.info.creator == "user:root"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin.CreateToken(apb.CreateTokenRequest(name="ci", role="viewer"))
            assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await admin.CreateToken(apb.CreateTokenRequest(name="x", role="root"))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not one of" in info.value.details()
        token_addr = f"127.0.0.1:{running.token_port}"

        async def as_token(token: str) -> tuple[grpc.StatusCode, ...]:
            md = (("authorization", f"Bearer {token}"),)
            async with grpc.aio.secure_channel(token_addr, _creds(ca, None)) as ch:
                stub = admin_pb2_grpc.AdminStub(ch)
                return tuple([await _code(GROUPS[g](stub, md)) for g in ("viewer", "operator", "admin")])

        assert await as_token(made.token) == (OK, grpc.StatusCode.NOT_FOUND, DENIED)
        assert await as_token(made.token) == (OK, grpc.StatusCode.NOT_FOUND, DENIED)  # now from the cache
        assert await as_token(ro.token) == (OK, DENIED, DENIED)
        assert await as_token(made.token[:-2] + "xx") == (UNAUTH,) * 3  # mistyped secret
        assert await as_token("nonsense") == (UNAUTH,) * 3
    finally:
        await running.stop(0)
    running = await _start(ca, state, token_port=True)  # a restart keeps the tokens (hashed in the store)
    try:
        token_addr = f"127.0.0.1:{running.token_port}"
        assert await as_token(made.token) == (OK, grpc.StatusCode.NOT_FOUND, DENIED)
        async with grpc.aio.secure_channel(f"127.0.0.1:{running.port}", _creds(ca, "user-root")) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)
            listed = await admin.ListTokens(apb.ListTokensRequest())
            assert [(t.name, t.role) for t in listed.tokens] == [("ci", "operator"), ("dash", "viewer")]
            await admin.RevokeToken(apb.RevokeTokenRequest(name="ci"))
            assert await as_token(made.token) == (UNAUTH,) * 3  # revoked: refused at once, cache or not
            assert await as_token(ro.token) == (OK, DENIED, DENIED)
            events = (await admin.ListEvents(apb.ListEventsRequest())).events
            assert [(e.kind, e.subject, e.actor) for e in events if e.kind.startswith("Token")] == [
                ("TokenCreated", "ci", "user:root"), ("TokenCreated", "dash", "user:root"),
                ("TokenRevoked", "ci", "user:root")]
        assert not any(made.token in p.read_text(errors="ignore") for p in state.iterdir() if p.is_file())
    finally:
        await running.stop(0)


def test_certs_and_tokens_from_the_command_line(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    init = run_xpud("certs", "init", "--dir", str(d))
    assert init.returncode == 0 and "xpud controller --tls-ca" in init.stdout, init.stderr
    assert run_xpud("certs", "issue", "--dir", str(d), "--user", "root", "--role", "admin").returncode == 0
    no_role = run_xpud("certs", "issue", "--dir", str(d), "--user", "bob")
    assert no_role.returncode == 2 and "needs --role" in no_role.stderr
    again = run_xpud("certs", "init", "--dir", str(d))
    assert again.returncode == 2 and "already holds a CA" in again.stderr
    token_port = free_port()
    c = ControllerProcess(str(tmp_path / "state"), None, "--tls-ca", str(d / "ca.pem"), "--tls-cert",
                          str(d / "controller.pem"), "--tls-key", str(d / "controller.key"), "--token-listen",
                          f"127.0.0.1:{token_port}")
    root = ["--controller", c.address, "--tls-ca", str(d / "ca.pem"), "--tls-cert", str(d / "user-root.pem"),
            "--tls-key", str(d / "user-root.key")]
    try:
        made = run_xpud("tokens", "create", "--name", "ci", "--role", "viewer", *root)
        assert made.returncode == 0 and "shown this once" in made.stderr, made.stderr
        token = made.stdout.strip()
        by_token = ["--controller", f"127.0.0.1:{token_port}", "--tls-ca", str(d / "ca.pem")]
        assert run_xpud("nodes", *by_token, "--token", token).returncode == 0
        env_token = run_xpud("nodes", *by_token, env={**__import__("os").environ, "XPUD_TOKEN": token})
        assert env_token.returncode == 0, env_token.stderr
        denied = run_xpud("undeploy", "x", *by_token, "--token", token)
        assert denied.returncode == 1 and "token:ci has the role viewer" in denied.stderr
        plaintext = run_xpud("nodes", "--controller", f"127.0.0.1:{token_port}", "--token", token)
        assert plaintext.returncode == 1 and "sent over TLS only" in plaintext.stderr
        listed = run_xpud("tokens", "list", *root)
        assert "ci" in listed.stdout and "viewer" in listed.stdout and token not in listed.stdout
        assert run_xpud("tokens", "revoke", "ci", *root).returncode == 0
        revoked = run_xpud("nodes", *by_token, "--token", token)
        assert revoked.returncode == 1 and "revoked or mistyped" in revoked.stderr
        usage = run_xpud("tokens", "create", "--name", "x", *root)
        assert usage.returncode == 2 and "needs --name NAME and --role" in usage.stderr
        events = run_xpud("events", *root)
        assert wait_for(lambda: "user:root" in run_xpud("events", *root).stdout, what="the actor in events"), events
    finally:
        c.kill()


def test_token_port_needs_a_secured_controller(tmp_path: Path) -> None:
    async def start() -> None:
        await start_controller("127.0.0.1:0", 0, tmp_path / "s", token_listen="127.0.0.1:0")

    from xpud.controller.server import StartupError

    with pytest.raises(StartupError, match="--token-listen and --inference-token-port need a secured controller"):
        asyncio.run(start())
