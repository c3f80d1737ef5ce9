"""mTLS on the control plane: certificates made with openssl, a real controller, agents and admin clients."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from helpers import AgentProcess, ControllerProcess, run_xpud, wait_for

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def certificate(d: Path, name: str, ca: str, ext: str, subject: str | None = None) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", subject or f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text(ext + "\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                "-days", "2", "-subj", f"/CN={ca}", cwd=d)
    # a CA of the user's own: identities as xpud reads them, CN = name and OU = role
    certificate(d, "server", "ca", "subjectAltName=IP:127.0.0.1,DNS:localhost", "/CN=controller/OU=controller")
    certificate(d, "agent", "ca", "extendedKeyUsage=clientAuth", "/CN=trusted/OU=agent")
    certificate(d, "ops", "ca", "extendedKeyUsage=clientAuth", "/CN=ops/OU=viewer")
    certificate(d, "no-role", "ca", "extendedKeyUsage=clientAuth", "/CN=old")  # no OU: no role
    # signed by a CA that is not ours
    certificate(d, "rogue", "rogue-ca", "extendedKeyUsage=clientAuth", "/CN=intruder/OU=agent")
    return d


def tls(pki: Path, who: str) -> list[str]:
    return ["--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / f"{who}.pem"),
            "--tls-key", str(pki / f"{who}.key")]


def test_mtls_controller_takes_only_clients_with_our_certificates(pki, tmp_path):
    c = ControllerProcess(str(tmp_path / "state"), None, *tls(pki, "server"))
    agents: list[AgentProcess] = []

    def agent(node: str, who: str) -> None:
        agents.append(AgentProcess("--controller", c.address, "--node", node, "--grpc-host", "127.0.0.1",
                                   "--grpc-port", "0", "--cache-dir", str(tmp_path / node), *tls(pki, who),
                                   standalone=False))

    try:
        assert any("(mTLS, roles checked)" in line for line in c.lines)
        agent("trusted", "agent")
        agent("intruder", "rogue")
        wait_for(lambda: "trusted" in run_xpud("nodes", "--controller", c.address, *tls(pki, "ops")).stdout,
                 what="the trusted agent to join")
        assert "intruder" not in run_xpud("nodes", "--controller", c.address, *tls(pki, "ops")).stdout
        as_agent = run_xpud("nodes", "--controller", c.address, *tls(pki, "agent"))  # an agent's: the link only
        assert as_agent.returncode == 1 and "node:trusted has an agent certificate" in as_agent.stderr
        old = run_xpud("nodes", "--controller", c.address, *tls(pki, "no-role"))
        assert old.returncode == 1 and "lacks a CN (name) or an OU (role)" in old.stderr, old.stderr
        plain = run_xpud("nodes", "--controller", c.address)
        assert plain.returncode == 1 and "cannot reach the controller" in plain.stderr
        no_client_cert = run_xpud("nodes", "--controller", c.address, "--tls-ca", str(pki / "ca.pem"))
        assert no_client_cert.returncode == 1
        not_pem = tmp_path / "ca.txt"
        not_pem.write_text("not a certificate")
        bad = run_xpud("nodes", "--controller", c.address, "--tls-ca", str(not_pem))
        assert bad.returncode == 1 and "is not PEM" in bad.stderr
    finally:
        for a in agents:
            a.kill()
        c.kill()


def test_controller_tls_flags_are_checked(tmp_path, pki):
    result = run_xpud("controller", "--listen", "127.0.0.1:0", "--state", str(tmp_path), "--tls-ca",
                      str(pki / "ca.pem"))
    assert result.returncode == 2 and "TLS needs --tls-cert and --tls-key" in result.stderr
    result = run_xpud("controller", "--listen", "127.0.0.1:0", "--state", str(tmp_path), "--tls-cert",
                      str(pki / "server.csr"), "--tls-key", str(pki / "server.key"))  # a CSR, not a certificate
    assert result.returncode == 1 and "server.csr' holds no BEGIN CERTIFICATE block" in result.stderr, result.stderr


def test_a_tls_only_controller_serves_its_router_over_tls_too(pki, tmp_path):
    c = ControllerProcess(str(tmp_path / "state"), None, "--tls-cert", str(pki / "server.pem"),
                          "--tls-key", str(pki / "server.key"))
    try:
        line = next(x for x in c.lines if "inference at" in x)
        assert "agents and admin at 127.0.0.1" in line and "(TLS)" in line and "(plaintext)" not in line, line
        with grpcclient.InferenceServerClient(c.inference_url, ssl=True,
                                              root_certificates=str(pki / "ca.pem")) as client:
            assert client.is_server_live()
    finally:
        c.kill()
