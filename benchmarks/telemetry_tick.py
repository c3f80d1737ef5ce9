"""CPU cost of the agent's telemetry at 1 Hz with N simulated GPUs + the cpu plugin, as % of one core.

Side by side in one run:
  - floor:    a bare Python asyncio process waking once per interval and doing nothing;
  - agent:    the real `xpud agent --standalone --sim N` process (telemetry + metrics, no scrapes);
  - scraped:  the same agent scraped once per `--scrape-every` seconds, as Prometheus would;
  - in-process: CPU milliseconds of one telemetry tick, measured with time.process_time over many ticks.

Process CPU is read from /proc through psutil over a window that starts after start-up.
Prints one JSON object. Example: python benchmarks/telemetry_tick.py --duration 30 --sim 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
import urllib.request

import psutil

FLOOR = """
import asyncio, sys
async def main():
    interval = float(sys.argv[1])
    print("ready", flush=True)
    while True:
        await asyncio.sleep(interval)
asyncio.run(main())
"""


def cpu_percent_of(proc: subprocess.Popen[str], duration: float, scrape_port: int | None, scrape_every: float) -> dict:
    p = psutil.Process(proc.pid)
    t0 = p.cpu_times()
    wall0 = time.monotonic()
    scrapes = 0
    while (elapsed := time.monotonic() - wall0) < duration:
        if scrape_port is not None:
            with urllib.request.urlopen(f"http://127.0.0.1:{scrape_port}/metrics", timeout=10) as resp:
                resp.read()
            scrapes += 1
        time.sleep(min(scrape_every, max(duration - elapsed, 0)))
    t1 = p.cpu_times()
    wall = time.monotonic() - wall0
    cpu = (t1.user - t0.user) + (t1.system - t0.system)
    return {
        "cpu_seconds": round(cpu, 4),
        "wall_seconds": round(wall, 2),
        "percent_of_one_core": round(100 * cpu / wall, 3),
        "scrapes": scrapes,
        "rss_mib": round(p.memory_info().rss / 2**20, 1),
    }


def start_agent(sim: int, interval: float) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", "xpud", "agent", "--standalone", "--sim", str(sim), "--interval", str(interval),
           "--metrics-host", "127.0.0.1", "--metrics-port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", line)
        if match:
            return proc, int(match.group(1))
    raise RuntimeError(f"agent did not start: exit {proc.wait()}")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


async def in_process_tick_cost(sim: int, ticks: int) -> dict:
    from xpud.agent.config import AgentConfig
    from xpud.agent.daemon import build_inventory
    from xpud.agent.telemetry.sampling import Telemetry

    config = AgentConfig()
    config.enabled = ["cpu"]
    config.enable_sim(sim)
    inventory = build_inventory(config)
    await inventory.discover()
    telemetry = Telemetry(inventory, 1.0)
    await telemetry.tick()
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(ticks):
        await telemetry.tick()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    await inventory.close()
    return {
        "ticks": ticks,
        "cpu_ms_per_tick": round(1000 * cpu / ticks, 3),
        "wall_ms_per_tick": round(1000 * wall / ticks, 3),
        "devices": len(inventory.devices),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="measurement window per case, seconds")
    parser.add_argument("--sim", type=int, default=8, help="simulated GPUs")
    parser.add_argument("--interval", type=float, default=1.0, help="telemetry interval, seconds")
    parser.add_argument("--scrape-every", type=float, default=15.0, help="scrape interval for the scraped case")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after start-up before measuring")
    args = parser.parse_args()

    floor = subprocess.Popen([sys.executable, "-c", FLOOR, str(args.interval)], stdout=subprocess.PIPE, text=True)
    assert floor.stdout is not None
    floor.stdout.readline()
    agent, port = start_agent(args.sim, args.interval)
    time.sleep(args.warmup)
    try:
        # floor and agent are measured over the same window, side by side
        results: dict = {}

        def measure(name: str, proc: subprocess.Popen[str], scrape: int | None) -> None:
            results[name] = cpu_percent_of(proc, args.duration, scrape, args.scrape_every if scrape else args.duration)

        threads = [threading.Thread(target=measure, args=("floor", floor, None)),
                   threading.Thread(target=measure, args=("agent", agent, None))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        measure("agent_scraped", agent, port)
    finally:
        stop(agent)
        stop(floor)
    results["in_process"] = asyncio.run(in_process_tick_cost(args.sim, ticks=200))
    out = {
        "benchmark": "telemetry_tick",
        "sim_gpus": args.sim,
        "plugins": ["cpu", "sim"],
        "interval_s": args.interval,
        "duration_s": args.duration,
        "scrape_every_s": args.scrape_every,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "arch": platform.machine()},
        "target_percent_of_one_core": 1.0,
        **results,
        "agent_minus_floor_percent": round(results["agent"]["percent_of_one_core"]
                                           - results["floor"]["percent_of_one_core"], 3),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
