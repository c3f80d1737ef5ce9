"""proto/pki.py: a CA, issued certificates, and the identity read back from them."""

from __future__ import annotations

import stat
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from xpud.proto import pki


def test_ca_and_node_certificate(tmp_path: Path) -> None:
    ca = pki.init_ca(tmp_path)
    node = pki.issue(tmp_path, "node-gpu1", "gpu1", "agent", ["gpu1", "10.0.0.7"])
    assert stat.S_IMODE(ca.key.stat().st_mode) == 0o600 and stat.S_IMODE(node.key.stat().st_mode) == 0o600
    assert pki.read_identity(node.cert.read_bytes()) == ("gpu1", "agent")
    cert = x509.load_pem_x509_certificate(node.cert.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert.read_bytes()))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gpu1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}


def test_user_certificate_is_client_only(tmp_path: Path) -> None:
    pki.init_ca(tmp_path)
    user = pki.issue(tmp_path, "user-alice", "alice", "viewer")
    cert = x509.load_pem_x509_certificate(user.cert.read_bytes())
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert pki.read_identity(user.cert.read_bytes()) == ("alice", "viewer")


def test_refuses_to_overwrite_a_ca_and_needs_one_to_issue(tmp_path: Path) -> None:
    with pytest.raises(pki.PkiError, match="xpud certs init"):
        pki.issue(tmp_path, "user-bob", "bob", "admin")
    pki.init_ca(tmp_path)
    with pytest.raises(pki.PkiError, match="already holds a CA"):
        pki.init_ca(tmp_path)


def test_read_identity_refuses_a_certificate_without_role(tmp_path: Path) -> None:
    ca = pki.init_ca(tmp_path)
    with pytest.raises(pki.PkiError, match="OU"):
        pki.read_identity(ca.cert.read_bytes())


async def test_issued_certificates_carry_mtls_to_a_real_controller(tmp_path: Path) -> None:
    """The controller serves with its certificate; a user certificate of our CA is let in, one of another CA with
    the same name is refused at the handshake."""
    from xpud.controller.server import start_controller
    from xpud.proto import admin_pb2 as apb
    from xpud.proto import admin_pb2_grpc
    from xpud.proto.credentials import TlsFiles, channel_credentials

    ours, other = tmp_path / "ours", tmp_path / "other"
    ca = pki.init_ca(ours)
    server = pki.issue(ours, "controller", "controller", "controller", ["localhost", "127.0.0.1"])
    alice = pki.issue(ours, "user-alice", "alice", "viewer")
    pki.init_ca(other)
    rogue = pki.issue(other, "user-alice", "alice", "admin")  # same name, another CA
    running = await start_controller("127.0.0.1:0", 0, tmp_path / "state",
                                     tls=TlsFiles(str(ca.cert), str(server.cert), str(server.key)))
    try:
        for who, ok in ((alice, True), (rogue, False)):
            creds = channel_credentials(TlsFiles(str(ca.cert), str(who.cert), str(who.key)))
            async with grpc.aio.secure_channel(f"127.0.0.1:{running.port}", creds) as channel:
                call = admin_pb2_grpc.AdminStub(channel).ListNodes(apb.ListNodesRequest(), timeout=10)
                if ok:
                    assert not (await call).nodes
                else:
                    with pytest.raises(grpc.aio.AioRpcError) as info:
                        await call
                    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await running.stop(0)
