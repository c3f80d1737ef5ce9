"""`--replicas 0` means 0: the deployment is kept with nothing running (never a silent 1), and `xpud deploy` on it
with --replicas N runs it again."""

from __future__ import annotations

from pathlib import Path

from helpers import IRIS, ControllerProcess, expect_status, infer, linked_agent, wait_for


def test_zero_replicas_keeps_the_deployment_with_nothing_running(tmp_path: Path) -> None:
    c = ControllerProcess(str(tmp_path / "state"))
    agent = None
    try:
        agent = linked_agent(c, "n1", str(tmp_path / "n1"), "--sim", "1")
        assert c.admin("models", "push", str(IRIS), "--name", "iris").returncode == 0
        deployed = c.admin("deploy", "iris", "--model", "iris", "--replicas", "0")
        assert deployed.returncode == 0, deployed.stderr
        d = c.deployment("iris")
        assert d["phase"] == "Stopped" and "0 replicas" in d["reason"] and not d.get("replicas"), d
        assert d["spec"].get("replicas", 0) == 0, d
        with expect_status("UNAVAILABLE", "no ready replica", "0 replicas"):
            infer(c.inference_url)
        scaled = c.admin("deploy", "iris", "--model", "iris", "--replicas", "1")  # the same model: a scale
        assert scaled.returncode == 0, scaled.stderr
        wait_for(lambda: c.deployment("iris").get("phase") == "Running", timeout=60, what="iris Running")
        assert infer(c.inference_url) == 0
        again = c.admin("deploy", "iris", "--model", "iris")  # nothing to change: refused as before
        assert again.returncode == 1 and "already exists" in again.stderr
        stopped = c.admin("deploy", "iris", "--model", "iris", "--replicas", "0")
        assert stopped.returncode == 0, stopped.stderr
        wait_for(lambda: not c.deployment("iris").get("replicas") and c.deployment("iris")["phase"] == "Stopped",
                 timeout=30, what="iris stopped")
        wait_for(lambda: not [n for n in c.admin_json("pool")["devices"] if n.get("replicas")], timeout=30,
                 what="nothing running on the pool")
    finally:
        if agent is not None:
            agent.kill()
        c.kill()


def test_a_drain_that_leaves_a_deployment_without_a_ready_replica_needs_force(tmp_path: Path) -> None:
    c = ControllerProcess(str(tmp_path / "state"))
    agent = None
    try:
        agent = linked_agent(c, "n1", str(tmp_path / "n1"), "--sim", "1")
        assert c.admin("models", "push", str(IRIS), "--name", "iris").returncode == 0
        assert c.admin("deploy", "iris", "--model", "iris").returncode == 0
        wait_for(lambda: c.deployment("iris").get("phase") == "Running", timeout=60, what="iris Running")
        refused = c.admin("drain", "n1")  # no other node: iris would have no ready replica
        assert refused.returncode == 2, refused.stderr
        assert "leaves iris with no ready replica" in refused.stderr and "--force" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert not c.admin_json("nodes")["nodes"][0].get("cordoned")  # nothing changed
        forced = c.admin("drain", "n1", "--force")
        assert forced.returncode == 0, forced.stderr
        assert c.admin_json("nodes")["nodes"][0].get("cordoned") is True
    finally:
        if agent is not None:
            agent.kill()
        c.kill()


def test_top_shows_the_pool_and_deployments(tmp_path: Path) -> None:
    import json

    c = ControllerProcess(str(tmp_path / "state"))
    agent = None
    try:
        agent = linked_agent(c, "n1", str(tmp_path / "n1"), "--sim", "1")
        assert c.admin("models", "push", str(IRIS), "--name", "iris").returncode == 0
        assert c.admin("deploy", "iris", "--model", "iris", "--device", "gpu").returncode == 0
        wait_for(lambda: c.deployment("iris").get("phase") == "Running", timeout=60, what="iris Running")
        assert infer(c.inference_url) == 0
        top = c.admin("top", "--count", "2", "--interval", "0.1")
        assert top.returncode == 0, top.stderr
        assert top.stdout.count("xpud top ") == 2 and "nodes: Ready 1" in top.stdout, top.stdout
        assert "sim:0" in top.stdout and "iris" in top.stdout and "Running" in top.stdout
        frames = c.admin("top", "--count", "1", "--json").stdout.strip().splitlines()
        assert len(frames) == 1 and json.loads(frames[0])["deployments"]["deployments"][0]["ready"] == 1
        assert c.admin("top", "--interval", "0").returncode == 2
    finally:
        if agent is not None:
            agent.kill()
        c.kill()
