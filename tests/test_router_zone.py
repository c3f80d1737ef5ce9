"""Zone affinity end to end: a real controller whose router is in zone a (--zone a) and two real agents with one
simulated GPU each, n1 in zone a and n2 in zone b, each serving a replica of iris (real ONNX Runtime). Requests
with the ``xpud-zone: b`` parameter all go to n2, those without one to n1 (the router's zone), as counted by the
agents themselves; with n2 gone, zone b's requests spill over to n1 and are all served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from helpers import AgentProcess, ControllerProcess, linked_agent, wait_for

IRIS = Path(__file__).resolve().parent.parent / "models" / "iris"
SETOSA = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)
REQUESTS = 30


def served(agent: AgentProcess) -> int:
    with grpcclient.InferenceServerClient(agent.grpc_url) as c:
        return sum(s.inference_count for s in c.get_inference_statistics("iris", as_json=False).model_stats)


def send(url: str, count: int, zone: str | None) -> int:
    """`count` requests one after another (the xpud-zone parameter set when `zone` is): how many answered."""
    with grpcclient.InferenceServerClient(url) as c:
        x = grpcclient.InferInput("X", [1, 4], "FP32")
        x.set_data_from_numpy(SETOSA)
        parameters = {"xpud-zone": zone} if zone is not None else None
        return sum(c.infer("iris", [x], parameters=parameters).get_response().model_name == "iris"
                   for _ in range(count))


def test_a_request_zone_goes_to_its_replicas_and_spills_over_when_they_are_gone(tmp_path: Path) -> None:
    controller = ControllerProcess(str(tmp_path / "state"), None, "--zone", "a")
    agents: dict[str, AgentProcess] = {}
    try:
        for node, zone in (("n1", "a"), ("n2", "b")):
            agents[node] = linked_agent(controller, node, str(tmp_path / node), "--sim", "1", "--zone", zone)
        wait_for(lambda: len(controller.admin_json("nodes").get("nodes", [])) == 2, what="two nodes")
        assert controller.admin("models", "push", str(IRIS), "--name", "iris").returncode == 0
        deployed = controller.admin("deploy", "iris", "--model", "iris", "--replicas", "2", "--device", "gpu",
                                    "--strategy", "spread")
        assert deployed.returncode == 0, deployed.stderr
        wait_for(lambda: controller.deployment("iris").get("ready") == 2, timeout=60, what="iris on both nodes")

        before = {node: served(a) for node, a in agents.items()}
        assert send(controller.inference_url, REQUESTS, "b") == REQUESTS
        after = {node: served(a) for node, a in agents.items()}
        assert after["n2"] - before["n2"] == REQUESTS and after["n1"] == before["n1"], (before, after)

        assert send(controller.inference_url, REQUESTS, None) == REQUESTS  # no parameter: the router's zone, a
        again = {node: served(a) for node, a in agents.items()}
        assert again["n1"] - after["n1"] == REQUESTS and again["n2"] == after["n2"], (after, again)

        agents.pop("n2").kill()  # zone b has no replica left: its requests spill over to a
        assert send(controller.inference_url, REQUESTS, "b") == REQUESTS
        assert served(agents["n1"]) - again["n1"] == REQUESTS
    finally:
        for agent in agents.values():
            agent.kill()
        controller.kill()
