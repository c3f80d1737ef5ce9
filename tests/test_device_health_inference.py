"""Device health from inference outcomes, end to end: a real controller and a real agent with two simulated GPUs,
one of which starts failing every model run while it serves (as a GPU whose kernels fail does, with ONNX
Runtime's error). Its failures are the signal: the device turns unhealthy, the replica moves to the other GPU,
the requests succeed again, and the GPU returns to the pool after its recovery hold.

The scenario: inference_errors on sim:0 for 10 s, starting well after the deployment runs. The failure window is
3 s, so once most requests in the last 3 s failed (however fast the client goes) sim:0 is unhealthy. sim:0 has
less memory, so binpack places the replica there first.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from helpers import ControllerProcess, linked_agent, wait_for

IRIS = Path(__file__).resolve().parent.parent / "models" / "iris"
SETOSA = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
FAULT_AT_S = 20.0  # seconds after the agent starts: the deployment runs long before
AFTER_MOVE = 100  # requests after the move that must all succeed
MAX_REQUESTS = 20_000


class Client(threading.Thread):
    """Requests through the router, one after another, until told to stop (or MAX_REQUESTS): each outcome in
    order, and the failures' messages."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop = url, threading.Event()
        self.outcomes: list[bool] = []
        self.failed: list[str] = []

    def run(self) -> None:
        with grpcclient.InferenceServerClient(self.url) as client:
            x = grpcclient.InferInput("X", [1, 4], "FP32")
            x.set_data_from_numpy(SETOSA)
            while not self.stop.is_set() and len(self.outcomes) < MAX_REQUESTS:
                try:
                    assert int(client.infer("iris", [x]).as_numpy("label")[0]) == 0
                    self.outcomes.append(True)
                except Exception as exc:  # expected while sim:0 fails and is not yet judged
                    self.failed.append(str(exc))
                    self.outcomes.append(False)
                self.stop.wait(0.01)


def test_a_gpu_failing_its_runs_turns_unhealthy_its_replica_moves_and_it_heals(tmp_path: Path) -> None:
    scenario = tmp_path / "failing.json"
    scenario.write_text(json.dumps({
        "count": 2, "devices": [{"index": 0, "memory_gb": 40}],
        "load": {"shape": "constant", "value": 0.2},
        "faults": [{"kind": "inference_errors", "device": 0, "at_s": FAULT_AT_S, "duration_s": 10, "ratio": 1.0}],
    }))
    config = tmp_path / "agent.toml"
    config.write_text("[health]\nhold_s = 2\nclean_s = 2\nfailure_window_s = 3\n")
    controller = ControllerProcess(str(tmp_path / "state"))
    agent = None
    client = None
    try:
        agent = linked_agent(controller, "n1", str(tmp_path / "n1"), "--sim", "2", "--scenario", str(scenario),
                             "--config", str(config))
        wait_for(lambda: controller.admin_json("nodes").get("nodes"), what="the node")
        assert controller.admin("models", "push", str(IRIS), "--name", "iris").returncode == 0
        assert controller.admin("deploy", "iris", "--model", "iris", "--device", "gpu").returncode == 0

        def replicas() -> list[str]:
            d = controller.deployment("iris")
            if d.get("phase") != "Running" or d.get("ready", 0) != 1:
                return []
            return [r["device"] for r in d["replicas"]]

        assert wait_for(replicas, timeout=60, what="iris running") == ["sim:0"]

        def events(kind: str, subject: str = "n1/sim:0") -> list[dict]:
            return controller.events(kind, subject)

        client = Client(controller.inference_url)
        client.start()
        wait_for(lambda: client.outcomes.count(True) >= 20, what="requests answered through the router")
        assert client.failed == [], "the fault began before the deployment served: raise FAULT_AT_S"
        unhealthy = wait_for(lambda: events("DeviceUnhealthy"), timeout=90, what="sim:0 unhealthy")
        assert re.search(r"\d+/\d+ requests failed in 3 s", unhealthy[0]["message"]), unhealthy[0]
        # the failures were the device's runs, answered as ONNX Runtime's error on sim:0
        assert client.failed and all("RUNTIME_EXCEPTION" in f and "sim:0" in f for f in client.failed), \
            client.failed[:3]
        assert wait_for(lambda: replicas() == ["sim:1"] and replicas(), timeout=60, what="moved to sim:1")
        # the replica is READY on sim:1 only once the agent serves it there: at most the one request then in
        # flight may still have run on sim:0; every request after it succeeds
        moved = len(client.outcomes)
        wait_for(lambda: len(client.outcomes) > moved + AFTER_MOVE, timeout=120, what="requests after the move")
        after = client.outcomes[moved + 1:moved + 1 + AFTER_MOVE]
        assert all(after), f"{after.count(False)} of {AFTER_MOVE} requests failed after the move"
        healthy = wait_for(lambda: events("DeviceHealthy"), timeout=90, what="sim:0 healthy again")
        assert "recovery checks passed" in healthy[0]["message"]
        client.stop.set()
        client.join(timeout=30)
        kinds = [e["kind"] for e in controller.events(subject="n1/sim:0")]
        assert "DeviceUnhealthy" in kinds and kinds[-2:] == ["DeviceRecovering", "DeviceHealthy"], kinds
        assert events("DeviceHealthy", "n1/sim:1") == [] and events("DeviceUnhealthy", "n1/sim:1") == []
        assert any("n1/sim:0 unhealthy" in e["message"] for e in controller.events("Moved"))
        text = agent.scrape()
        assert re.search(r'xpud_device_health_transitions_total\{from_state="(healthy|suspect)",hw_id="sim:0",'
                         r'reason="inference_failures",to_state="unhealthy"\} 1\.0', text), \
            [line for line in text.splitlines() if "transitions_total{" in line]
        assert 'xpud_device_health_state{hw_id="sim:0",state="healthy"} 1.0' in text
        pool = {d["device"]["id"]: d for d in controller.admin_json("pool")["devices"]}
        assert pool["sim:0"]["sample"].get("health_state", "healthy") == "healthy"  # the tables' words
    finally:
        if client is not None:
            client.stop.set()
        if agent is not None:
            agent.kill()
        controller.kill()
