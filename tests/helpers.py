"""Test helpers: start the real agent process, scrape it, read Prometheus text."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def xpud_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "xpud", *args]


def run_xpud(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(xpud_command(*args), capture_output=True, text=True, timeout=timeout, env=env)


def drain(proc: subprocess.Popen[str], lines: list[str]) -> threading.Thread:
    """Keep reading a child's output so that it never blocks on a full pipe."""

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


class AgentProcess:
    """A real `xpud agent --standalone` process on 127.0.0.1 with an ephemeral metrics port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, standalone: bool = True) -> None:
        mode = ["--standalone"] if standalone else []
        cmd = xpud_command("agent", *mode, "--metrics-host", "127.0.0.1", "--metrics-port", "0", *args)
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
        )
        self.lines: list[str] = []
        self.port = self._wait_for_port()
        grpc = re.search(r"OIP gRPC\) at 127\.0\.0\.1:(\d+)", "".join(self.lines))
        self.grpc_port = int(grpc.group(1)) if grpc else None
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self._reader = drain(self.proc, self.lines)

    def _wait_for_port(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"agent exited early ({self.proc.wait()}):\n{''.join(self.lines)}")
            self.lines.append(line)
            match = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", line)
            if match:
                return int(match.group(1))
        raise AssertionError(f"agent did not report its metrics port:\n{''.join(self.lines)}")

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as resp:
            return resp.read().decode()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return self.proc.returncode, "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def metric_values(text: str, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """All samples of one metric from Prometheus text, keyed by their label set."""
    out = {}
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{(.*?)\}})? (\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1) or ""))
            out[labels] = float(match.group(2))
    return out


def metric(text: str, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    found = [v for k, v in metric_values(text, name).items() if wanted <= k]
    assert len(found) == 1, f"{name}{labels}: expected one sample, found {len(found)}"
    return found[0]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ControllerProcess:
    """A real `xpud controller` on 127.0.0.1; --listen port fixed (agents must find it again after a restart)."""

    def __init__(self, state: str, port: int | None = None, *args: str) -> None:
        self.port = port or free_port()
        cmd = xpud_command("controller", "--listen", f"127.0.0.1:{self.port}", "--inference-port", "0",
                           "--state", state, *args)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"controller exited early ({self.proc.wait()}):\n{''.join(self.lines)}")
            self.lines.append(line)
            match = re.search(r"inference at 127\.0\.0\.1:(\d+)", line)
            if match:
                self.inference_port = int(match.group(1))
                break
        else:
            raise AssertionError("controller did not start:\n" + "".join(self.lines))
        self.address = f"127.0.0.1:{self.port}"
        self.inference_url = f"127.0.0.1:{self.inference_port}"
        self._reader = drain(self.proc, self.lines)

    def admin(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_xpud(*args, "--controller", self.address, timeout=timeout)

    def admin_json(self, *args: str) -> Any:
        import json

        result = self.admin(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=20)
        self._reader.join(timeout=5)
        return self.proc.returncode, "".join(self.lines)


def linked_agent(controller: ControllerProcess, node: str, cache: str, *extra: str) -> AgentProcess:
    return AgentProcess("--controller", controller.address, "--node", node, "--grpc-host", "127.0.0.1",
                        "--grpc-port", "0", "--cache-dir", cache, *extra, standalone=False)


def wait_for(check: Any, timeout: float = 20, interval: float = 0.2, what: str = "condition") -> Any:
    """Poll ``check()`` until it returns something truthy; fail after ``timeout`` seconds (a bound, not a measure)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")
