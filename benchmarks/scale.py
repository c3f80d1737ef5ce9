"""Control-plane scale: N simulated agents streaming telemetry into a bare grpc.aio server and into the real controller.

One run, one case after the other, each measured over the same window length:
  - bare:       a bare grpc.aio server process implementing AgentLink.Connect: answers Welcome, then only reads
                (the floor / ceiling of a Python grpc.aio stream server);
  - controller: the real `xpud controller` process (own state dir in a temp dir, --lease long enough that a slow
                tick does not mark nodes lost);
  - push:       with every simulated agent connected to the controller, PushModel (a tiny ONNX file) and then
                --pushes x CreateDeployment(--replicas, device gpu, strategy spread), so ~--replicas nodes get a
                new DesiredState each time; the latency from the admin call to each agent receiving it;
  - restart:    then kill -9 the controller and start it again on the same --state and port: every agent
                reconnects like the agent does (jittered backoff from 0.25 s, Hello with the generation it applied
                and the instances it runs); how long until all are back, the controller's CPU until then, and that
                no replica moved and no deployment left Running (--client wire only).

The agents are real gRPC streams, one TCP connection per node, from --generators separate load-generator
processes (many streams per asyncio loop). --client wire (the default) speaks HTTP/2 and gRPC's framing itself on
asyncio Protocols (benchmarks/h2grpc.py, checked against a real grpc.aio server by tests/test_h2grpc.py): the
agent's keepalive PING every 10 s, each agent sending at its own instant, at a fraction of grpc.aio's CPU per
message, so one core offers 10,000 agents at 1 Hz. --client grpc uses grpc.aio with the agent's own channel options
(one channel per node), about a core per 7,000 messages a second. Each node says Hello with
--gpus simulated GPUs (vendor sim, 80 GiB) plus cpu:0, sends one StatusReport, then Telemetry every --interval
(the first one full, then deltas of a few fields per device, like the real agent), and answers a DesiredState
with assignments with a StatusReport of READY instances (so the push also exercises the status path).

Messages received: the bare server counts them; for the controller, sim:0's `energy` field carries the
telemetry seq, so GetPool before and after the window gives the exact number of telemetry messages the
controller applied (cross-checked with ListNodes last_seen). CPU is the server process' psutil cpu_times
delta over the window, as % of one core.

Unless --server-cpus / --generator-cpus say otherwise, on a machine with 2 or more CPUs (and taskset) the server
(bare, then the controller) runs on CPU 0 and the generators on the others: the wire client spins between sends
(it shows ~100 % of its core whatever the load), and must not take the server's.

The bare server role and the orchestrator live here, the load-generator role in scale_agents.py (the same
script runs every role: --role bare / gen, internal).

Prints one JSON object. Example: python benchmarks/scale.py --agents 2000 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import grpc
import psutil
from scale_agents import emit, gen_main, node_name, raise_nofile, read_commands  # benchmarks/

from xpud.proto import admin_pb2 as apb
from xpud.proto import admin_pb2_grpc, link_pb2_grpc
from xpud.proto import link_pb2 as lpb

HERE = Path(__file__).resolve()
# the controller's own server options (controller/server.py), copied so the bare server imports nothing of it
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.so_reuseport", 0),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 8 << 20),
]
ADMIN_OPTIONS = [("grpc.max_receive_message_length", 512 << 20), ("grpc.max_send_message_length", 64 << 20)]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1000, 2)


# ---------------------------------------------------------------------------------------------------------------
# role: bare server
# ---------------------------------------------------------------------------------------------------------------

class BareLink(link_pb2_grpc.AgentLinkServicer):
    def __init__(self) -> None:
        self.telemetry = 0
        self.other = 0
        self.streams = 0
        self.welcomed = 0

    async def Connect(self, request_iterator: Any, context: Any) -> Any:
        iterator = request_iterator.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            return
        if first.WhichOneof("kind") != "hello":
            return
        self.streams += 1
        self.welcomed += 1
        try:
            yield lpb.ControllerMessage(welcome=lpb.Welcome(telemetry_interval_s=1.0, lease_s=30.0,
                                                            controller_version="bare"))
            async for message in iterator:
                if message.WhichOneof("kind") == "telemetry":
                    self.telemetry += 1
                else:
                    self.other += 1
        finally:
            self.streams -= 1


async def bare_main(args: argparse.Namespace) -> None:
    raise_nofile()
    service = BareLink()
    server = grpc.aio.server(options=SERVER_OPTIONS)
    link_pb2_grpc.add_AgentLinkServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()
    read_commands(loop, commands)
    emit({"port": port})
    deadline = loop.time() + args.max_seconds
    while True:
        try:
            line = await asyncio.wait_for(commands.get(), max(deadline - loop.time(), 0.01))
        except TimeoutError:
            line = "stop"
        if line == "stats":
            emit({"telemetry": service.telemetry, "other": service.other, "streams": service.streams,
                   "welcomed": service.welcomed, "mono": time.monotonic()})
        elif line == "stop":
            break
    await server.stop(1.0)


# ---------------------------------------------------------------------------------------------------------------
# orchestrator side
# ---------------------------------------------------------------------------------------------------------------

class Child:
    """A child process spoken to through JSON lines on stdin/stdout; stderr goes to a log file."""

    def __init__(self, cmd: list[str], log: Path) -> None:
        self.log_path = log
        self._log = log.open("w")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     bufsize=1)
        self.ps = psutil.Process(self.proc.pid)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def read(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.log_path.stem}: no answer in {timeout:g} s") from None
        if line is None:
            raise RuntimeError(f"{self.log_path.stem} exited ({self.proc.poll()}): {self.tail()}")
        return json.loads(line)

    def ask(self, command: str, timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text()[-1500:]
        return ""

    def stop(self, timeout: float = 40.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                assert self.proc.stdin is not None
                self.proc.stdin.write("stop\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def cpu_list(cpus: str) -> set[int]:
    """taskset's list syntax: "0", "1-15", "0,2-3"."""
    out: set[int] = set()
    for part in cpus.split(","):
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out


def pinned(cpus: str | None) -> list[str]:
    """A command prefix that keeps a child (all its threads) on these CPUs: ``taskset -c LIST``, or nothing."""
    return ["taskset", "-c", cpus] if cpus else []


def generator_count(args: argparse.Namespace) -> int:
    """--generators, else one process per 5,000 agents with grpc.aio, one per 20,000 with the wire client."""
    return args.generators or max(1, math.ceil(args.agents / (20_000 if args.client == "wire" else 5000)))


def start_generators(args: argparse.Namespace, target: str, tmp: Path, tag: str) -> list[Child]:
    n, k = args.agents, generator_count(args)
    gens = []
    first = 0
    for g in range(k):
        count = n // k + (1 if g < n % k else 0)
        cmd = [*pinned(args.generator_cpus), sys.executable, str(HERE), "--role", "gen", "--target", target,
               "--first", str(first),
               "--count", str(count), "--gpus", str(args.gpus), "--interval", str(args.interval),
               "--connect-concurrency", str(args.connect_concurrency), "--connect-rate", str(args.connect_rate / k),
               "--connect-timeout", str(args.connect_timeout), "--max-seconds", str(args.max_seconds),
               "--client", args.client]
        gens.append(Child(cmd, tmp / f"gen-{tag}-{g}.log"))
        first += count
    return gens


def wait_connected(gens: list[Child], timeout: float) -> dict[str, Any]:
    t0 = time.monotonic()
    out = {"connected": 0, "failed": 0, "seconds": 0.0}
    for g in gens:
        left = max(timeout - (time.monotonic() - t0), 1.0)
        r = g.read(left)
        out["connected"] += r["connected"]
        out["failed"] += r["failed"]
    out["seconds"] = round(time.monotonic() - t0, 2)
    return out


def gen_stats(gens: list[Child]) -> dict[str, Any]:
    stats = [g.ask("stats") for g in gens]
    total: dict[str, Any] = {k: sum(s[k] for s in stats)
                             for k in ("connected", "failed", "closed", "sent", "status_sent", "late", "receipts",
                                       "stalled", "pings", "rejoined", "reconnect_failures")}
    total["errors"] = [e for s in stats for e in s["errors"]][:5]
    return total


def proc_cpu(ps: psutil.Process) -> float:
    t = ps.cpu_times()
    return t.user + t.system


def window(server: psutil.Process, gens: list[Child], duration: float) -> dict[str, Any]:
    """CPU of the server and the generators, and messages sent, over one window."""
    g0 = gen_stats(gens)
    s0, gc0, w0 = proc_cpu(server), [proc_cpu(g.ps) for g in gens], time.monotonic()
    time.sleep(duration)
    s1, gc1, w1 = proc_cpu(server), [proc_cpu(g.ps) for g in gens], time.monotonic()
    g1 = gen_stats(gens)
    wall = w1 - w0
    return {
        "wall_s": round(wall, 2),
        "sent_msgs": g1["sent"] - g0["sent"],
        "sent_msgs_per_s": round((g1["sent"] - g0["sent"]) / wall, 1),
        "late_ticks": g1["late"] - g0["late"],
        "server_cpu_s": round(s1 - s0, 3),
        "server_cpu_percent_of_one_core": round(100 * (s1 - s0) / wall, 1),
        "server_rss_mib": round(server.memory_info().rss / 2**20, 1),
        "generators_cpu_percent_of_one_core": [round(100 * (b - a) / wall, 1) for a, b in zip(gc0, gc1, strict=True)],
        "generators_rss_mib": [round(g.ps.memory_info().rss / 2**20, 1) for g in gens],
        "gen_end": g1,
        "_t": (w0, w1),
    }


def ingest_summary(name: str, win: dict[str, Any], received: int, received_wall: float,
                   conn: dict[str, Any]) -> dict[str, Any]:
    rate = received / received_wall
    cpu = win["server_cpu_percent_of_one_core"]
    g1 = win.pop("gen_end")
    win.pop("_t")
    return {
        "case": name,
        "connected_streams": g1["connected"] - g1["closed"],
        "connect": conn,
        **win,
        "received_msgs": received,
        "received_msgs_per_s": round(rate, 1),
        "msgs_per_core_second": round(rate / (cpu / 100), 1) if cpu > 0 else None,
        "closed_by_server": g1["closed"],
        "errors": g1["errors"],
    }


def bare_case(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    bare = Child([*pinned(args.server_cpus), sys.executable, str(HERE), "--role", "bare", "--max-seconds",
                  str(args.max_seconds)], tmp / "bare.log")
    gens: list[Child] = []
    try:
        port = bare.read(30)["port"]
        gens = start_generators(args, f"127.0.0.1:{port}", tmp, "bare")
        conn = wait_connected(gens, args.connect_wait)
        time.sleep(args.warmup)
        c0 = bare.ask("stats")
        win = window(bare.ps, gens, args.duration)
        c1 = bare.ask("stats")
        received, wall = c1["telemetry"] - c0["telemetry"], c1["mono"] - c0["mono"]
        return ingest_summary("bare", win, received, wall, conn)
    finally:
        for g in gens:
            g.stop()
        bare.stop()


def start_controller(args: argparse.Namespace, tmp: Path, port: int = 0,
                     log_name: str = "controller.log") -> tuple[subprocess.Popen[bytes], int, IO[str]]:
    log = (tmp / log_name).open("w")
    prefix = ["-m", "cProfile", "-o", args.controller_profile] if args.controller_profile else []
    verbose = ["-v"] if args.controller_debug else []
    cmd = [*pinned(args.server_cpus), sys.executable, *prefix, "-m", "xpud", *verbose, "controller", "--listen",
           f"127.0.0.1:{port}", "--inference-port", "0",
           "--state", str(tmp / "state"), "--lease", str(args.lease)]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = (tmp / log_name).read_text()
        if m := re.search(r"agents and admin at [\d.]+:(\d+)", text):
            return proc, int(m.group(1)), log
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"controller did not start: {(tmp / log_name).read_text()[-1500:]}")


def list_nodes(admin: admin_pb2_grpc.AdminStub) -> tuple[list[apb.NodeInfo], float, float]:
    t0 = time.monotonic()
    nodes = admin.ListNodes(apb.ListNodesRequest(), timeout=60).nodes
    return list(nodes), time.time(), time.monotonic() - t0


def pool_energy(admin: admin_pb2_grpc.AdminStub) -> tuple[dict[str, float], float, float]:
    """sim:0's energy (= telemetry seq) per node, the monotonic midpoint of the call and its duration."""
    t0 = time.monotonic()
    pool = admin.GetPool(apb.GetPoolRequest(), timeout=120)
    t1 = time.monotonic()
    return {d.node: d.sample.energy for d in pool.devices if d.device.id == "sim:0"}, (t0 + t1) / 2, t1 - t0


def all_events(admin: admin_pb2_grpc.AdminStub, after: int = 0) -> Iterator[apb.Event]:
    """The events after seq `after`, page by page (bounded: 200 pages of 1000)."""
    for _ in range(200):
        events = admin.ListEvents(apb.ListEventsRequest(after_seq=after, limit=1000), timeout=60).events
        yield from events
        if len(events) < 1000:
            return
        after = events[-1].seq


def event_counts(admin: admin_pb2_grpc.AdminStub) -> dict[str, Any]:
    counts: dict[str, int] = {}
    joined: list[float] = []
    for e in all_events(admin):
        counts[e.kind] = counts.get(e.kind, 0) + 1
        if e.kind == "NodeJoined":
            joined.append(e.time)
    return {"counts": counts, "node_joined_span_s": round(max(joined) - min(joined), 2) if joined else None}


def wait_joined(admin: admin_pb2_grpc.AdminStub, want: int, interval: float, timeout: float) -> dict[str, Any]:
    """Until the controller lists `want` nodes, each joined (sent its first DesiredState) and heard from within
    two intervals, whatever its state (Ready or Suspect)."""
    t0 = time.monotonic()
    nodes: list[apb.NodeInfo] = []
    fresh = 0
    while time.monotonic() - t0 < timeout:
        nodes, now, _ = list_nodes(admin)
        fresh = sum(now - n.last_seen < 2 * interval and n.generation_desired > 0 for n in nodes)
        if len(nodes) >= want and fresh >= want:
            break
        time.sleep(1.0)
    states = _states(nodes)
    return {"joined_and_heard_s": round(time.monotonic() - t0, 2), "all_joined": len(nodes) >= want and fresh >= want,
            "nodes_listed": len(nodes), "joined_and_heard": fresh, "node_states": states}


def tiny_onnx() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "scale",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    assert data[:1] == b"\x08", data[:4]
    return data


def push_case(args: argparse.Namespace, admin: admin_pb2_grpc.AdminStub, gens: list[Child],
              ctrl: psutil.Process) -> dict[str, Any]:
    data = tiny_onnx()
    t0 = time.monotonic()
    info = admin.PushModel(iter([apb.PushModelChunk(name="scale", filename="scale.onnx", data=data)]), timeout=60)
    push_model_s = time.monotonic() - t0
    time.sleep(1.0)
    cursors = [g.ask("receipts 0", 60)["next"] for g in gens]
    # This process just read ListNodes and GetPool of every node: its collector must not run inside a timed call,
    # and one untimed call goes first (the first call after those reads is slower on the client side).
    gc.collect()
    gc.freeze()
    admin.ListDeployments(apb.ListDeploymentsRequest(), timeout=60)
    runs: list[dict[str, Any]] = []
    all_from_return: list[float] = []
    all_from_start: list[float] = []
    cpu0, w0 = proc_cpu(ctrl), time.monotonic()
    for k in range(args.pushes):
        name = f"scale-{k}"
        t_start = time.monotonic()
        try:
            status = admin.CreateDeployment(apb.Deployment(name=name, model="scale", replicas=args.replicas,
                                                           device="gpu", strategy="spread"), timeout=120)
        except grpc.RpcError as exc:
            runs.append({"deployment": name, "create_call_ms": ms(time.monotonic() - t_start),
                         "error": f"{exc.code()}: {exc.details()}"[:300]})
            time.sleep(1.0)
            continue
        t_return = time.monotonic()
        affected = {r.node for r in status.replicas}
        got: dict[str, float] = {}
        deadline = t_return + args.push_wait
        while time.monotonic() < deadline:
            for gi, g in enumerate(gens):
                r = g.ask(f"receipts {cursors[gi]}", 60)
                cursors[gi] = r["next"]
                for idx, when, _gen, deps in r["receipts"]:
                    node = node_name(idx)
                    if name in deps and node not in got:
                        got[node] = when
            if affected <= got.keys():
                break
            time.sleep(0.05)
        lat_return = [got[n] - t_return for n in affected if n in got]
        lat_start = [got[n] - t_start for n in affected if n in got]
        all_from_return += lat_return
        all_from_start += lat_start
        t_running = None
        while time.monotonic() < deadline + args.push_wait:
            deps = admin.ListDeployments(apb.ListDeploymentsRequest(), timeout=60).deployments
            d = next(x for x in deps if x.spec.name == name)
            if d.phase == "Running":
                t_running = time.monotonic() - t_start
                break
            time.sleep(0.1)
        runs.append({
            "deployment": name,
            "create_call_ms": ms(t_return - t_start),
            "phase_at_return": status.phase,
            "nodes_affected": len(affected),
            "nodes_received": len(lat_return),
            "received_before_call_returned": sum(x < 0 for x in lat_return),
            "from_return_ms": {"p50": ms(pct(lat_return, 50)), "p99": ms(pct(lat_return, 99)),
                               "max": ms(max(lat_return, default=None))},
            "from_call_start_ms": {"p50": ms(pct(lat_start, 50)), "p99": ms(pct(lat_start, 99)),
                                   "max": ms(max(lat_start, default=None))},
            "seconds_to_running": None if t_running is None else round(t_running, 3),
        })
        time.sleep(1.0)
    cpu1, w1 = proc_cpu(ctrl), time.monotonic()
    return {
        "model_bytes": info.size_bytes,
        "push_model_call_ms": ms(push_model_s),
        "replicas": args.replicas,
        "pushes": runs,
        "all": {
            "create_call_ms": {"p50": ms(pct([r["create_call_ms"] / 1000 for r in runs], 50)),
                               "max": max((r["create_call_ms"] for r in runs), default=None)},
            "failed_calls": sum("error" in r for r in runs),
            "from_return_ms": {"p50": ms(pct(all_from_return, 50)), "p99": ms(pct(all_from_return, 99)),
                               "max": ms(max(all_from_return, default=None))},
            "from_call_start_ms": {"p50": ms(pct(all_from_start, 50)), "p99": ms(pct(all_from_start, 99)),
                                   "max": ms(max(all_from_start, default=None))},
        },
        "controller_cpu_percent_during_pushes": round(100 * (cpu1 - cpu0) / (w1 - w0), 1),
    }


def controller_case(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    proc, port, log = start_controller(args, tmp)
    ps = psutil.Process(proc.pid)
    gens: list[Child] = []
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=ADMIN_OPTIONS)
    admin = admin_pb2_grpc.AdminStub(channel)
    out: dict[str, Any] = {"case": "controller", "lease_s": args.lease}
    push: dict[str, Any] = {}
    try:
        gens = start_generators(args, f"127.0.0.1:{port}", tmp, "controller")
        t0 = time.monotonic()
        conn = wait_connected(gens, args.connect_wait)
        conn.update(wait_joined(admin, conn["connected"], args.interval, args.connect_wait))
        conn["joined_and_heard_s"] = round(time.monotonic() - t0, 2)  # from the generators' start
        out["connect"] = conn
        time.sleep(args.warmup)
        e0, m0, d0 = pool_energy(admin)
        win = window(ps, gens, args.duration)
        e1, m1, d1 = pool_energy(admin)
        nodes, now, list_s = list_nodes(admin)
        received = int(sum(v - e0.get(k, 0.0) for k, v in e1.items()))
        out.update(ingest_summary("controller", win, received, m1 - m0, conn))
        lag = [now - n.last_seen for n in nodes if n.last_seen]
        out["cross_check"] = {
            "received_from": "GetPool sim:0 energy (= telemetry seq) before and after the window",
            "get_pool_call_s": [round(d0, 3), round(d1, 3)],
            "list_nodes_call_s": round(list_s, 3),
            "nodes": len(nodes),
            "node_states": _states(nodes),
            "last_seen_age_s": {"p50": round(pct(lag, 50) or 0, 3), "p99": round(pct(lag, 99) or 0, 3),
                                "max": round(max(lag, default=0), 3)},
        }
        if args.pushes:
            try:
                push = push_case(args, admin, gens, ps)
            except Exception as exc:  # recorded, not fatal: the ingest numbers stand
                push = {"error": repr(exc)[:500]}
        out["node_states_after_pushes"] = _states(list_nodes(admin)[0])
        out["events"] = event_counts(admin)
        if "restart" in args.cases.split(",") and args.client == "wire":
            first = channel
            out["restart"], proc, log, channel = restart_case(args, tmp, proc, port, log, gens, admin)
            first.close()
    except Exception as exc:
        out["error"] = repr(exc)[:500]
    finally:
        for g in gens:
            g.stop()
        channel.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()
        text = "".join(f.read_text(errors="replace") for f in sorted(tmp.glob("controller*.log")))
        out["log"] = {"scheduling_failed": text.count("scheduling failed"),
                      "dictionary_changed_size": text.count("dictionary changed size during iteration")}
        if args.keep_log:
            with contextlib.suppress(OSError):
                shutil.copy(tmp / "controller.log", args.keep_log)
                if (tmp / "controller-restarted.log").exists():
                    shutil.copy(tmp / "controller-restarted.log", args.keep_log + ".restarted")
    return out, push


def placed(admin: admin_pb2_grpc.AdminStub) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Each deployment's phase and where its replicas are."""
    return {d.spec.name: (d.phase, sorted((r.node, r.device) for r in d.replicas))
            for d in admin.ListDeployments(apb.ListDeploymentsRequest(), timeout=60).deployments}


def events_after(admin: admin_pb2_grpc.AdminStub, after: int) -> tuple[dict[str, int], int]:
    """Counts of the events after seq `after` by kind, and the last seq."""
    counts: dict[str, int] = {}
    for e in all_events(admin, after):
        counts[e.kind] = counts.get(e.kind, 0) + 1
        after = e.seq
    return counts, after


def restart_case(args: argparse.Namespace, tmp: Path, proc: subprocess.Popen[bytes], port: int, log: IO[str],
                 gens: list[Child], admin: admin_pb2_grpc.AdminStub
                 ) -> tuple[dict[str, Any], subprocess.Popen[bytes], IO[str], grpc.Channel]:
    """kill -9 the controller with every agent connected (and the pushed deployments placed), start it again on
    the same --state and port: how long until every agent is back (each reconnects like the agent, with jittered
    backoff from 0.25 s, saying in Hello what it applied and runs), what that cost, and that nothing moved."""
    before = placed(admin)
    _, last_seq = events_after(admin, 0)
    g0 = gen_stats(gens)
    proc.kill()
    proc.wait(10)
    log.close()
    killed = time.monotonic()
    proc, _, log = start_controller(args, tmp, port=port, log_name="controller-restarted.log")
    started = time.monotonic()
    ps = psutil.Process(proc.pid)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=ADMIN_OPTIONS)
    admin = admin_pb2_grpc.AdminStub(channel)
    want, g1 = g0["connected"] - g0["closed"], g0
    deadline = time.monotonic() + args.connect_wait
    while time.monotonic() < deadline:  # every agent welcomed again (the generators' own count)
        g1 = gen_stats(gens)
        if g1["rejoined"] - g0["rejoined"] >= want:
            break
        time.sleep(0.2)
    rejoined_cpu = proc_cpu(ps)
    last = max((s["last_rejoin"] for s in (g.ask("stats") for g in gens) if s["last_rejoin"]), default=None)
    joined = wait_joined(admin, want, args.interval, args.connect_wait)
    after = placed(admin)
    moved = sum(len(set(where) ^ set(after.get(name, ("", []))[1])) for name, (_, where) in before.items())
    counts, _ = events_after(admin, last_seq)
    return {
        "agents": want,
        "rejoined": g1["rejoined"] - g0["rejoined"],
        "controller_start_s": round(started - killed, 2),
        "all_rejoined_s_from_kill": None if last is None else round(last - killed, 2),
        "controller_cpu_s_until_all_rejoined": round(rejoined_cpu, 2),
        "joined_and_heard": joined,
        "deployments": len(before),
        "phases_before": sorted({phase for phase, _ in before.values()}),
        "phases_after": sorted({phase for phase, _ in after.values()}),
        "replica_places_changed": moved,
        "events_after_restart": counts,
        "reconnect_failures": g1["reconnect_failures"] - g0["reconnect_failures"],
    }, proc, log, channel


def _states(nodes: list[apb.NodeInfo]) -> dict[str, int]:
    states: dict[str, int] = {}
    for n in nodes:
        states[n.state] = states.get(n.state, 0) + 1
    return states


def _get(d: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile()  # inherited by every child process
    need = args.agents + 200
    if nofile < need:
        raise SystemExit(f"scale.py: RLIMIT_NOFILE is {nofile}, {need} needed for {args.agents} agents")
    tmp = Path(tempfile.mkdtemp(prefix="xpud-scale-"))
    started = time.monotonic()
    bare: dict[str, Any] = {}
    controller: dict[str, Any] = {}
    push: dict[str, Any] = {}
    cases = set(args.cases.split(","))
    try:
        if "bare" in cases:
            try:
                bare = bare_case(args, tmp)
            except Exception as exc:
                bare = {"case": "bare", "error": repr(exc)[:500]}
        if "controller" in cases:
            controller, push = controller_case(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, Any] = {
        "benchmark": "scale",
        "agents": args.agents,
        "devices_per_node": args.gpus + 1,
        "interval_s": args.interval,
        "duration_s": args.duration,
        "generators": generator_count(args),
        "client": args.client,
        "lease_s": args.lease,
        "server_cpus": args.server_cpus,
        "generator_cpus": args.generator_cpus,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "arch": platform.machine(),
                    "grpcio": grpc.__version__},
        "bare": bare,
        "controller": controller,
        "push": push,
    }
    c_rate, b_rate = _get(controller, "received_msgs_per_s"), _get(bare, "received_msgs_per_s")
    c_core, b_core = _get(controller, "msgs_per_core_second"), _get(bare, "msgs_per_core_second")
    delivered = c_rate / b_rate if c_rate is not None and b_rate else None
    per_core = c_core / b_core if c_core and b_core else None
    out["ratio"] = {
        "received_msgs_per_s_controller_over_bare": None if delivered is None else round(delivered, 3),
        "msgs_per_core_second_controller_over_bare": None if per_core is None else round(per_core, 3),
    }
    cpu = _get(controller, "server_cpu_percent_of_one_core")
    at_10k = None if cpu is None else cpu / 100 * 10_000 / args.agents / args.interval
    p99 = _get(push, "all", "from_return_ms", "p99")
    p99_start = _get(push, "all", "from_call_start_ms", "p99")
    out["targets"] = {
        "push_p99_from_return_lt_50ms": p99 is not None and p99 < 50,
        "push_p99_from_call_start_lt_50ms": p99_start is not None and p99_start < 50,
        "msgs_ratio_ge_0_6": delivered is not None and delivered >= 0.6,
        "msgs_per_core_ratio_ge_0_6": per_core is not None and per_core >= 0.6,
        "controller_cores_at_10k_agents_1hz": None if at_10k is None else round(at_10k, 3),
        "controller_cores_at_10k_measured": args.agents >= 10_000 and args.interval == 1.0,
        "controller_le_1_core_at_10k": at_10k is not None and at_10k <= 1.0,
    }
    out["total_seconds"] = round(time.monotonic() - started, 1)
    return out


# the numeric options (flag, type, default, help), in --help order
NUMBER_OPTIONS: tuple[tuple[str, type[int] | type[float], float, str], ...] = (
    ("--agents", int, 2000, "simulated agents (nodes), one stream each"),
    ("--duration", float, 30.0, "measurement window per case, seconds"),
    ("--interval", float, 1.0, "telemetry interval, seconds"),
    ("--gpus", int, 2, "simulated GPUs per node (plus cpu:0)"),
    ("--generators", int, 0, "load-generator processes (0: one per 20,000 agents with --client wire, 5,000 with grpc)"),
    ("--lease", float, 30.0, "controller --lease, seconds"),
    ("--replicas", int, 200, "replicas per pushed deployment (nodes affected)"),
    ("--pushes", int, 3, "deployments created one after the other"),
    ("--push-wait", float, 15.0, "seconds to wait for each push to arrive"),
    ("--warmup", float, 3.0, "seconds after all connected before measuring"),
    ("--connect-wait", float, 180.0, "seconds allowed for all to connect"),
    ("--connect-concurrency", int, 100, "handshakes in flight per generator"),
    ("--connect-rate", float, 0.0, "joins per second, all generators together (0: as fast as handshakes go)"),
    ("--connect-timeout", float, 60.0, "seconds for one Hello -> Welcome"),
    ("--max-seconds", float, 900.0, "children exit after this long regardless"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, kind, default, text in NUMBER_OPTIONS:
        parser.add_argument(flag, type=kind, default=default, help=text)
    parser.add_argument("--client", choices=("grpc", "wire"), default="wire",
                        help="the simulated agents' client: grpc.aio (grpc), or a minimal HTTP/2 gRPC client on "
                             "asyncio Protocols (wire: far less CPU per message: one core offers 10,000 agents)")
    parser.add_argument("--cases", default="bare,controller,restart",
                        help="which cases to run (comma-separated); restart: kill -9 the controller after the "
                             "pushes and start it again (wire client only)")
    parser.add_argument("--server-cpus", metavar="LIST",
                        help="pin the bare server and the controller to these CPUs (taskset -c LIST), e.g. 0 or 0,1: "
                             "on a bigger machine, gives the server this VM's budget while the generators use the rest")
    parser.add_argument("--generator-cpus", metavar="LIST", help="pin the load generators to these CPUs")
    parser.add_argument("--keep-log", help="copy the controller's log here")
    parser.add_argument("--controller-debug", action="store_true",
                        help="run the controller with -v: its log then times each scheduling pass (with --keep-log)")
    parser.add_argument("--controller-profile", help="run the controller under cProfile, writing the stats here")
    # internal: the child roles
    parser.add_argument("--role", choices=("main", "bare", "gen"), default="main", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    if args.role == "main" and args.server_cpus is None and args.generator_cpus is None and cpus >= 2 \
            and shutil.which("taskset"):
        args.server_cpus, args.generator_cpus = "0", f"1-{cpus - 1}" if cpus > 2 else "1"
    if args.role == "main" and args.generator_cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpu_list(args.generator_cpus))  # this process' admin calls stay off the server's
    if args.role == "bare":
        asyncio.run(bare_main(args))
    elif args.role == "gen":
        asyncio.run(gen_main(args))
    else:
        print(json.dumps(orchestrate(args), indent=2))


if __name__ == "__main__":
    main()
