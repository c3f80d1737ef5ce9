"""Test helpers: start the real agent process, scrape it, read Prometheus text."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def xpud_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "xpud", *args]


def run_xpud(*args: str, timeout: float = 60, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(xpud_command(*args), capture_output=True, text=True, timeout=timeout, env=env)


class AgentProcess:
    """A real `xpud agent --standalone` process on 127.0.0.1 with an ephemeral metrics port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = xpud_command("agent", "--standalone", "--metrics-host", "127.0.0.1", "--metrics-port", "0", *args)
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
        )
        self.lines: list[str] = []
        self.port = self._wait_for_port()
        grpc = re.search(r"OIP gRPC\) at 127\.0\.0\.1:(\d+)", "".join(self.lines))
        self.grpc_port = int(grpc.group(1)) if grpc else None
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"

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
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, "".join(self.lines) + out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


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
