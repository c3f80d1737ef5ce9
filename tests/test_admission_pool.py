"""Priorities end to end: a deployment with --max-inflight 1 on one slow simulated GPU (every run held 100 ms,
the sim's inference_latency), a flood of low-priority requests through the router and then a few priority-1
ones. The router's queue sheds the lowest priority first (RESOURCE_EXHAUSTED naming the deployment and its limit)
and every priority-1 request is served."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from helpers import ControllerProcess, linked_agent, wait_for

IRIS = Path(__file__).resolve().parent.parent / "models" / "iris"
SETOSA = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
LOW, HIGH = 40, 5  # requests of each kind


async def flood(url: str) -> tuple[list[str], list[str]]:
    async with aioclient.InferenceServerClient(url) as client:
        x = aioclient.InferInput("X", [1, 4], "FP32")
        x.set_data_from_numpy(SETOSA)

        async def one(priority: int) -> str:
            try:
                await client.infer("iris", [x], priority=priority, client_timeout=60)
                return "OK"
            except InferenceServerException as exc:
                return f"{exc.status()} {exc.message()}"

        low = [asyncio.create_task(one(3)) for _ in range(LOW)]
        await asyncio.sleep(0.5)  # the queue fills with low-priority waiters first
        high = [asyncio.create_task(one(1)) for _ in range(HIGH)]
        return list(await asyncio.gather(*low)), list(await asyncio.gather(*high))


def test_a_full_queue_sheds_low_priority_and_serves_priority_one(tmp_path: Path) -> None:
    scenario = tmp_path / "slow.json"
    scenario.write_text(json.dumps({"count": 1, "faults": [{"kind": "inference_latency", "device": 0,
                                                             "delay_ms": 100}]}))
    config = tmp_path / "agent.toml"
    config.write_text("[health]\nmin_requests = 100000000\n")  # slowness is not a health matter here
    c = ControllerProcess(str(tmp_path / "state"))
    agent = None
    try:
        agent = linked_agent(c, "n1", str(tmp_path / "n1"), "--sim", "1", "--scenario", str(scenario),
                             "--config", str(config))
        assert c.admin("models", "push", str(IRIS), "--name", "iris").returncode == 0
        deployed = c.admin("deploy", "iris", "--model", "iris", "--device", "gpu", "--max-inflight", "1")
        assert deployed.returncode == 0, deployed.stderr

        wait_for(lambda: c.deployment("iris").get("phase") == "Running", timeout=60, what="iris Running")
        low, high = asyncio.run(flood(c.inference_url))
        assert high == ["OK"] * HIGH, high
        shed = [r for r in low if r != "OK"]
        assert shed and all(r.startswith("StatusCode.RESOURCE_EXHAUSTED") for r in shed), set(low)
        assert "deployment 'iris' is at its limit (1 requests in flight, 8 waiting)" in shed[0], shed[0]
        assert low.count("OK") >= 1
        bad = c.admin("deploy", "other", "--model", "iris", "--max-inflight", "-1")
        assert bad.returncode == 2 and "--max-inflight" in bad.stderr, bad.stderr
    finally:
        if agent is not None:
            agent.kill()
        c.kill()
