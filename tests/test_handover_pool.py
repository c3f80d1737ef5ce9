"""Make-before-break across nodes, end to end: a real controller and two real agents (one simulated GPU each), a
client sending requests through the controller's router all along. The replica moves from n1 to n2, off a GPU that
turns unhealthy while it still serves (an XID storm), or off a drained node; n1 keeps serving it until n2 reports
its replica READY, so no request fails, and n1 unloads it only after n2 has loaded it (the agents' log lines, on one
clock, say in which order).

n1's GPU has less memory, so binpack places the replica there first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from test_device_health_pool import IRIS, Client

from helpers import AgentProcess, ControllerProcess, linked_agent, wait_for

STORM_AT_S = 20.0  # seconds after n1's agent starts: the deployment runs long before


def _deployment(c: ControllerProcess) -> dict:
    return c.deployment("iris")


def _running_on(c: ControllerProcess, node: str) -> bool:
    d = _deployment(c)
    return d.get("phase") == "Running" and [r["node"] for r in d.get("replicas", [])] == [node]


def _events(c: ControllerProcess, kind: str) -> list[dict]:
    return c.events(kind)


def _logged(agent: AgentProcess, pattern: str) -> datetime:
    """When the agent logged a line matching `pattern` (its asctime, to the millisecond)."""
    for line in list(agent.lines):
        if re.search(pattern, line):
            return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    raise AssertionError(f"no line matches {pattern!r}:\n{''.join(agent.lines[-30:])}")


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[tuple[ControllerProcess, AgentProcess, AgentProcess, Client]]:
    """n1 (a 40 GB GPU, an XID storm at STORM_AT_S) and n2 (an 80 GB GPU); iris running on n1, a client sending
    requests through the router."""
    scenario = tmp_path / "storm.json"
    scenario.write_text(json.dumps({
        "count": 1, "devices": [{"index": 0, "memory_gb": 40}],
        "load": {"shape": "constant", "value": 0.2},
        "faults": [{"kind": "xid_storm", "device": 0, "at_s": STORM_AT_S, "duration_s": 4, "rate_hz": 4,
                    "code": 13}],
    }))
    config = tmp_path / "agent.toml"
    config.write_text("[health]\nhold_s = 2\nclean_s = 2\nxid_window_s = 10\n")
    started: list[AgentProcess | ControllerProcess] = []
    client = None
    try:
        c = ControllerProcess(str(tmp_path / "state"))
        started.append(c)
        n1 = linked_agent(c, "n1", str(tmp_path / "n1"), "--sim", "1", "--scenario", str(scenario),
                          "--config", str(config))
        started.append(n1)
        n2 = linked_agent(c, "n2", str(tmp_path / "n2"), "--sim", "1", "--config", str(config))
        started.append(n2)
        wait_for(lambda: len(c.admin_json("nodes").get("nodes", [])) == 2, what="two nodes")
        assert c.admin("models", "push", str(IRIS), "--name", "iris").returncode == 0
        assert c.admin("deploy", "iris", "--model", "iris", "--device", "gpu").returncode == 0
        wait_for(lambda: _running_on(c, "n1"), timeout=60, what="iris running on n1")
        assert not _events(c, "DeviceUnhealthy"), "the storm began before the deployment ran: raise STORM_AT_S"
        client = Client(c.inference_url)
        client.start()
        wait_for(lambda: client.ok >= 20, what="requests answered through the router")
        yield c, n1, n2, client
    finally:
        if client is not None:
            client.stop.set()
            client.join(timeout=30)
        for proc in reversed(started):
            proc.kill()


def _handed_over(c: ControllerProcess, n1: AgentProcess, n2: AgentProcess, client: Client, cause: str) -> None:
    """The replica is on n2 and handed over; n2 loaded it before n1 unloaded it; no request failed."""
    wait_for(lambda: _running_on(c, "n2"), timeout=60, what="iris running on n2")
    (handed,) = wait_for(lambda: _events(c, "HandedOver"), timeout=60, what="HandedOver")
    assert "n1/sim:0" in handed["message"] and "n2/sim:0" in handed["message"] and cause in handed["message"]
    wait_for(lambda: any("deployment iris removed from this node" in line for line in n1.lines), timeout=60,
             what="n1 unloads iris")
    assert _logged(n2, r"deployment iris: model iris:\S+ READY") <= _logged(n1, "deployment iris removed")
    done = client.ok
    wait_for(lambda: client.ok >= done + 20, what="requests after the handover")  # served by n2 alone now
    client.stop.set()
    client.join(timeout=30)
    moved = [e for e in c.events() if e["kind"] in ("Moved", "HandedOver")]
    assert [e["kind"] for e in moved] == ["Moved", "HandedOver"], moved
    assert not _events(c, "HandoverExpired")
    assert client.failed == [], client.failed[:5]


def test_a_replica_off_an_unhealthy_gpu_moves_to_another_node_without_a_failed_request(two_nodes) -> None:
    c, n1, n2, client = two_nodes
    unhealthy = wait_for(lambda: _events(c, "DeviceUnhealthy"), timeout=60, what="n1/sim:0 unhealthy")
    assert unhealthy[0]["subject"] == "n1/sim:0"
    _handed_over(c, n1, n2, client, "unhealthy")


def test_drain_moves_a_replica_to_another_node_without_a_failed_request(two_nodes) -> None:
    c, n1, n2, client = two_nodes
    assert c.admin("drain", "n1").returncode == 0
    _handed_over(c, n1, n2, client, "draining")
