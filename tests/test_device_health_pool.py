"""Device health end to end: a real controller and a real agent with two simulated GPUs, one of which has a storm
of recoverable XIDs while it serves. Its replica moves to the other GPU before a request fails, and the GPU
returns to the pool once it has passed its recovery hold.

The scenario: XID 13 (recoverable) at 4 Hz for 4 s on sim:0, starting well after the deployment is running. The
simulator keeps serving on the device meanwhile (XIDs are events, not failures), so the first XID makes it
Suspect, the fifth within the window Unhealthy, and the move happens while requests still succeed. sim:0 has
less memory, so binpack places the replica there first.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from helpers import ControllerProcess, linked_agent, wait_for

IRIS = Path(__file__).resolve().parent.parent / "models" / "iris"
SETOSA = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
STORM_AT_S = 20.0  # seconds after the agent starts: the deployment runs long before
MAX_REQUESTS = 20_000


class Client(threading.Thread):
    """Requests through the router, one after another, until told to stop (or MAX_REQUESTS)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop = url, threading.Event()
        self.ok, self.failed = 0, []  # type: ignore[var-annotated]

    def run(self) -> None:
        with grpcclient.InferenceServerClient(self.url) as client:
            x = grpcclient.InferInput("X", [1, 4], "FP32")
            x.set_data_from_numpy(SETOSA)
            while not self.stop.is_set() and self.ok + len(self.failed) < MAX_REQUESTS:
                try:
                    assert int(client.infer("iris", [x]).as_numpy("label")[0]) == 0
                    self.ok += 1
                except Exception as exc:  # counted: the test asserts there are none
                    self.failed.append(repr(exc))
                self.stop.wait(0.01)


def test_an_xid_storm_moves_the_replica_before_requests_fail_and_the_device_heals(tmp_path: Path) -> None:
    scenario = tmp_path / "storm.json"
    scenario.write_text(json.dumps({
        "count": 2, "devices": [{"index": 0, "memory_gb": 40}],
        "load": {"shape": "constant", "value": 0.2},
        "faults": [{"kind": "xid_storm", "device": 0, "at_s": STORM_AT_S, "duration_s": 4, "rate_hz": 4,
                    "code": 13}],
    }))
    config = tmp_path / "agent.toml"
    config.write_text("[health]\nhold_s = 2\nclean_s = 2\nxid_window_s = 10\n")
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

        assert not events("DeviceUnhealthy"), "the storm began before the deployment ran: raise STORM_AT_S"
        client = Client(controller.inference_url)
        client.start()
        wait_for(lambda: client.ok >= 20, what="requests answered through the router")
        unhealthy = wait_for(lambda: events("DeviceUnhealthy"), timeout=60, what="sim:0 unhealthy")
        assert "XID storm" in unhealthy[0]["message"]
        assert wait_for(lambda: replicas() == ["sim:1"] and replicas(), timeout=60, what="moved to sim:1")
        healthy = wait_for(lambda: events("DeviceHealthy"), timeout=60, what="sim:0 healthy again")
        assert "recovery checks passed" in healthy[0]["message"]
        client.stop.set()
        client.join(timeout=30)
        kinds = [e["kind"] for e in controller.events(subject="n1/sim:0")]
        assert kinds == ["DeviceSuspect", "DeviceUnhealthy", "DeviceRecovering", "DeviceHealthy"], kinds
        assert any("n1/sim:0 unhealthy" in e["message"] for e in controller.events("Moved"))
        assert client.failed == [], client.failed[:5]
        assert client.ok > 20
        # healthy again: it takes replicas again (the pool view shows it without a state)
        pool = {d["device"]["id"]: d for d in controller.admin_json("pool")["devices"]}
        assert pool["sim:0"]["sample"].get("health_state", "healthy") == "healthy"  # the tables' words
        text = agent.scrape()
        assert 'xpud_device_health_transitions_total{from_state="suspect",hw_id="sim:0",reason="xid_storm",' \
               'to_state="unhealthy"} 1.0' in text
        assert 'xpud_device_health_state{hw_id="sim:0",state="healthy"} 1.0' in text
        assert 'xpud_device_xid_errors_total{hw_id="sim:0",xid="13"} 16.0' in text
    finally:
        if client is not None:
            client.stop.set()
        if agent is not None:
            agent.kill()
        controller.kill()
