"""The control plane over real processes on loopback: join, deploy, route, and SIGKILL of agents and controller."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from helpers import ControllerProcess, linked_agent, wait_for

IRIS = Path(__file__).resolve().parent.parent / "models" / "iris"
SETOSA = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)


def infer(url: str, name: str = "iris") -> int:
    with grpcclient.InferenceServerClient(url) as client:
        x = grpcclient.InferInput("X", [1, 4], "FP32")
        x.set_data_from_numpy(SETOSA)
        return int(client.infer(name, [x]).as_numpy("label")[0])


def deployment(controller: ControllerProcess, name: str) -> dict:
    return controller.deployment(name)


def running(controller: ControllerProcess, name: str, replicas: int):  # type: ignore[no-untyped-def]
    d = deployment(controller, name)
    return d if d.get("phase") == "Running" and d.get("ready", 0) == replicas else None


def events(controller: ControllerProcess) -> list[dict]:
    return controller.events()


@pytest.fixture
def cluster(tmp_path):
    started: list = []

    def controller(port: int | None = None) -> ControllerProcess:
        c = ControllerProcess(str(tmp_path / "state"), port)
        started.append(c)
        return c

    def agent(c: ControllerProcess, node: str, *extra: str):  # type: ignore[no-untyped-def]
        a = linked_agent(c, node, str(tmp_path / node), "--sim", "1", *extra)
        started.append(a)
        return a

    yield controller, agent
    for proc in reversed(started):
        proc.kill()


def test_join_push_deploy_route(cluster):
    start_controller, start_agent = cluster
    c = start_controller()
    start_agent(c, "n1", "--labels", "rack=r1", "--zone", "z1")
    start_agent(c, "n2", "--labels", "rack=r2", "--zone", "z1")
    nodes = wait_for(lambda: [n for n in c.admin_json("nodes").get("nodes", []) if n["state"] == "Ready"] if len(
        c.admin_json("nodes").get("nodes", [])) == 2 else None, what="two Ready nodes")
    assert {n["name"] for n in nodes} == {"n1", "n2"}
    assert {n["labels"]["rack"] for n in nodes} == {"r1", "r2"}
    pushed = c.admin("models", "push", str(IRIS), "--name", "iris")
    assert pushed.returncode == 0 and "pushed iris:1" in pushed.stdout, pushed.stderr
    assert "  input  " in pushed.stdout and "  output " in pushed.stdout, pushed.stdout  # what the check found
    result = c.admin("deploy", "iris", "--model", "iris:1", "--replicas", "2", "--strategy", "spread")
    assert result.returncode == 0, result.stderr
    d = wait_for(lambda: running(c, "iris", 2), what="iris Running")
    assert sorted(r["node"] for r in d["replicas"]) == ["n1", "n2"]
    assert infer(c.inference_url) == 0  # through the router, by deployment name
    pool = c.admin_json("pool")["devices"]
    assert sum("iris" in d.get("replicas", []) for d in pool) == 2
    assert all(d["node_state"] == "Ready" for d in pool)
    table = c.admin("pool").stdout
    assert "iris" in table and "ALLOCATED/TOTAL" in table
    # a deployment pinned by label lands only where the label matches
    assert c.admin("deploy", "pinned", "--model", "iris", "--label", "rack=r2").returncode == 0
    pinned = wait_for(lambda: running(c, "pinned", 1), what="pinned Running")
    assert [r["node"] for r in pinned["replicas"]] == ["n2"]
    assert c.admin("undeploy", "pinned").returncode == 0
    kinds = [e["kind"] for e in events(c)]
    assert "NodeJoined" in kinds and "Placed" in kinds and "DeploymentDeleted" in kinds


def test_agent_sigkill_moves_its_replicas(cluster):
    start_controller, start_agent = cluster
    c = start_controller()
    start_agent(c, "n1")
    victim = start_agent(c, "n2")
    wait_for(lambda: len(c.admin_json("nodes").get("nodes", [])) == 2, what="two nodes")
    assert c.admin("models", "push", str(IRIS), "--name", "iris").returncode == 0
    assert c.admin("deploy", "iris", "--model", "iris", "--replicas", "2", "--strategy", "spread").returncode == 0
    wait_for(lambda: running(c, "iris", 2), what="iris Running")
    victim.kill()  # SIGKILL
    lost = wait_for(lambda: [e for e in events(c) if e["kind"] == "NodeLost" and e["subject"] == "n2"],
                    what="n2 Lost")
    moved = wait_for(lambda: running(c, "iris", 2) if all(r["node"] == "n1" for r in
                                                          deployment(c, "iris").get("replicas", [])) else None,
                     what="both replicas on n1")
    assert len(moved["replicas"]) == 2
    assert any(e["kind"] == "Moved" and "n2 lost" in e["message"] for e in events(c))
    assert lost[0]["time"] > 0
    assert infer(c.inference_url) == 0


def test_controller_sigkill_agents_keep_serving_and_a_restart_recovers(cluster):
    start_controller, start_agent = cluster
    c = start_controller()
    a1 = start_agent(c, "n1")
    a2 = start_agent(c, "n2")
    wait_for(lambda: len(c.admin_json("nodes").get("nodes", [])) == 2, what="two nodes")
    assert c.admin("models", "push", str(IRIS), "--name", "iris").returncode == 0
    assert c.admin("deploy", "iris", "--model", "iris", "--replicas", "2", "--strategy", "spread").returncode == 0
    before = wait_for(lambda: running(c, "iris", 2), what="iris Running")
    seq_before = max(int(e["seq"]) for e in events(c))
    c.kill()  # SIGKILL the controller: the data plane goes on
    for _ in range(20):
        assert infer(a1.grpc_url) == 0 and infer(a2.grpc_url) == 0
    served = {a.grpc_url: _count(a.grpc_url) for a in (a1, a2)}
    c2 = start_controller(c.port)  # same --state, same address
    wait_for(lambda: sorted(n["state"] for n in c2.admin_json("nodes").get("nodes", [])) == ["Ready", "Ready"],
             what="both nodes back")
    after = wait_for(lambda: running(c2, "iris", 2), what="iris Running again")
    assert sorted((r["node"], r["device"]) for r in after["replicas"]) == \
        sorted((r["node"], r["device"]) for r in before["replicas"])  # nothing re-placed
    new = [e for e in events(c2) if int(e["seq"]) > seq_before]
    assert not [e for e in new if e["kind"] in ("Moved", "Placed", "Preempted")], new
    for a in (a1, a2):  # the models were not reloaded: their statistics kept counting
        assert _count(a.grpc_url) >= served[a.grpc_url]
    assert infer(c2.inference_url) == 0


def _count(url: str) -> int:
    with grpcclient.InferenceServerClient(url) as client:
        return int(client.get_inference_statistics("iris").model_stats[0].inference_count)


def test_bad_admin_input_is_clear(cluster):
    start_controller, start_agent = cluster
    c = start_controller()
    start_agent(c, "n1")
    wait_for(lambda: c.admin_json("nodes").get("nodes"), what="a node")
    result = c.admin("deploy", "web", "--model", "ghost")
    assert result.returncode == 1 and "unknown model 'ghost'" in result.stderr and "Traceback" not in result.stderr
    assert c.admin("models", "push", str(IRIS), "--name", "iris").returncode == 0
    result = c.admin("deploy", "Bad_Name!", "--model", "iris")
    assert result.returncode == 2 and "is not valid" in result.stderr  # refused by the CLI, before any call
    assert c.admin("deploy", "web", "--model", "iris").returncode == 0
    result = c.admin("deploy", "web", "--model", "iris")
    assert result.returncode == 1 and "already exists" in result.stderr
    result = c.admin("deploy", "huge", "--model", "iris", "--memory", "4TiB")
    assert result.returncode == 0, result.stderr
    huge = deployment(c, "huge")
    assert huge["phase"] == "Pending" and "too little free memory" in huge["reason"], huge
    assert "Pending" in c.admin("deployments").stdout
    assert any(e["kind"] == "Pending" and e["subject"] == "huge" for e in events(c))
    result = c.admin("undeploy", "nope")
    assert result.returncode == 1 and "unknown deployment 'nope'" in result.stderr
    result = c.admin("drain", "nope")
    assert result.returncode == 1 and "unknown node 'nope'" in result.stderr
    result = c.admin("models", "push", str(Path(__file__)), "--name", "notonnx")
    assert result.returncode == 1 and "is not an ONNX model" in result.stderr


def test_drain_moves_replicas_and_uncordon_restores(cluster):
    start_controller, start_agent = cluster
    c = start_controller()
    start_agent(c, "n1")
    start_agent(c, "n2")
    wait_for(lambda: len(c.admin_json("nodes").get("nodes", [])) == 2, what="two nodes")
    assert c.admin("models", "push", str(IRIS), "--name", "iris").returncode == 0
    assert c.admin("deploy", "iris", "--model", "iris", "--replicas", "2", "--strategy", "spread").returncode == 0
    wait_for(lambda: running(c, "iris", 2), what="iris Running")
    assert c.admin("drain", "n1").returncode == 0
    wait_for(lambda: running(c, "iris", 2) if all(r["node"] == "n2" for r in deployment(c, "iris")["replicas"])
             else None, what="replicas off n1")
    nodes = {n["name"]: n for n in c.admin_json("nodes")["nodes"]}
    assert nodes["n1"].get("cordoned") is True
    assert c.admin("uncordon", "n1").returncode == 0
    assert not {n["name"]: n for n in c.admin_json("nodes")["nodes"]}["n1"].get("cordoned", False)


def test_apply_file_creates_and_updates(cluster, tmp_path):
    start_controller, start_agent = cluster
    c = start_controller()
    start_agent(c, "n1")
    wait_for(lambda: c.admin_json("nodes").get("nodes"), what="a node")
    assert c.admin("models", "push", str(IRIS), "--name", "iris").returncode == 0
    doc = tmp_path / "app.toml"
    doc.write_text('[[deployment]]\nname = "a"\nmodel = "iris:1"\nreplicas = 1\nmemory = "128MiB"\n\n'
                   '[[deployment]]\nname = "b"\nmodel = "iris"\ndevice = "cpu"\n')
    assert c.admin("apply", "-f", str(doc)).returncode == 0
    wait_for(lambda: running(c, "a", 1) and running(c, "b", 1), what="a and b Running")
    assert deployment(c, "b")["replicas"][0]["device"] == "cpu:0"
    doc.write_text('[[deployment]]\nname = "a"\nmodel = "iris:1"\nreplicas = 2\nmemory = "128MiB"\n')
    assert c.admin("apply", "-f", str(doc)).returncode == 0  # apply again: an update, not a duplicate
    wait_for(lambda: running(c, "a", 2), what="a scaled to 2")
    yaml = tmp_path / "app.yaml"
    yaml.write_text("deployments:\n  - name: c\n    model: iris\n    replicas: 1\n")
    assert c.admin("apply", "-f", str(yaml)).returncode == 0
    bad = tmp_path / "bad.toml"
    bad.write_text('[[deployment]]\nname = "d"\n')
    result = c.admin("apply", "-f", str(bad))
    assert result.returncode == 2 and "has no 'model'" in result.stderr


def test_a_node_that_comes_back_is_reconciled_not_duplicated(cluster):
    start_controller, start_agent = cluster
    c = start_controller()
    start_agent(c, "n1")
    n2 = start_agent(c, "n2")
    wait_for(lambda: len(c.admin_json("nodes").get("nodes", [])) == 2, what="two nodes")
    assert c.admin("models", "push", str(IRIS), "--name", "iris").returncode == 0
    assert c.admin("deploy", "iris", "--model", "iris", "--replicas", "2", "--strategy", "spread").returncode == 0
    wait_for(lambda: running(c, "iris", 2), what="iris Running")
    n2.kill()
    wait_for(lambda: running(c, "iris", 2) if all(r["node"] == "n1" for r in deployment(c, "iris")["replicas"])
             else None, what="replicas moved to n1")
    back = start_agent(c, "n2")  # same node name, same cache directory
    wait_for(lambda: {n["name"]: n["state"] for n in c.admin_json("nodes")["nodes"]}.get("n2") == "Ready",
             what="n2 Ready again")
    nodes = c.admin_json("nodes")["nodes"]
    assert sorted(n["name"] for n in nodes) == ["n1", "n2"]  # one entry per node, not two
    d = wait_for(lambda: running(c, "iris", 2), what="iris still Running")
    assert len(d["replicas"]) == 2  # not duplicated by what n2 ran before it died

    def n2_dropped_its_copy() -> bool:
        with grpcclient.InferenceServerClient(back.grpc_url) as client:
            return not client.is_model_ready("iris")

    wait_for(n2_dropped_its_copy, what="n2 to drop the replica that moved away")


def test_events_follow_streams_new_events(cluster):
    import subprocess

    from helpers import drain, xpud_command

    start_controller, start_agent = cluster
    c = start_controller()
    follow = subprocess.Popen(xpud_command("events", "--follow", "--controller", c.address),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = drain(follow, lines)
    try:
        start_agent(c, "n9")
        wait_for(lambda: any("NodeJoined" in line and "n9" in line for line in lines), what="a followed event")
    finally:
        follow.terminate()
        follow.wait(timeout=10)
        reader.join(timeout=5)


def test_a_model_unloaded_behind_the_controllers_back_heals(cluster):
    """Drift: `RepositoryModelUnload` on the agent's own port. The agent reports the replica FAILED at once (the
    controller stops routing to it and records ReplicaFailed), loads it again from its desired state, and the
    deployment serves through the router again (ReplicaRecovered)."""
    start_controller, start_agent = cluster
    c = start_controller()
    a = start_agent(c, "n1")
    assert c.admin("models", "push", str(IRIS), "--name", "iris").returncode == 0
    assert c.admin("deploy", "iris", "--model", "iris").returncode == 0
    wait_for(lambda: running(c, "iris", 1), what="iris Running")
    with grpcclient.InferenceServerClient(a.grpc_url) as client:
        client.unload_model("iris")
    healed = wait_for(lambda: [e for e in events(c) if e["kind"] == "ReplicaRecovered"], what="ReplicaRecovered")
    (failed,) = [e for e in events(c) if e["kind"] == "ReplicaFailed"]
    assert failed["subject"] == "iris" and "on n1: model is no longer loaded" in failed["message"], failed
    assert healed[0]["message"] == "on n1: serving again"
    wait_for(lambda: running(c, "iris", 1), what="iris Running again")
    assert infer(c.inference_url) == 0
