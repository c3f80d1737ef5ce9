"""/metrics over HTTPS (--metrics-tls) on a real agent and a real controller: the process's own certificate,
and with a CA a scraper must present a certificate signed by it."""

from __future__ import annotations

import re
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers import ChildProcess, free_port, run_xpud, xpud_command


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("metrics") / "pki"
    assert run_xpud("certs", "init", "--dir", str(d)).returncode == 0
    for args in (("--node", "n1", "--hosts", "127.0.0.1"), ("--user", "prometheus", "--role", "viewer")):
        assert run_xpud("certs", "issue", "--dir", str(d), *args).returncode == 0
    return d


def scrape(url: str, pki: Path, client: bool = True) -> str:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if client:
        context.load_cert_chain(pki / "user-prometheus.pem", pki / "user-prometheus.key")
    with urllib.request.urlopen(url, timeout=10, context=context) as reply:
        return str(reply.read().decode())


def refused(url: str, pki: Path, client: bool) -> bool:
    try:
        scrape(url, pki, client)
    except (ssl.SSLError, urllib.error.URLError, ConnectionError):
        return True
    return False


def test_agent_metrics_over_https_need_a_client_certificate(pki: Path) -> None:
    tls = ["--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "node-n1.pem"),
           "--tls-key", str(pki / "node-n1.key")]
    agent = ChildProcess(xpud_command("agent", "--standalone", "--sim", "1", "--metrics-port", "0", "--metrics-tls",
                                      *tls))
    try:
        port = agent.wait_for_line(r"metrics at https://127\.0\.0\.1:(\d+)/metrics", "agent").group(1)
        url = f"https://127.0.0.1:{port}/metrics"
        assert "xpud_device_health_state" in scrape(url, pki)
        assert refused(url, pki, client=False)
        with pytest.raises((urllib.error.URLError, ConnectionError, urllib.error.HTTPError)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    finally:
        agent.kill()


def test_controller_metrics_over_https(pki: Path, tmp_path: Path) -> None:
    tls = ["--tls-ca", str(pki / "ca.pem"), "--tls-cert", str(pki / "controller.pem"),
           "--tls-key", str(pki / "controller.key")]
    proc = ChildProcess(xpud_command("controller", "--listen", f"127.0.0.1:{free_port()}", "--inference-port", "0",
                                     "--state", str(tmp_path / "s"), "--metrics-port", "0", "--metrics-tls", *tls))
    try:
        line = proc.wait_for_line(r"metrics at https://127\.0\.0\.1:(\d+)/metrics", "controller")
        url = f"https://127.0.0.1:{line.group(1)}/metrics"
        assert "xpud_nodes" in scrape(url, pki)
        assert refused(url, pki, client=False)
    finally:
        proc.kill()


@pytest.mark.parametrize("command", ["agent", "controller"])
def test_metrics_tls_without_a_certificate_is_refused(command: str, tmp_path: Path) -> None:
    args = ["--standalone", "--sim", "1", "--metrics-port", "0"] if command == "agent" else [
        "--listen", f"127.0.0.1:{free_port()}", "--state", str(tmp_path / "s"), "--metrics-port", "0"]
    result = run_xpud(command, *args, "--metrics-tls", timeout=60)
    assert result.returncode == 1
    assert re.search(r"--metrics-tls serves /metrics with (this agent's|the controller's) certificate: give "
                     r"--tls-cert and --tls-key", result.stderr), result.stderr
