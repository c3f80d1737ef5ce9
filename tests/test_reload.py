"""SIGHUP on real processes: what can change while serving is applied, the rest is named as needing a restart,
and a refused file leaves the running configuration as it was."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
from pathlib import Path

import tritonclient.grpc as grpcclient
from cryptography import x509

from helpers import (
    AgentProcess,
    ChildProcess,
    ControllerProcess,
    free_port,
    linked_agent,
    run_xpud,
    wait_for,
    xpud_command,
)

ROOT = Path(__file__).resolve().parent.parent
IRIS = ROOT / "models" / "iris"


def logged(proc: ChildProcess, text: str, after: int = 0) -> bool:
    return any(text in line for line in proc.lines[after:])


def hangup(proc: ChildProcess, text: str) -> None:
    """SIGHUP, then wait for the line that says how the reload went."""
    before = len(proc.lines)
    proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: logged(proc, text, before), timeout=30, what=f"{text!r} after SIGHUP")


def test_controller_reload_applies_lease_and_reopens_the_audit_log(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "controller.toml"
    state = tmp_path / "state"

    def write(lease: float, listen_port: int = port) -> None:
        config.write_text(f'[controller]\nlisten = "127.0.0.1:{listen_port}"\ninference_port = 0\n'
                          f'state = "{state}"\nlease = {lease}\n')

    write(3)
    proc = ChildProcess(xpud_command("controller", "--config", str(config)))
    try:
        proc.wait_for_line(r"agents and admin at", "controller")
        address = f"127.0.0.1:{port}"
        write(6, free_port())
        hangup(proc, "configuration reloaded")
        assert logged(proc, "lease"), proc.lines[-3:]
        assert logged(proc, "--listen changed: restart the controller"), proc.lines[-3:]
        # logrotate's way: move the file, SIGHUP, and the next record lands in a new one
        audit = state / "audit.log"
        assert run_xpud("undeploy", "nothing", "--controller", address).returncode != 0
        audit.rename(tmp_path / "audit.log.old")
        hangup(proc, "configuration reloaded")
        assert run_xpud("undeploy", "nothing-again", "--controller", address).returncode != 0
        assert "nothing-again" in audit.read_text()
        assert "nothing-again" not in (tmp_path / "audit.log.old").read_text()
        # a broken file is refused; the controller goes on serving as it was
        config.write_text("[controller\n")
        hangup(proc, "reload refused, the running configuration stays")
        assert run_xpud("nodes", "--controller", address).returncode == 0
    finally:
        proc.kill()


def test_standalone_agent_reload_rescans_its_repository_and_sets_the_log_level(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(IRIS, repo / "iris")
    config = tmp_path / "agent.toml"
    config.write_text(f'[agent]\nlog_level = "info"\n[serving]\nmodel_repo = "{repo}"\ngrpc_port = 0\n')
    agent = AgentProcess("--config", str(config))
    try:
        with grpcclient.InferenceServerClient(agent.grpc_url) as client:
            assert client.is_model_ready("iris")
            shutil.copytree(IRIS, repo / "iris2")
            config.write_text(f'[agent]\nlog_level = "debug"\n[serving]\nmodel_repo = "{repo}"\ngrpc_port = 0\n'
                              "[health]\nhold_s = 5.0\n")
            hangup(agent, "configuration reloaded")
            assert logged(agent, "log level debug") and logged(agent, "(1 loaded, 0 unloaded)"), agent.lines[-3:]
            assert logged(agent, "health thresholds"), agent.lines[-3:]
            assert client.is_model_ready("iris2")
            shutil.rmtree(repo / "iris")
            config.write_text(f'[agent]\nlog_level = "debug"\nnode = "other"\n[serving]\nmodel_repo = "{repo}"\n'
                              "grpc_port = 0\n[health]\nhold_s = 5.0\n")
            hangup(agent, "configuration reloaded")
            assert logged(agent, "node changed: restart the agent"), agent.lines[-3:]
            assert not client.is_model_ready("iris") and client.is_model_ready("iris2")
            config.write_text(f'[serving]\nmodel_repo = "{tmp_path / "gone"}"\n')
            hangup(agent, "reload refused, the running configuration stays")
            assert client.is_model_ready("iris2")
    finally:
        agent.kill()


def served_serial(port: int, pki: Path) -> int:
    """The serial of the certificate the agent presents in a new handshake (with a client certificate)."""
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.load_cert_chain(pki / "user-app.pem", pki / "user-app.key")
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_agent_reload_serves_a_renewed_certificate_and_refuses_a_broken_one(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    assert run_xpud("certs", "init", "--dir", str(pki)).returncode == 0
    for args in (("--node", "n1", "--hosts", "127.0.0.1"), ("--user", "app", "--role", "inference")):
        assert run_xpud("certs", "issue", "--dir", str(pki), *args).returncode == 0
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(pki / "node-n1.pem", live / "n1.pem")
    shutil.copy(pki / "node-n1.key", live / "n1.key")
    repo = tmp_path / "repo"
    shutil.copytree(IRIS, repo / "iris")
    agent = AgentProcess("--model-repo", str(repo), "--grpc-host", "127.0.0.1", "--grpc-port", "0",
                         "--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(live / "n1.pem"),
                         "--tls-key", str(live / "n1.key"))
    try:
        first = served_serial(agent.grpc_port or 0, pki)
        assert run_xpud("certs", "issue", "--dir", str(pki), "--node", "n1-renewed", "--hosts",
                        "127.0.0.1").returncode == 0
        shutil.copy(pki / "node-n1-renewed.pem", live / "n1.pem")
        shutil.copy(pki / "node-n1-renewed.key", live / "n1.key")
        hangup(agent, "configuration reloaded")
        assert logged(agent, "TLS certificates"), agent.lines[-3:]
        renewed = served_serial(agent.grpc_port or 0, pki)
        assert renewed != first
        (live / "n1.pem").write_text("not a certificate\n")
        hangup(agent, "reload refused, the running configuration stays")
        assert logged(agent, "is not PEM"), agent.lines[-3:]
        assert served_serial(agent.grpc_port or 0, pki) == renewed
    finally:
        agent.kill()


def test_linked_agent_reload_sends_its_new_labels(tmp_path: Path) -> None:
    c = ControllerProcess(str(tmp_path / "state"))
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nlabels = { rack = "r1" }\nzone = "z1"\n')
    agent = None
    try:
        agent = linked_agent(c, "n1", str(tmp_path / "n1"), "--config", str(config))

        def labels() -> tuple[dict[str, str], str] | None:
            nodes = c.admin_json("nodes").get("nodes", [])
            return (nodes[0].get("labels", {}), nodes[0].get("zone", "")) if nodes else None

        assert wait_for(labels, what="n1 listed") == ({"rack": "r1"}, "z1")
        config.write_text('[agent]\nlabels = { rack = "r2", gpu = "a100" }\nzone = "z2"\n')
        hangup(agent, "configuration reloaded")
        wait_for(lambda: labels() == ({"rack": "r2", "gpu": "a100"}, "z2"), what="the new labels on the controller")
    finally:
        if agent is not None:
            agent.kill()
        c.kill()


def test_controller_reload_serves_a_renewed_certificate_on_every_tls_port(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    assert run_xpud("certs", "init", "--dir", str(pki)).returncode == 0
    assert run_xpud("certs", "issue", "--dir", str(pki), "--user", "app", "--role", "inference").returncode == 0
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(pki / "controller.pem", live / "c.pem")
    shutil.copy(pki / "controller.key", live / "c.key")
    token_port = free_port()
    c = ControllerProcess(str(tmp_path / "state"), None, "--tls-ca", str(pki / "ca.pem"), "--tls-cert",
                          str(live / "c.pem"), "--tls-key", str(live / "c.key"), "--token-listen",
                          f"127.0.0.1:{token_port}")
    try:
        ports = (c.port, c.inference_port, token_port)
        first = [served_serial(p, pki) for p in ports]
        assert run_xpud("certs", "issue", "--dir", str(pki), "--controller", "renewed").returncode == 0
        shutil.copy(pki / "controller-renewed.pem", live / "c.pem")
        shutil.copy(pki / "controller-renewed.key", live / "c.key")
        hangup(c, "configuration reloaded")
        assert logged(c, "TLS certificates"), c.lines[-3:]
        renewed = [served_serial(p, pki) for p in ports]
        assert all(a != b for a, b in zip(first, renewed, strict=True)) and len(set(renewed)) == 1
        (live / "c.key").write_text("garbage\n")
        hangup(c, "reload refused, the running configuration stays")
        assert [served_serial(p, pki) for p in ports] == renewed
    finally:
        c.kill()
