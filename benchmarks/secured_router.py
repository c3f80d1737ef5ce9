"""What securing the pool costs on the inference path: the router over plaintext vs over mTLS (client
certificate, roles checked, mTLS again to the agent) vs over its token port, and the agent's endpoint direct.

Side by side in one run: two pools of real processes on loopback (a plaintext one, and a secured one made with
`xpud certs`), each a controller and one linked agent serving the bundled iris model; tritonclient.grpc (sync),
one request in flight, the cases taking turns in chunks of --chunk requests after a warm-up; then
tritonclient.grpc.aio with --concurrency requests in flight for --seconds per case. Prints one JSON object.

Example: python benchmarks/secured_router.py --requests 2000 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

ROOT = Path(__file__).resolve().parent.parent
IRIS = ROOT / "models" / "iris"
XPUD = [sys.executable, "-m", "xpud"]
ROW = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([*XPUD, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, "XPUD_CONFIG_DIR": "/nonexistent"})
        self.lines: list[str] = []

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match
        raise RuntimeError(f"{pattern!r} not seen:\n{''.join(self.lines)}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def xpud(*args: str) -> str:
    done = subprocess.run([*XPUD, *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"xpud {' '.join(args)}: {done.stderr}")
    return done.stdout


@contextlib.contextmanager
def pool(work: Path, secured: bool) -> Iterator[dict[str, Any]]:
    """A controller and one agent with iris deployed; yields the addresses (and certificate files)."""
    pki = work / "pki"
    port, token_port = free_port(), free_port()
    tls: list[str] = []
    node_tls: list[str] = []
    admin: list[str] = []
    if secured:
        xpud("certs", "init", "--dir", str(pki))
        xpud("certs", "issue", "--dir", str(pki), "--node", "n1", "--hosts", "127.0.0.1")
        xpud("certs", "issue", "--dir", str(pki), "--user", "root", "--role", "admin")
        xpud("certs", "issue", "--dir", str(pki), "--user", "app", "--role", "inference")
        ca = ["--tls-ca", str(pki / "ca.pem")]
        tls = [*ca, "--tls-cert", str(pki / "controller.pem"), "--tls-key", str(pki / "controller.key"),
               "--inference-token-port", str(token_port)]
        node_tls = [*ca, "--tls-cert", str(pki / "node-n1.pem"), "--tls-key", str(pki / "node-n1.key")]
        admin = [*ca, "--tls-cert", str(pki / "user-root.pem"), "--tls-key", str(pki / "user-root.key")]
    controller = Proc("controller", "--listen", f"127.0.0.1:{port}", "--inference-port", "0", "--metrics-port",
                      "0", "--state", str(work / "state"), *tls)
    agent = None
    try:
        inference = int(controller.wait_for(r"inference at 127\.0\.0\.1:(\d+)").group(1))
        agent = Proc("agent", "--controller", f"127.0.0.1:{port}", "--node", "n1", "--grpc-host", "127.0.0.1",
                     "--grpc-port", "0", "--metrics-port", "0", "--cache-dir", str(work / "n1"), *node_tls)
        grpc_port = int(agent.wait_for(r"OIP gRPC\) at 127\.0\.0\.1:(\d+)").group(1))
        target = ["--controller", f"127.0.0.1:{port}", *admin]
        xpud("models", "push", str(IRIS), "--name", "iris", *target)
        xpud("deploy", "iris", "--model", "iris", *target)
        token = xpud("tokens", "create", "--name", "bench", "--role", "inference", *target).strip() if secured \
            else ""
        deadline = time.monotonic() + 120
        while '"Running"' not in xpud("deployments", "--json", *target):
            if time.monotonic() > deadline:
                raise RuntimeError("iris did not get Running")
            time.sleep(0.2)
        yield {"router": f"127.0.0.1:{inference}", "agent": f"127.0.0.1:{grpc_port}",
               "tokens": f"127.0.0.1:{token_port}", "pki": pki, "token": token}
    finally:
        if agent is not None:
            agent.kill()
        controller.kill()


def client_options(case: str, p: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(url, tritonclient keyword arguments, headers) for one case."""
    pki = p["pki"]
    if case in ("router, plaintext", "agent direct, plaintext"):
        return p["router" if case.startswith("router") else "agent"], {}, {}
    tls: dict[str, Any] = {"ssl": True, "root_certificates": str(pki / "ca.pem")}
    if case == "router, token over TLS":
        return p["tokens"], tls, {"authorization": f"Bearer {p['token']}"}
    tls |= {"private_key": str(pki / "user-app.key"), "certificate_chain": str(pki / "user-app.pem")}
    if case == "agent direct, mTLS":
        return p["agent"], {**tls, "channel_args": [("grpc.ssl_target_name_override", "n1")]}, {}
    return p["router"], tls, {}


def latencies(call: Callable[[], None], n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in seconds)
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 3), "p99_ms": round(ms[int(len(ms) * 0.99) - 1], 3),
            "mean_ms": round(statistics.fmean(ms), 3)}


async def throughput(url: str, kwargs: dict[str, Any], headers: dict[str, str], concurrency: int,
                     seconds: float) -> dict[str, float]:
    async with aioclient.InferenceServerClient(url, **kwargs) as c:
        x = aioclient.InferInput("X", [1, 4], "FP32")
        x.set_data_from_numpy(ROW)
        done = 0
        stop = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop:
                await c.infer("iris", [x], headers=headers)
                done += 1

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {"requests_per_s": round(done / (time.monotonic() - start), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="latency requests per case")
    parser.add_argument("--chunk", type=int, default=50, help="requests per case before the next takes a turn")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per throughput case")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    cases = ["agent direct, plaintext", "router, plaintext", "agent direct, mTLS", "router, mTLS",
             "router, token over TLS"]
    with tempfile.TemporaryDirectory() as tmp, pool(Path(tmp) / "plain", False) as plain, \
            pool(Path(tmp) / "secured", True) as secured:
        clients = {}
        for case in cases:
            url, kwargs, headers = client_options(case, plain if "plaintext" in case else secured)
            c = grpcclient.InferenceServerClient(url, **kwargs)
            x = grpcclient.InferInput("X", [1, 4], "FP32")
            x.set_data_from_numpy(ROW)
            clients[case] = (c, (lambda c=c, x=x, headers=headers: c.infer("iris", [x], headers=headers)),
                             (url, kwargs, headers))
            latencies(clients[case][1], args.warmup)
        samples: dict[str, list[float]] = {case: [] for case in cases}
        while any(len(v) < args.requests for v in samples.values()):
            for case in cases:
                samples[case] += latencies(clients[case][1], min(args.chunk, args.requests - len(samples[case])))
        results: dict[str, Any] = {case: {"c1": summary(samples[case])} for case in cases}
        for case in cases:
            url, kwargs, headers = clients[case][2]
            results[case][f"c{args.concurrency}"] = asyncio.run(
                throughput(url, kwargs, headers, args.concurrency, args.seconds))
            clients[case][0].close()
    print(json.dumps({"benchmark": "secured_router", "python": platform.python_version(), "cpus": os.cpu_count(),
                      "requests": args.requests, "concurrency": args.concurrency, "results": results}, indent=2))


if __name__ == "__main__":
    main()
