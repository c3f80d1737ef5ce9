"""systemd integration: the unit file verifies, and the real agent speaks sd_notify (READY, WATCHDOG, STOPPING)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xpud.agent.sdnotify import SystemdNotifier

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "xpud-agent.service"


def test_unit_declares_notify_watchdog_and_hardening():
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "NoNewPrivileges=yes", "ProtectSystem=strict", "DynamicUser=yes",
                 "Restart=on-failure", "DevicePolicy=closed"):
        assert line in text


def test_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    xpud = Path(sys.executable).with_name("xpud")
    unit = tmp_path / "xpud-agent.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/xpud", str(xpud)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "xpud-agent.service" not in result.stderr, result.stderr


def test_notifier_is_silent_outside_systemd():
    notifier = SystemdNotifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.notify("READY=1") is False
    assert SystemdNotifier({"WATCHDOG_USEC": "4000000", "NOTIFY_SOCKET": "/x"}).watchdog_interval == 2.0
    assert SystemdNotifier({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_agent_sends_ready_watchdog_and_stopping(start_agent, tmp_path):
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(10)
        agent = start_agent("--sim", "1", "--interval", "0.1", env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
        messages: list[str] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and sum("WATCHDOG=1" in m for m in messages) < 2:
            messages.append(sock.recv(4096).decode())
        assert any("READY=1" in m for m in messages)
        assert sum("WATCHDOG=1" in m for m in messages) >= 2
        assert any(m.startswith("STATUS=") for m in messages)
        code, out = agent.stop(signal.SIGTERM)
        assert code == 0, out
        rest = []
        sock.settimeout(0.5)
        try:
            while True:
                rest.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        assert any("STOPPING=1" in m for m in rest)


def test_controller_unit_verifies_and_the_controller_notifies_systemd(tmp_path):
    import subprocess as sp

    from helpers import free_port, xpud_command

    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        unit = tmp_path / "xpud-controller.service"
        xpud = Path(sys.executable).with_name("xpud")
        unit.write_text((UNIT.parent / "xpud-controller.service").read_text().replace("/usr/local/bin/xpud", str(xpud)))
        result = sp.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "xpud-controller.service" not in result.stderr, result.stderr
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(20)
        env = {**os.environ, "NOTIFY_SOCKET": path, "STATE_DIRECTORY": str(tmp_path / "st")}
        proc = sp.Popen(xpud_command("controller", "--listen", f"127.0.0.1:{free_port()}", "--inference-port", "0",
                                     "--metrics-port", "0"),
                        env=env, stdout=sp.DEVNULL, stderr=sp.DEVNULL)
        try:
            assert "READY=1" in sock.recv(4096).decode()
            assert (tmp_path / "st" / "state.db").exists()  # systemd's StateDirectory is the default --state
            proc.send_signal(signal.SIGTERM)
            assert "STOPPING=1" in sock.recv(4096).decode()
            assert proc.wait(timeout=20) == 0
        finally:
            proc.kill()
