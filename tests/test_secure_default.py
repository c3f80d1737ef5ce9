"""Secure by default: nothing serves plaintext beyond loopback unless told to (--insecure)."""

from __future__ import annotations

from pathlib import Path

from helpers import AgentProcess, ChildProcess, free_port, run_xpud, xpud_command


def test_a_controller_on_the_network_needs_mtls_or_insecure(tmp_path: Path) -> None:
    refused = run_xpud("controller", "--listen", "0.0.0.0:0", "--inference-port", "0", "--state", str(tmp_path))
    assert refused.returncode == 2
    assert "refusing to listen on 0.0.0.0 without mTLS" in refused.stderr and "xpud certs init" in refused.stderr
    up = run_xpud("up", "--listen", "0.0.0.0:0", "--state", str(tmp_path))
    assert up.returncode == 2 and "refusing to serve plaintext on 0.0.0.0" in up.stderr
    port = free_port()
    c = ChildProcess(xpud_command("controller", "--listen", f"0.0.0.0:{port}", "--inference-port", "0", "--state",
                                  str(tmp_path), "--insecure"))
    try:
        assert c.wait_for_line(r"agents and admin at 0\.0\.0\.0:(\d+) \(plaintext\)", "controller")
    finally:
        c.kill()


def test_an_agent_serves_loopback_unless_secured_or_insecure(tmp_path: Path) -> None:
    refused = run_xpud("agent", "--standalone", "--grpc-host", "0.0.0.0", "--metrics-port", "0",
                       "--model-repo", str(tmp_path))
    assert refused.returncode == 1 and "refusing to serve inference on 0.0.0.0 without TLS" in refused.stderr
    a = AgentProcess("--model-repo", str(tmp_path), "--grpc-port", "0")  # no host given: loopback
    try:
        assert a.grpc_port is not None and any("OIP gRPC) at 127.0.0.1:" in line for line in a.lines)
    finally:
        a.kill()
    b = AgentProcess("--model-repo", str(tmp_path), "--grpc-port", "0", "--grpc-host", "0.0.0.0", "--insecure")
    try:
        assert any("OIP gRPC) at 0.0.0.0:" in line and "(plaintext)" in line for line in b.lines)
    finally:
        b.kill()
