"""The load-generator role of scale.py: simulated agents, each its own AgentLink.Connect stream, many per process.

--client wire: WireAgent over h2grpc.H2GrpcCall (HTTP/2 on asyncio Protocols); --client grpc: sim_agent over
grpc.aio with the agent's own channel options. Each says Hello, sends one StatusReport, then Telemetry every
--interval, and answers a DesiredState with a StatusReport of READY instances. The process takes commands on stdin
(stats, receipts N, stop) and answers one JSON line each on stdout, like the bare server role.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import random
import resource
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import grpc
from h2grpc import CallEnd, H2GrpcCall, request_headers  # benchmarks/, this script's folder

from xpud.proto import link_pb2 as lpb
from xpud.proto import link_pb2_grpc
from xpud.proto import telemetry_pb2 as tpb

GiB = 1 << 30


# ---------------------------------------------------------------------------------------------------------------
# a child role's process: file limit, commands on stdin, JSON lines on stdout
# ---------------------------------------------------------------------------------------------------------------

def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def read_commands(loop: asyncio.AbstractEventLoop, commands: asyncio.Queue[str]) -> None:
    def read() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "stop")

    threading.Thread(target=read, daemon=True).start()


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------------------------------------------
# role: load generator (simulated agents)
# ---------------------------------------------------------------------------------------------------------------

def node_name(i: int) -> str:
    return f"sim-{i:05d}"


def hello_for(i: int, gpus: int, generation: int = 0, instances: Sequence[lpb.InstanceStatus] = (),
              incarnation: str = "") -> lpb.AgentMessage:
    """Node i's Hello; a reconnecting agent says what it applied (`generation`) and runs (`instances`)."""
    hello = lpb.Hello(node=node_name(i), labels={"rack": f"r{i % 50}"}, zone=f"z{i % 4}",
                      execution_providers=["CPUExecutionProvider"], agent_version="scale-sim",
                      inference_endpoint="127.0.0.1:9", generation=generation, instances=instances,
                      incarnation=incarnation or f"{random.getrandbits(64):016x}")
    for g in range(gpus):
        hello.devices.add(id=f"sim:{g}", vendor="sim", kind="gpu", model="Sim A100-SXM4-80GB", plugin="sim",
                          uuid=f"GPU-5173{g:04x}-0000-4000-8000-{i:012x}", index=g, memory_total=80 * GiB,
                          driver_version="sim-1.0", compute_capability="8.0", cores=108)
    hello.devices.add(id="cpu:0", vendor="intel", kind="cpu", model="Sim Xeon", plugin="cpu",
                      memory_total=64 * GiB, cores=16)
    return lpb.AgentMessage(hello=hello)


def telemetry_for(seq: int, gpus: int, phase: float, full: bool | None = None) -> lpb.AgentMessage:
    """First message (or `full`: the first on a new connection) full, then deltas: a few fields per device; sim:0's
    energy is the seq (the cross-check)."""
    now = time.time()
    util = 0.5 + 0.4 * math.sin(seq / 7 + phase)
    batch = lpb.Telemetry(seq=seq)
    full = seq == 1 if full is None else full
    for g in range(gpus):
        s = batch.samples.add(device_id=f"sim:{g}", timestamp=now, utilization=round(util, 4),
                              power_draw=round(60 + 340 * util, 1), energy=float(seq) if g == 0 else seq * 230.0)
        if full or seq % 5 == 0:
            s.temperature = round(32 + 45 * util, 1)
        if full:
            used = int(80 * GiB * (0.05 + 0.6 * util))
            s.full, s.health = True, tpb.HEALTH_OK
            s.memory_used, s.memory_free, s.memory_utilization = used, 80 * GiB - used, round(0.6 * util, 4)
            s.power_limit, s.clock_sm, s.clock_memory = 400.0, 1410.0, 1593.0
            s.ecc_volatile_corrected = s.ecc_volatile_uncorrected = 0
            s.ecc_aggregate_corrected = s.ecc_aggregate_uncorrected = 0
            s.pcie_tx, s.pcie_rx = 2e9 * util, 1e9 * util
            s.throttle_reasons.SetInParent()
            s.processes.SetInParent()
    c = batch.samples.add(device_id="cpu:0", timestamp=now, utilization=round(util / 2, 4),
                          memory_used=int(8 * GiB + seq % 97 * (1 << 20)))
    if full:
        c.full, c.health = True, tpb.HEALTH_OK
        c.memory_free = 64 * GiB - c.memory_used
    return lpb.AgentMessage(telemetry=batch)


class GenState:
    def __init__(self) -> None:
        self.connected = 0
        self.failed = 0
        self.closed = 0
        self.sent = 0
        self.status_sent = 0
        self.late = 0
        self.stalled = 0  # --client wire: messages that waited for the server's flow-control window
        self.pings = 0  # --client wire: keepalive PINGs sent
        self.rejoined = 0  # --client wire: agents welcomed again after their connection was lost
        self.rejoin_times: list[float] = []  # monotonic, each of those
        self.reconnect_failures = 0
        self.reconnecting: set[asyncio.Task[None]] = set()
        self.errors: list[str] = []
        self.receipts: list[tuple[int, float, int, list[str]]] = []  # node index, monotonic, generation, deployments

    def error(self, text: str) -> None:
        if len(self.errors) < 5:
            self.errors.append(text[:300])

    def applied(self, i: int, desired: lpb.DesiredState) -> lpb.StatusReport:
        """Node i received `desired` (now): the StatusReport it answers, every assignment READY."""
        self.receipts.append((i, time.monotonic(), desired.generation, [a.deployment for a in desired.assignments]))
        status = lpb.StatusReport(generation=desired.generation)
        for a in desired.assignments:
            status.instances.add(deployment=a.deployment, model=a.model, version=a.version, digest=a.digest,
                                 state="READY", devices=list(a.devices), memory_bytes=64 << 20,
                                 execution_provider="CPUExecutionProvider")
        return status


async def sim_agent(i: int, args: argparse.Namespace, state: GenState, connect: asyncio.Semaphore,
                    options: list[tuple[str, Any]]) -> None:
    loop = asyncio.get_running_loop()
    channel = grpc.aio.insecure_channel(args.target, options=options)
    call = None
    reader: asyncio.Task[None] | None = None
    try:
        lock = asyncio.Lock()
        if args.connect_rate > 0:  # paced joins: agent k of this generator starts k / rate seconds in
            await asyncio.sleep((i - args.first) / args.connect_rate)
        async with connect:
            call = link_pb2_grpc.AgentLinkStub(channel).Connect()
            try:
                await call.write(hello_for(i, args.gpus))
                first = await asyncio.wait_for(call.read(), args.connect_timeout)
            except (grpc.aio.AioRpcError, TimeoutError) as exc:
                state.failed += 1
                state.error(f"{node_name(i)} connect: {exc!r}")
                return
            if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
                state.failed += 1
                state.error(f"{node_name(i)}: no welcome")
                return
            state.connected += 1
        interval = args.interval

        async def read_loop() -> None:
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    state.closed += 1
                    return
                if message.WhichOneof("kind") != "desired":
                    continue
                status = state.applied(i, message.desired)
                async with lock:
                    await call.write(lpb.AgentMessage(status=status))
                state.status_sent += 1

        reader = asyncio.create_task(read_loop())
        async with lock:  # like the real agent: one StatusReport first, then telemetry
            await call.write(lpb.AgentMessage(status=lpb.StatusReport(generation=0)))
        state.status_sent += 1
        phase = random.random()
        next_tick = loop.time() + phase * interval
        seq = 0
        while not reader.done():
            delay = next_tick - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            seq += 1
            message = telemetry_for(seq, args.gpus, phase * 6.28)
            async with lock:
                await call.write(message)
            state.sent += 1
            next_tick += interval
            if next_tick < loop.time():  # fell more than an interval behind: do not burst to catch up
                state.late += 1
                next_tick = loop.time() + interval
    except asyncio.CancelledError:
        pass
    except (grpc.aio.AioRpcError, grpc.aio.UsageError) as exc:
        state.error(f"{node_name(i)}: {exc!r}")
    finally:
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        if call is not None:
            call.cancel()
        await channel.close(None)


# ---------------------------------------------------------------------------------------------------------------
# role: load generator, --client wire: the same agents over h2grpc.H2GrpcCall (HTTP/2 on asyncio Protocols)
# ---------------------------------------------------------------------------------------------------------------
# grpc.aio's client costs too much CPU per message for one core to offer 10,000 agents at 1 Hz. The server cannot
# tell this client from grpc's: one TCP connection per agent carrying one AgentLink.Connect stream, the same
# messages, and a keepalive PING every 10 s like the agent's channel.

RECV_WINDOW = 1 << 30  # what each agent grants the server, per stream and per connection
BACKOFF_INITIAL, BACKOFF_MAX = 0.25, 10.0  # seconds: the agent's reconnect backoff (agent/link.py)


class WireAgent:
    """One simulated agent: one connection at a time (an H2GrpcCall); it reconnects like the agent does."""

    def __init__(self, i: int, args: argparse.Namespace, state: GenState, headers: bytes) -> None:
        self.i, self.args, self.state = i, args, state
        self.headers = headers
        self.seq = 0
        self.phase = random.random()
        self.incarnation = f"{random.getrandbits(64):016x}"  # one process: the same across reconnects
        self.generation = 0  # the last DesiredState applied
        self.instances: list[lpb.InstanceStatus] = []  # what it runs (READY), reported in Hello on reconnect
        self.joins = 0  # welcomes received
        self.stopping = False
        self.backoff = BACKOFF_INITIAL
        self.call: H2GrpcCall | None = None
        self.welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.live = False  # welcomed and not closed: the ticker sends its telemetry
        self.full_next = True  # the first telemetry on a connection is a full sample

    async def connect(self) -> None:
        """One connection: Hello, then wait for Welcome (OSError, TimeoutError or ConnectionError if not)."""
        loop = asyncio.get_running_loop()
        self.welcomed = loop.create_future()
        self.live, self.full_next = False, True
        call = H2GrpcCall(self.headers, lambda data: self._message(call, data), lambda end: self._end(call, end),
                          recv_window=RECV_WINDOW)
        self.call = call
        call.send(hello_for(self.i, self.args.gpus, self.generation, self.instances, self.incarnation)
                  .SerializeToString())
        host, _, port = self.args.target.rpartition(":")
        try:
            await loop.create_connection(lambda: call, host, int(port))
            await asyncio.wait_for(asyncio.shield(self.welcomed), self.args.connect_timeout)
        except BaseException:
            call.close()
            raise

    async def reconnect(self) -> None:
        """Like the agent: again after a jittered, doubling pause, saying what it applied and runs."""
        while not self.stopping:
            pause = self.backoff * (0.5 + random.random())
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)
            await asyncio.sleep(pause)
            if self.stopping:
                return
            try:
                await self.connect()
                return
            except (OSError, TimeoutError, ConnectionError):
                self.state.reconnect_failures += 1

    def send(self, message: lpb.AgentMessage) -> None:
        assert self.call is not None
        if not self.call.send(message.SerializeToString()):
            self.state.stalled += 1

    def tick(self, late: bool) -> None:
        self.seq += 1
        self.send(telemetry_for(self.seq, self.args.gpus, self.phase * 6.28, self.full_next))
        self.full_next = False
        self.state.sent += 1
        if late:
            self.state.late += 1
        if self.seq % self.args.ping_every == 0:  # the agent's channel: keepalive_time_ms 10,000
            assert self.call is not None
            self.call.ping()
            self.state.pings += 1

    def _message(self, call: H2GrpcCall, data: bytes) -> None:
        if call is not self.call:
            return
        message = lpb.ControllerMessage.FromString(data)
        kind = message.WhichOneof("kind")
        if kind == "welcome" and not self.welcomed.done():
            self.welcomed.set_result(None)
            self.joins += 1
            if self.joins > 1:
                self.state.rejoined += 1
                self.state.rejoin_times.append(time.monotonic())
            self.backoff = BACKOFF_INITIAL
            self.send(lpb.AgentMessage(status=lpb.StatusReport(generation=0)))  # like the agent: status first
            self.state.status_sent += 1
            self.live = True
        elif kind == "desired":
            status = self.state.applied(self.i, message.desired)
            self.generation, self.instances = status.generation, list(status.instances)
            self.send(lpb.AgentMessage(status=status))
            self.state.status_sent += 1

    def _end(self, call: H2GrpcCall, end: CallEnd) -> None:
        if call is not self.call:
            return
        was_live, self.live = self.live, False
        if was_live:
            self.state.closed += 1
        self.state.error(f"{node_name(self.i)}: {end}")
        if not self.welcomed.done():  # connect() or reconnect() is waiting for this connection: it retries
            self.welcomed.set_exception(ConnectionError(str(end)))
            self.welcomed.exception()  # retrieved: a reconnect waits on its own future
        if was_live and not self.stopping:  # it was in: come back, like the agent
            task = asyncio.ensure_future(self.reconnect())
            self.state.reconnecting.add(task)
            task.add_done_callback(self.state.reconnecting.discard)

    def close(self) -> None:
        self.stopping = True
        self.live = False
        if self.call is not None:
            self.call.close()


async def wire_agents(args: argparse.Namespace, state: GenState) -> list[asyncio.Task[None]]:
    """Connect args.count WireAgents (--connect-concurrency handshakes in flight) and tick them from one task."""
    loop = asyncio.get_running_loop()
    headers = request_headers(args.target, "/xpud.v1.AgentLink/Connect")
    connect = asyncio.Semaphore(args.connect_concurrency)
    agents: list[WireAgent] = []

    async def join(i: int) -> None:
        if args.connect_rate > 0:
            await asyncio.sleep((i - args.first) / args.connect_rate)
        async with connect:
            agent = WireAgent(i, args, state, headers)
            agents.append(agent)
            try:
                await agent.connect()
            except (OSError, TimeoutError, ConnectionError) as exc:
                state.failed += 1
                state.error(f"{node_name(i)} connect: {exc!r}")
                agent.close()
                return
            state.connected += 1

    async def spread() -> None:
        """Each agent sends at its own instant (its phase of the interval), spinning the loop between sends.

        Real agents do not send in bunches, and a bunch would make the server cheaper too (one wake-up reads it
        all). The cost: a generator that spins, ~100 % of its core whatever the load.
        """
        order: list[WireAgent] = []
        pos = 0
        cycle = sorted_at = loop.time()
        try:
            while True:
                if len(order) != len(agents) and loop.time() - sorted_at > 0.5:  # agents joined: order them by phase
                    sorted_at = loop.time()
                    order = sorted(agents, key=lambda a: a.phase)
                    offset = (sorted_at - cycle) / args.interval % 1.0  # where in the interval we are
                    cycle = sorted_at - offset * args.interval
                    pos = next((n for n, a in enumerate(order) if a.phase >= offset), len(order))
                if not order:
                    await asyncio.sleep(0.01)
                    continue
                now = loop.time()
                while True:
                    if pos == len(order):
                        pos = 0
                        cycle += args.interval
                    due = cycle + order[pos].phase * args.interval
                    if due > now:
                        break
                    late = now - due > args.interval
                    if order[pos].live:
                        order[pos].tick(late)
                    pos += 1
                    if late:  # more than an interval behind: count it, then do not burst to catch up
                        cycle += now - due
                wait = due - loop.time()
                await asyncio.sleep(wait - 0.0015 if wait > 0.002 else 0)
        finally:
            for agent in agents:
                agent.close()

    joins = [asyncio.create_task(join(i)) for i in range(args.first, args.first + args.count)]
    return [*joins, asyncio.create_task(spread())]


async def gen_main(args: argparse.Namespace) -> None:
    from xpud.agent.link import CHANNEL_OPTIONS  # the real agent's channel options (keepalive every 10 s)

    raise_nofile()
    args.ping_every = max(1, round(10.0 / args.interval))  # ticks between keepalive PINGs (--client wire)
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()
    read_commands(loop, commands)
    state = GenState()
    connect = asyncio.Semaphore(args.connect_concurrency)
    # one TCP connection per node, like real agents (channels with equal args would share one otherwise)
    options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    t0 = time.monotonic()
    if args.client == "wire":
        tasks = await wire_agents(args, state)
    else:
        tasks = [asyncio.create_task(sim_agent(i, args, state, connect, options))
                 for i in range(args.first, args.first + args.count)]
    deadline = loop.time() + args.max_seconds
    reported = False
    while True:
        if not reported and state.connected + state.failed >= args.count:
            reported = True
            # thousands of agents in one process: a full collection of their streams would stall every one of them
            # for hundreds of ms, which real agents, one per process, never see
            gc.collect()
            gc.freeze()
            emit({"event": "connected", "connected": state.connected, "failed": state.failed,
                   "seconds": round(time.monotonic() - t0, 3)})
        try:
            line = await asyncio.wait_for(commands.get(), 0.2 if not reported else max(deadline - loop.time(), 0.01))
        except TimeoutError:
            if loop.time() >= deadline:
                break
            continue
        word, _, rest = line.partition(" ")
        if word == "stats":
            emit({"connected": state.connected, "failed": state.failed, "closed": state.closed, "sent": state.sent,
                   "status_sent": state.status_sent, "late": state.late, "receipts": len(state.receipts),
                   "stalled": state.stalled, "pings": state.pings, "rejoined": state.rejoined,
                   "reconnect_failures": state.reconnect_failures,
                   "last_rejoin": max(state.rejoin_times, default=None),
                   "errors": state.errors, "mono": time.monotonic()})
        elif word == "receipts":
            start = int(rest or 0)
            emit({"receipts": [list(r) for r in state.receipts[start:]], "next": len(state.receipts)})
        elif word == "stop":
            break
    for task in [*tasks, *state.reconnecting]:
        task.cancel()
    await asyncio.wait_for(asyncio.gather(*tasks, *state.reconnecting, return_exceptions=True), 30)
    emit({"event": "stopped", "sent": state.sent})
