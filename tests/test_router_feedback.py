"""The router's load-aware routing and outlier ejection, end to end: a real controller and three real agents, each
with one simulated GPU serving a replica of iris (real ONNX Runtime). n2's GPU is slow (every run held 50 ms
longer, the sim's inference_latency), n3's fails every run for a while (inference_errors), starting well after
the deployment runs. Through the router the slow replica gets a small share (counted by the agents themselves),
and the failing one is ejected, then returned once its fault has ended (the controller's events).

n3's device-health thresholds are set out of reach, so that its failures stay the router's business (the replica
does not move: that is test_device_health_inference's part).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from helpers import AgentProcess, ControllerProcess, linked_agent, wait_for

IRIS = Path(__file__).resolve().parent.parent / "models" / "iris"
SETOSA = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
FAULT_AT_S, FAULT_FOR_S = 30.0, 8.0  # n3's failures, in seconds after it starts: the deployment runs long before
CLIENTS = 4  # concurrent clients: calls in flight are what p2c weighs
MAX_REQUESTS = 50_000  # per client: a bound, should the events never come


class Client(threading.Thread):
    """Requests through the router one after another until told to stop; failures counted."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop = url, threading.Event()
        self.ok = self.failed = 0

    def run(self) -> None:
        with grpcclient.InferenceServerClient(self.url) as client:
            x = grpcclient.InferInput("X", [1, 4], "FP32")
            x.set_data_from_numpy(SETOSA)
            while not self.stop.is_set() and self.ok + self.failed < MAX_REQUESTS:
                try:
                    client.infer("iris", [x])
                    self.ok += 1
                except Exception:  # n3's failures reach the client until it is ejected (INTERNAL is not retried)
                    self.failed += 1


def served(agent: AgentProcess) -> int:
    with grpcclient.InferenceServerClient(agent.grpc_url) as c:
        return sum(s.inference_count for s in c.get_inference_statistics("iris", as_json=False).model_stats)


def events(controller: ControllerProcess) -> list[dict[str, Any]]:
    return [e for e in controller.events() if e["kind"] in ("ReplicaEjected", "ReplicaReturned")]


def test_a_slow_replica_gets_a_small_share_and_a_failing_one_is_ejected_then_returned(tmp_path: Path) -> None:
    def scenario(name: str, faults: list[dict[str, Any]]) -> str:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"count": 1, "load": {"shape": "constant", "value": 0.2}, "faults": faults}))
        return str(path)

    config = tmp_path / "agent.toml"
    config.write_text("[health]\nmin_requests = 100000000\n")
    faults = {"n1": [], "n2": [{"kind": "inference_latency", "device": 0, "delay_ms": 50}],
              "n3": [{"kind": "inference_errors", "device": 0, "at_s": FAULT_AT_S, "duration_s": FAULT_FOR_S}]}
    controller = ControllerProcess(str(tmp_path / "state"))
    agents: dict[str, AgentProcess] = {}
    clients: list[Client] = []
    try:
        for node, fault in faults.items():
            agents[node] = linked_agent(controller, node, str(tmp_path / node), "--sim", "1", "--scenario",
                                        scenario(node, fault), "--config", str(config))
        wait_for(lambda: len(controller.admin_json("nodes").get("nodes", [])) == 3, what="three nodes")
        assert controller.admin("models", "push", str(IRIS), "--name", "iris").returncode == 0
        deployed = controller.admin("deploy", "iris", "--model", "iris", "--replicas", "3", "--device", "gpu",
                                    "--strategy", "spread")
        assert deployed.returncode == 0, deployed.stderr

        def running() -> bool:
            d = controller.deployment("iris")
            return d.get("phase") == "Running" and d.get("ready", 0) == 3

        wait_for(running, timeout=90, what="iris running on three nodes")
        wait_for(lambda: all(served(a) >= 0 for a in agents.values()), what="each agent's statistics")
        before = {node: served(a) for node, a in agents.items()}
        clients = [Client(controller.inference_url) for _ in range(CLIENTS)]
        for c in clients:
            c.start()

        def n3_back() -> list[str]:
            kinds = [e["kind"] for e in events(controller) if "on n3" in e["message"]]
            return kinds if "ReplicaReturned" in kinds else []

        kinds = wait_for(n3_back, timeout=FAULT_AT_S + FAULT_FOR_S + 120, interval=1.0,
                         what="n3's replica ejected, then returned")
        assert kinds[0] == "ReplicaEjected" and kinds[-1] == "ReplicaReturned"
        for c in clients:
            c.stop.set()
        for c in clients:
            c.join(timeout=30)
        gained = {node: served(a) - before[node] for node, a in agents.items()}
        total = sum(gained.values())
        assert total >= 1000, gained  # enough to judge a share by
        assert gained["n2"] < 0.15 * total, gained  # round robin would give it a third
        ejected = [e for e in events(controller) if e["kind"] == "ReplicaEjected" and "on n3" in e["message"]]
        assert all(e["subject"] == "iris" for e in ejected)
        assert any("failures in a row" in e["message"] for e in ejected), ejected
        assert sum(c.failed for c in clients) < 0.05 * sum(c.ok for c in clients)  # ejection kept failures few
    finally:
        for c in clients:
            c.stop.set()
        for agent in agents.values():
            agent.kill()
        controller.kill()
