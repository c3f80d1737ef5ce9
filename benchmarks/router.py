"""What the router costs and what load-aware routing buys: side by side in one run, on real processes over loopback.

1. Overhead: a controller and one linked agent serving the bundled iris model (CPU); the agent's endpoint direct vs
   through the router, tritonclient.grpc (sync) at c=1 (the two taking turns in chunks of --chunk requests after a
   warm-up: p50/p99), then tritonclient.grpc.aio at c=--concurrency for --seconds per case, the cases taking turns
   --rounds times (throughput: the median round).
2. One slow replica: two pools, each a controller and two linked agents with one simulated GPU each, iris on both
   (--strategy spread); one agent's GPU holds every run --delay-ms longer (the sim's inference_latency). One
   controller routes round robin, the other p2c + EWMA (the default); c=--concurrency for --seconds per case, taking
   turns --rounds times: throughput, and p50/p99 of every request.
3. Priority under overload: two pools, each a controller and one linked agent with one simulated GPU whose runs
   take --run-ms, iris deployed with `xpud deploy --max-inflight N` (router admission; N: this script's
   --max-inflight) in one and without a bound in the other. One caller sends --priority-requests priority-1
   requests one after another (tritonclient.grpc), alone and then while --flood concurrent callers in another
   process send priority-3 requests as fast as they are answered or shed (waiting --flood-backoff-ms after a
   shed one; tritonclient.grpc.aio): p50/p99 of the priority-1 requests, and what the flood got.
4. The floor of the hop: one standalone agent serving iris and `wide` (y = 2x, [1, --wide] FP32: 1 MiB each way by
   default), and in front of it, each in its own process: the router as the controller serves it (ModelInfer
   forwarded as bytes), the same router registered with the generated code (each request and reply parsed and
   serialized again: the router before it forwarded bytes), a bare grpc.aio proxy (a generic handler forwarding
   bytes: no decoding, no policy, no metrics), and a grpc.aio server that answers canned bytes without forwarding
   (what one Python server hop costs). Per model: c=1 p50/p99 (tritonclient.grpc, cases taking turns in chunks),
   throughput at c=--concurrency (tritonclient.grpc.aio, --seconds per case, --rounds turns), and the CPU time per
   request of the agent and of the process in front, read from /proc over the loaded runs.

Prints one JSON object. Example: python benchmarks/router.py --requests 2000 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
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
from tritonclient.utils import InferenceServerException

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
def pool(work: Path, *, policy: str = "p2c", slow_ms: float | None = None, delays: tuple[float, ...] | None = None,
         deploy: tuple[str, ...] = ()) -> Iterator[dict[str, Any]]:
    """A controller and its agents with iris deployed (`deploy`: more flags): one CPU agent (slow_ms and delays
    None), else two agents with one sim GPU each, the second's runs `slow_ms` slower, or one such agent per entry of
    `delays` (each run held that many ms). Yields the router's and the agents' addresses."""
    port = free_port()
    controller = Proc("controller", "--listen", f"127.0.0.1:{port}", "--inference-port", "0", "--metrics-port",
                      "0", "--state", str(work / "state"), "--routing-policy", policy)
    agents: list[Proc] = []
    try:
        inference = int(controller.wait_for(r"inference at 127\.0\.0\.1:(\d+)").group(1))
        sims: list[list[str]] = [[]]
        if slow_ms is not None:
            delays = (0.0, slow_ms)
        if delays is not None:
            sims = []
            for i, delay in enumerate(delays):
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
        placement = ["--replicas", str(len(sims)), "--device", "gpu", "--strategy", "spread"] if delays else []
        xpud("deploy", "iris", "--model", "iris", *placement, *deploy, *target)
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


def flood(url: str, callers: int, seconds: float, priority: int, backoff_s: float, out: Any) -> None:
    """In its own process: `callers` concurrent callers of `priority` for `seconds`, each waiting `backoff_s` after
    a shed request; puts (ok, shed, other)."""

    async def run() -> tuple[int, int, int]:
        counts = [0, 0, 0]
        async with aioclient.InferenceServerClient(url) as c:
            x = aioclient.InferInput("X", [1, 4], "FP32")
            x.set_data_from_numpy(ROW)
            stop = time.monotonic() + seconds

            async def caller() -> None:
                while time.monotonic() < stop:
                    try:
                        await c.infer("iris", [x], priority=priority, client_timeout=30)
                        counts[0] += 1
                    except InferenceServerException as exc:
                        counts[1 if exc.status() == "StatusCode.RESOURCE_EXHAUSTED" else 2] += 1
                        await asyncio.sleep(backoff_s)

            await asyncio.gather(*(caller() for _ in range(callers)))
        return counts[0], counts[1], counts[2]

    out.put(asyncio.run(run()))


def priority_one(url: str, count: int, until: float = math.inf) -> list[float]:
    """`count` priority-1 requests one after another, fewer if time.monotonic() reaches `until`: each latency."""
    with grpcclient.InferenceServerClient(url) as c:
        x = grpcclient.InferInput("X", [1, 4], "FP32")
        x.set_data_from_numpy(ROW)
        each = []
        for _ in range(count):
            if time.monotonic() >= until:
                break
            start = time.perf_counter()
            c.infer("iris", [x], priority=1, client_timeout=30)
            each.append(time.perf_counter() - start)
        return each


def overload(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    bounds = {f"--max-inflight {args.max_inflight}": ("--max-inflight", str(args.max_inflight)), "no bound": ()}
    spawn = multiprocessing.get_context("spawn")  # no fork of a process that holds gRPC channels
    out: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        pools = {case: stack.enter_context(pool(work / str(i), delays=(args.run_ms,), deploy=deploy))
                 for i, (case, deploy) in enumerate(bounds.items())}
        for case, p in pools.items():
            priority_one(p["router"], 20)  # warm-up
            alone = priority_one(p["router"], args.priority_requests)
            results = spawn.Queue()
            flooding = spawn.Process(target=flood, args=(p["router"], args.flood, args.flood_seconds, 3,
                                                                  args.flood_backoff_ms / 1e3, results))
            flooding.start()
            time.sleep(1.0)  # the flood in full swing: queue full, the agent busy
            loaded = priority_one(p["router"], args.priority_requests, time.monotonic() + args.flood_seconds - 2.0)
            ok, shed, other = results.get(timeout=args.flood_seconds + 60)
            flooding.join()
            out[case] = {"priority 1 alone": summary(alone), f"priority 1 under a flood of {args.flood}":
                         summary(loaded), "flood (priority 3)": {"served_per_s": round(ok / args.flood_seconds, 1),
                                                                 "shed": shed, "other errors": other}}
    return out


FLOOR_CASES = {"router": "router", "router, parsed again": "parsed", "bare proxy": "proxy",
               "no forward (canned answer)": "canned"}
INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def serve_front(variant: str, agent: str) -> None:
    """--serve: one front process of the floor part; prints its port, serves until SIGTERM."""
    import signal

    from xpud.controller.router import Router, add_router
    from xpud.controller.routes import DeploymentRoutes, ReplicaEndpoint
    from xpud.controller.server import MAX_MESSAGE, OPTIONS
    from xpud.proto.decoding import interceptors
    from xpud.proto.oip import pb, pb_grpc

    if variant in ("router", "parsed"):
        router = Router(max_message_bytes=MAX_MESSAGE)
        replica = ReplicaEndpoint(agent, "n1", ("cpu:0",), "1", "")
        router.update({m: DeploymentRoutes(m, (replica,)) for m in ("iris", "wide")})
        server = grpc.aio.server(options=OPTIONS, interceptors=interceptors())  # as the controller's router
        if variant == "router":
            add_router(server, router)
        else:
            pb_grpc.add_GRPCInferenceServiceServicer_to_server(router, server)
    else:
        channel = grpc.aio.insecure_channel(agent, options=OPTIONS)
        forward = channel.unary_unary(INFER_METHOD)
        canned = pb.ModelInferResponse(model_name="iris").SerializeToString()

        async def infer(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return canned if variant == "canned" else await forward(data, timeout=30)

        server = grpc.aio.server(options=OPTIONS)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(infer)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"serving at 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(0)


class Script(Proc):
    """A Python script of ours in its own process (Proc runs xpud)."""

    def __init__(self, *args: str | Path) -> None:
        self.proc = subprocess.Popen([sys.executable, *map(str, args)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines = []


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load_model(url: str, model: str, data: np.ndarray, concurrency: int, seconds: float) -> tuple[float, int]:
    """(requests per second, requests) with `concurrency` requests of `model` in flight for `seconds`."""
    async with aioclient.InferenceServerClient(url) as c:
        x = aioclient.InferInput("X" if model == "iris" else "x", list(data.shape), "FP32")
        x.set_data_from_numpy(data)
        for _ in range(20):
            await c.infer(model, [x])
        done, stop = 0, time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop:
                await c.infer(model, [x])
                done += 1

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.monotonic() - start), done + 20


def wide_repo(repo: Path, width: int) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "wide",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
                              [numpy_helper.from_array(np.array(2.0, np.float32), "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    (repo / "wide" / "1").mkdir(parents=True)
    onnx.save(model, str(repo / "wide" / "1" / "model.onnx"))
    shutil.copytree(IRIS, repo / "iris")


def floor(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    repo = work / "repo"
    wide_repo(repo, args.wide)
    procs: list[Proc] = []
    try:
        agent = Proc("agent", "--standalone", "--model-repo", str(repo), "--grpc-host", "127.0.0.1", "--grpc-port",
                     "0", "--metrics-port", "0", "--cache-dir", str(work / "agent"))
        procs.append(agent)
        direct = "127.0.0.1:" + agent.wait_for(r"OIP gRPC\) at 127\.0\.0\.1:(\d+)").group(1)
        urls, pids = {"agent direct": direct}, {"agent direct": agent.proc.pid}
        for case, variant in FLOOR_CASES.items():
            front = Script(Path(__file__), "--serve", variant, "--agent", direct)
            procs.append(front)
            urls[case] = "127.0.0.1:" + front.wait_for(r"serving at 127\.0\.0\.1:(\d+)").group(1)
            pids[case] = front.proc.pid
        out: dict[str, Any] = {}
        for model, data in (("iris", ROW), ("wide", np.ones((1, args.wide), np.float32))):
            cases = [c for c in urls if model == "iris" or c != "no forward (canned answer)"]
            clients = {}
            for case in cases:
                c = grpcclient.InferenceServerClient(urls[case])
                x = grpcclient.InferInput("X" if model == "iris" else "x", list(data.shape), "FP32")
                x.set_data_from_numpy(data)
                clients[case] = (c, (lambda c=c, x=x, m=model: c.infer(m, [x])))
                latencies(clients[case][1], args.warmup)
            requests = args.requests if model == "iris" else max(args.requests // 10, 100)
            samples: dict[str, list[float]] = {case: [] for case in cases}
            while any(len(v) < requests for v in samples.values()):
                for case in cases:
                    samples[case] += latencies(clients[case][1], min(args.chunk, requests - len(samples[case])))
            for c, _ in clients.values():
                c.close()
            rates: dict[str, list[float]] = {case: [] for case in cases}
            cpu: dict[str, list[tuple[float, float]]] = {case: [] for case in cases}
            for _ in range(args.rounds):
                for case in cases:
                    before = cpu_seconds(agent.proc.pid), cpu_seconds(pids[case])
                    rate, n = asyncio.run(load_model(urls[case], model, data, args.concurrency, args.seconds))
                    after = cpu_seconds(agent.proc.pid), cpu_seconds(pids[case])
                    rates[case].append(rate)
                    cpu[case].append(((after[0] - before[0]) / n * 1e6, (after[1] - before[1]) / n * 1e6))
            result: dict[str, Any] = {}
            for case in cases:
                result[case] = {"c1": summary(samples[case]),
                                f"c{args.concurrency}_requests_per_s": round(statistics.median(rates[case]), 1),
                                f"c{args.concurrency}_rounds": [round(r, 1) for r in rates[case]],
                                "agent_cpu_us_per_request": round(statistics.median(a for a, _ in cpu[case]))}
                if case != "agent direct":
                    result[case]["front_cpu_us_per_request"] = round(statistics.median(b for _, b in cpu[case]))
                    result[case]["adds, c1 p50 ms"] = round(result[case]["c1"]["p50_ms"] -
                                                            result["agent direct"]["c1"]["p50_ms"], 3)
                    result[case][f"keeps, c{args.concurrency} throughput"] = round(
                        result[case][f"c{args.concurrency}_requests_per_s"] /
                        result["agent direct"][f"c{args.concurrency}_requests_per_s"], 3)
            out[model if model == "iris" else f"wide ({args.wide * 4 >> 10} KiB each way)"] = result
        return out
    finally:
        for p in procs[::-1]:
            p.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="c=1 requests per case")
    parser.add_argument("--chunk", type=int, default=50, help="c=1 requests per case before the other's turn")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per loaded case and round")
    parser.add_argument("--rounds", type=int, default=3, help="turns each loaded case takes")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=20.0, help="how much slower the slow replica's runs are")
    parser.add_argument("--max-inflight", type=int, default=2, help="overload: the deployment's bound per replica")
    parser.add_argument("--run-ms", type=float, default=5.0, help="overload: how long each run holds the sim GPU")
    parser.add_argument("--flood", type=int, default=64, help="overload: concurrent low-priority callers")
    parser.add_argument("--flood-seconds", type=float, default=10.0, help="overload: how long the flood lasts")
    parser.add_argument("--flood-backoff-ms", type=float, default=0.0,
                        help="overload: how long a flood caller waits after a shed request")
    parser.add_argument("--priority-requests", type=int, default=200, help="overload: priority-1 requests per case")
    parser.add_argument("--wide", type=int, default=262144, help="floor: the wide model's FP32 values per request")
    parser.add_argument("--part", choices=("all", "overhead", "slow", "overload", "floor"), default="all")
    parser.add_argument("--serve", choices=sorted(set(FLOOR_CASES.values())), help=argparse.SUPPRESS)
    parser.add_argument("--agent", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve_front(args.serve, args.agent))
        return
    grpc_version = getattr(grpc, "__version__", "?")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("all", "overhead"):
            results["overhead"] = overhead(Path(tmp) / "overhead", args)
        if args.part in ("all", "slow"):
            results["one slow replica"] = slow_replica(Path(tmp) / "slow", args)
        if args.part in ("all", "overload"):
            results["priority under overload"] = overload(Path(tmp) / "overload", args)
        if args.part in ("all", "floor"):
            results["floor of the hop"] = floor(Path(tmp) / "floor", args)
    print(json.dumps({"benchmark": "router", "python": platform.python_version(), "grpcio": grpc_version,
                      "numpy": np.__version__, "cpus": os.cpu_count(), "requests": args.requests,
                      "seconds": args.seconds, "rounds": args.rounds, "concurrency": args.concurrency,
                      "delay_ms": args.delay_ms, "max_inflight": args.max_inflight, "run_ms": args.run_ms,
                      "flood": args.flood, "flood_seconds": args.flood_seconds,
                      "flood_backoff_ms": args.flood_backoff_ms,
                      "priority_requests": args.priority_requests, "wide": args.wide, "results": results}, indent=2))


if __name__ == "__main__":
    main()
