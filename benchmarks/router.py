"""What the router costs and what load-aware routing buys: side by side in one run, on real processes over loopback.

1. Overhead: a controller and one linked agent serving the bundled iris model (CPU); the agent's endpoint direct vs
   through the router, tritonclient.grpc (sync) at c=1 (the two taking turns in chunks of --chunk requests after a
   warm-up: p50/p99), then tritonclient.grpc.aio at c=--concurrency for --seconds per case, the cases taking turns
   --rounds times (throughput: the median round).
2. One slow replica: two pools, each a controller and two linked agents with one simulated GPU each, iris on both
   (--strategy spread); one agent's GPU holds every run --delay-ms longer (the sim's inference_latency). One
   controller routes round robin, the other p2c + EWMA (the default); c=--concurrency for --seconds per case, taking
   turns --rounds times: throughput, and p50/p99 of every request.

Prints one JSON object. Example: python benchmarks/router.py --requests 2000 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from secured_router import IRIS, ROW, Proc, free_port, latencies, summary, xpud


def wait_running(target: list[str], ready: int) -> None:
    deadline = time.monotonic() + 120
    while True:
        deployments = json.loads(xpud("deployments", "--json", *target)).get("deployments", [])
        if any(d.get("phase") == "Running" and d.get("ready", 0) == ready for d in deployments):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"iris did not get Running with {ready} ready")
        time.sleep(0.2)


@contextlib.contextmanager
def pool(work: Path, *, policy: str = "p2c", slow_ms: float | None = None) -> Iterator[dict[str, Any]]:
    """A controller and its agents with iris deployed: one CPU agent (slow_ms None), else two agents with one sim
    GPU each, the second's runs `slow_ms` slower. Yields the router's and the agents' addresses."""
    port = free_port()
    controller = Proc("controller", "--listen", f"127.0.0.1:{port}", "--inference-port", "0", "--metrics-port",
                      "0", "--state", str(work / "state"), "--routing-policy", policy)
    agents: list[Proc] = []
    try:
        inference = int(controller.wait_for(r"inference at 127\.0\.0\.1:(\d+)").group(1))
        sims: list[list[str]] = [[]]
        if slow_ms is not None:
            sims = []
            for i, delay in enumerate((0.0, slow_ms)):
                scenario = work / f"sim{i}.json"
                faults = [{"kind": "inference_latency", "device": 0, "delay_ms": delay}] if delay else []
                scenario.write_text(json.dumps({"count": 1, "load": {"shape": "constant", "value": 0.2},
                                                "faults": faults}))
                sims.append(["--sim", "1", "--scenario", str(scenario)])
        addresses = []
        for i, sim in enumerate(sims):
            agent = Proc("agent", "--controller", f"127.0.0.1:{port}", "--node", f"n{i + 1}", "--grpc-host",
                         "127.0.0.1", "--grpc-port", "0", "--metrics-port", "0", "--cache-dir",
                         str(work / f"n{i + 1}"), *sim)
            agents.append(agent)
            grpc_port = agent.wait_for(r"OIP gRPC\) at 127\.0\.0\.1:(\d+)").group(1)
            addresses.append(f"127.0.0.1:{grpc_port}")
        target = ["--controller", f"127.0.0.1:{port}"]
        xpud("models", "push", str(IRIS), "--name", "iris", *target)
        placement = ["--replicas", str(len(sims)), "--device", "gpu", "--strategy", "spread"] if slow_ms else []
        xpud("deploy", "iris", "--model", "iris", *placement, *target)
        wait_running(target, len(sims))
        yield {"router": f"127.0.0.1:{inference}", "agents": addresses}
    finally:
        for agent in agents:
            agent.kill()
        controller.kill()


async def load(url: str, concurrency: int, seconds: float) -> tuple[float, list[float]]:
    """(requests per second, each request's latency) with `concurrency` requests in flight for `seconds`."""
    async with aioclient.InferenceServerClient(url) as c:
        x = aioclient.InferInput("X", [1, 4], "FP32")
        x.set_data_from_numpy(ROW)
        for _ in range(20):  # the channel connected, the replicas' estimates fed
            await c.infer("iris", [x])
        each: list[float] = []
        stop = time.monotonic() + seconds

        async def worker() -> None:
            while time.monotonic() < stop:
                start = time.perf_counter()
                await c.infer("iris", [x])
                each.append(time.perf_counter() - start)

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(each) / (time.monotonic() - start), each


def served(address: str) -> int:
    with grpcclient.InferenceServerClient(address) as c:
        return sum(s.inference_count for s in c.get_inference_statistics("iris", as_json=False).model_stats)


def overhead(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    with pool(work) as p:
        urls = {"agent direct": p["agents"][0], "router": p["router"]}
        clients = {}
        for case, url in urls.items():
            c = grpcclient.InferenceServerClient(url)
            x = grpcclient.InferInput("X", [1, 4], "FP32")
            x.set_data_from_numpy(ROW)
            clients[case] = (c, (lambda c=c, x=x: c.infer("iris", [x])))
            latencies(clients[case][1], args.warmup)
        samples: dict[str, list[float]] = {case: [] for case in urls}
        while any(len(v) < args.requests for v in samples.values()):
            for case in urls:
                samples[case] += latencies(clients[case][1], min(args.chunk, args.requests - len(samples[case])))
        for c, _ in clients.values():
            c.close()
        rounds: dict[str, list[float]] = {case: [] for case in urls}
        for _ in range(args.rounds):
            for case, url in urls.items():
                rounds[case].append(asyncio.run(load(url, args.concurrency, args.seconds))[0])
    out: dict[str, Any] = {case: {"c1": summary(samples[case]),
                                  f"c{args.concurrency}_requests_per_s": round(statistics.median(rounds[case]), 1),
                                  f"c{args.concurrency}_rounds": [round(r, 1) for r in rounds[case]]}
                           for case in urls}
    direct, via = out["agent direct"], out["router"]
    out["router adds, c1 p50 ms"] = round(via["c1"]["p50_ms"] - direct["c1"]["p50_ms"], 3)
    out[f"router keeps, c{args.concurrency} throughput"] = round(
        via[f"c{args.concurrency}_requests_per_s"] / direct[f"c{args.concurrency}_requests_per_s"], 3)
    return out


def slow_replica(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    policies = {"round robin": "round-robin", "p2c + EWMA": "p2c"}
    with contextlib.ExitStack() as stack:
        pools = {case: stack.enter_context(pool(work / policy, policy=policy, slow_ms=args.delay_ms))
                 for case, policy in policies.items()}
        runs: dict[str, list[tuple[float, list[float]]]] = {case: [] for case in pools}
        share: dict[str, list[int]] = {case: [0, 0] for case in pools}
        for _ in range(args.rounds):
            for case, p in pools.items():
                before = [served(a) for a in p["agents"]]
                runs[case].append(asyncio.run(load(p["router"], args.concurrency, args.seconds)))
                share[case] = [s + served(a) - b for s, a, b in zip(share[case], p["agents"], before, strict=True)]
    out: dict[str, Any] = {}
    for case, done in runs.items():
        each = [s for _, lat in done for s in lat]
        out[case] = {"requests_per_s": round(statistics.median(r for r, _ in done), 1),
                     "rounds_requests_per_s": [round(r, 1) for r, _ in done],
                     **{k: v for k, v in summary(each).items() if k != "n"},
                     "slow_replica_share": round(share[case][1] / max(1, sum(share[case])), 4)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="c=1 requests per case")
    parser.add_argument("--chunk", type=int, default=50, help="c=1 requests per case before the other's turn")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per loaded case and round")
    parser.add_argument("--rounds", type=int, default=3, help="turns each loaded case takes")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=20.0, help="how much slower the slow replica's runs are")
    parser.add_argument("--part", choices=("all", "overhead", "slow"), default="all")
    args = parser.parse_args()
    grpc_version = getattr(grpc, "__version__", "?")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("all", "overhead"):
            results["overhead"] = overhead(Path(tmp) / "overhead", args)
        if args.part in ("all", "slow"):
            results["one slow replica"] = slow_replica(Path(tmp) / "slow", args)
    print(json.dumps({"benchmark": "router", "python": platform.python_version(), "grpcio": grpc_version,
                      "numpy": np.__version__, "cpus": os.cpu_count(), "requests": args.requests,
                      "seconds": args.seconds, "rounds": args.rounds, "concurrency": args.concurrency,
                      "delay_ms": args.delay_ms, "results": results}, indent=2))


if __name__ == "__main__":
    main()
