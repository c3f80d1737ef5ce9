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
from collections.abc import Iterator
from contextlib import contextmanager
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


class ChildProcess:
    """A real xpud process whose output is collected; started, watched for a log line, stopped or killed."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
        )
        self.lines: list[str] = []

    def wait_for_line(self, pattern: str, what: str, timeout: float = 30) -> re.Match[str]:
        """Read output until a line matches ``pattern``; then keep draining it in the background."""
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"{what} exited early ({self.proc.wait()}):\n{''.join(self.lines)}")
            self.lines.append(line)
            match = re.search(pattern, line)
            if match:
                self._reader = drain(self.proc, self.lines)
                return match
        raise AssertionError(f"{what} did not start:\n{''.join(self.lines)}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return self.proc.returncode, "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class AgentProcess(ChildProcess):
    """A real `xpud agent` process on 127.0.0.1 with an ephemeral metrics port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, standalone: bool = True) -> None:
        mode = ["--standalone"] if standalone else []
        super().__init__(xpud_command("agent", *mode, "--metrics-host", "127.0.0.1", "--metrics-port", "0", *args),
                         env)
        self.port = int(self.wait_for_line(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", "agent").group(1))
        grpc = re.search(r"OIP gRPC\) at 127\.0\.0\.1:(\d+)", "".join(self.lines))
        self.grpc_port = int(grpc.group(1)) if grpc else None
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as resp:
            return resp.read().decode()



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


class ControllerProcess(ChildProcess):
    """A real `xpud controller` on 127.0.0.1; --listen port fixed (agents must find it again after a restart);
    /metrics on an ephemeral port unless ``args`` name one."""

    def __init__(self, state: str, port: int | None = None, *args: str) -> None:
        self.port = port or free_port()
        metrics = [] if "--metrics-port" in args else ["--metrics-port", "0"]
        super().__init__(xpud_command("controller", "--listen", f"127.0.0.1:{self.port}", "--inference-port", "0",
                                      "--state", state, *metrics, *args))
        self.inference_port = int(self.wait_for_line(r"inference at 127\.0\.0\.1:(\d+)", "controller").group(1))
        found = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", self.lines[-1])
        self.metrics_port = int(found.group(1)) if found else None
        self.address = f"127.0.0.1:{self.port}"
        self.inference_url = f"127.0.0.1:{self.inference_port}"

    def admin(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_xpud(*args, "--controller", self.address, timeout=timeout)

    def admin_json(self, *args: str) -> Any:
        import json

        result = self.admin(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def deployment(self, name: str) -> dict[str, Any]:
        """The deployment's entry in `xpud deployments --json` ({} while there is none)."""
        found = [d for d in self.admin_json("deployments").get("deployments", []) if d["spec"]["name"] == name]
        return found[0] if found else {}

    def events(self, kind: str | None = None, subject: str | None = None) -> list[dict[str, Any]]:
        """`xpud events --json`, of one kind and subject if given."""
        return [e for e in self.admin_json("events").get("events", [])
                if (kind is None or e["kind"] == kind) and (subject is None or e["subject"] == subject)]

    def scrape(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as resp:
            return resp.read().decode()


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


def expect_status(code: str, *fragments: str) -> Any:
    """A context manager: the tritonclient call inside must fail with gRPC status ``code`` and a message
    holding every fragment."""
    from tritonclient.utils import InferenceServerException

    class Check:
        def __enter__(self) -> Check:
            return self

        def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
            assert kind is not None, f"expected {code}, the call succeeded"
            assert issubclass(kind, InferenceServerException), exc
            assert exc.status() == f"StatusCode.{code}", f"{exc.status()}: {exc.message()}"
            for fragment in fragments:
                assert fragment in exc.message(), exc.message()
            return True

    return Check()


# -- a small real pool for the /metrics tests ------------------------------------------------------------------
IRIS = Path(__file__).resolve().parent.parent / "models" / "iris"
SETOSA = [[5.1, 3.5, 1.4, 0.2]]


def infer(url: str, name: str = "iris") -> int:
    """One iris request (a setosa) through `url`; the label."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        x = grpcclient.InferInput("X", [1, 4], "FP32")
        x.set_data_from_numpy(np.array(SETOSA, np.float32))
        return int(client.infer(name, [x]).as_numpy("label")[0])


def ready_replicas(c: ControllerProcess, name: str) -> float | None:
    """xpud_deployment_replicas_ready of one deployment, as the controller's /metrics shows it."""
    return metric_values(c.scrape(), "xpud_deployment_replicas_ready").get(frozenset({("deployment", name)}))


@contextmanager
def deployed_pool(tmp: Path, replicas: int = 2) -> Iterator[tuple[ControllerProcess, AgentProcess]]:
    """Controller and agent n1 (two sim GPUs), iris deployed with `replicas` replicas, Running; killed after."""
    started: list[AgentProcess | ControllerProcess] = []
    try:
        c = ControllerProcess(str(tmp / "state"))
        started.append(c)
        agent = linked_agent(c, "n1", str(tmp / "n1"), "--sim", "2")
        started.append(agent)
        pushed = c.admin("models", "push", str(IRIS), "--name", "iris")
        assert pushed.returncode == 0, pushed.stderr
        result = c.admin("deploy", "iris", "--model", "iris", "--replicas", str(replicas), "--device", "gpu",
                         "--max-batch", "8")
        assert result.returncode == 0, result.stderr
        wait_for(lambda: ready_replicas(c, "iris") == replicas, what=f"{replicas} ready replicas in /metrics")
        yield c, agent
    finally:
        for proc in reversed(started):
            proc.kill()


def versioned_web(tmp: Path, started: list[Any], models: dict[str, bytes], nodes: tuple[str, ...] = ("n1", "n2"),
                  sim: int = 1, *deploy: str) -> ControllerProcess:
    """A controller and one linked agent per node of `nodes` with `sim` simulated devices each (all appended to
    `started`: the caller kills them), model m pushed in each version of `models` (ONNX bytes), and deployment web
    created on m:1 with `deploy`'s flags (default: 2 replicas, spread). Waits for the nodes, not for web."""
    c = ControllerProcess(str(tmp / "state"))
    started.append(c)
    for node in nodes:
        started.append(linked_agent(c, node, str(tmp / node), "--sim", str(sim)))
    wait_for(lambda: len(c.admin_json("nodes").get("nodes", [])) == len(nodes), what=f"{len(nodes)} node(s)")
    for version, data in models.items():
        path = tmp / f"m{version}.onnx"
        path.write_bytes(data)
        pushed = c.admin("models", "push", str(path), "--name", "m", "--version", version)
        assert pushed.returncode == 0, pushed.stderr
    deployed = c.admin("deploy", "web", "--model", "m:1", *(deploy or ("--replicas", "2", "--strategy", "spread")))
    assert deployed.returncode == 0, deployed.stderr
    return c


def up_process(tmp: Path, *extra: str) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    """`xpud up` on ephemeral loopback ports with its state and cache under `tmp`: the process, the lines it has
    printed so far (filled as it prints) and the thread that reads them."""
    cmd = xpud_command("up", "--listen", "127.0.0.1:0", "--inference-port", "0", "--grpc-port", "0",
                       "--metrics-port", "0", "--controller-metrics-port", "0", "--state", str(tmp / "state"),
                       "--cache-dir", str(tmp / "c"), *extra)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    return proc, lines, drain(proc, lines)
