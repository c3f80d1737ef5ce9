"""A canary on one node, over real processes: one agent with two simulated devices serves both versions of a split
deployment side by side (one per replica), the router's split reaches each, a pinned version reaches that one, and
one version at 100 again leaves only that version loaded there."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from test_traffic import FACTORS, split_ready, version_of
from tritonclient.utils import InferenceServerException

from helpers import AgentProcess, ControllerProcess, versioned_web, wait_for
from models import onnx_bytes, scale

N = 200  # requests for the 50/50 split


@pytest.fixture
def one_node(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A controller, one agent with two simulated devices, model m in versions 1 and 2, web on m:1, 2 replicas."""
    started: list = []
    try:
        c = versioned_web(tmp_path, started, {v: onnx_bytes(scale(4, f)) for v, f in FACTORS.items()}, ("n1",), 2,
                          "--replicas", "2")
        agent = started[1]
        wait_for(lambda: split_ready(c, {"1": 100}), timeout=60, what="web Running on version 1")
        yield c, agent
    finally:
        for proc in reversed(started):
            proc.kill()


class Load:
    """Requests sent one after another through the router while the versions change on the node: every one answered."""

    def __init__(self, url: str) -> None:
        self.url, self.stop, self.answered, self.errors = url, threading.Event(), Counter[str](), list[str]()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with grpcclient.InferenceServerClient(self.url) as client:
            while not self.stop.is_set():
                try:
                    self.answered[version_of(client)] += 1
                except InferenceServerException as exc:
                    self.errors.append(str(exc))

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def loaded(agent: AgentProcess) -> list[str]:
    """The versions of web the agent itself has loaded (its own ModelMetadata)."""
    with grpcclient.InferenceServerClient(agent.grpc_url) as client:
        return list(client.get_model_metadata("web").versions)


def test_both_versions_of_a_split_serve_side_by_side_on_one_node(one_node: tuple[ControllerProcess,
                                                                                  AgentProcess]) -> None:
    c, agent = one_node
    assert loaded(agent) == ["1"]
    with Load(c.inference_url) as load:  # version 1 moves to one device, version 2 loads on the other
        result = c.admin("traffic", "web", "1=50", "2=50")
        assert result.returncode == 0, result.stderr
        d = wait_for(lambda: split_ready(c, {"1": 50, "2": 50}), timeout=60, what="both versions ready on n1")
    assert load.errors == [] and load.answered["1"] > 0, (load.errors[:3], load.answered)
    assert sorted((r["node"], r["version"], r["state"]) for r in d["replicas"]) == \
        [("n1", "1", "READY"), ("n1", "2", "READY")]
    assert {v["version"]: (v["replicas"], v["ready"]) for v in d["versions"]} == {"1": (1, 1), "2": (1, 1)}
    assert loaded(agent) == ["1", "2"]
    with grpcclient.InferenceServerClient(c.inference_url) as client:
        served = Counter(version_of(client) for _ in range(N))
        # binomial(200, 0.5): mean 100, standard deviation about 7; 5 deviations either way
        assert set(served) == {"1", "2"} and 65 <= served["2"] <= 135, served
        assert {version_of(client, model_version="1") for _ in range(20)} == {"1"}
        assert {version_of(client, model_version="2") for _ in range(20)} == {"2"}
        keyed = {key: version_of(client, parameters={"xpud-key": key}) for key in ("alice", "bob", "carol")}
        for key, version in keyed.items():  # the same key, the same version, on the one node as on several
            assert {version_of(client, parameters={"xpud-key": key}) for _ in range(10)} == {version}
    # the agent asked directly, unpinned: its highest version (as with a single version)
    with grpcclient.InferenceServerClient(agent.grpc_url) as client:
        assert {version_of(client) for _ in range(5)} == {"2"}

    with Load(c.inference_url) as load:  # version 1 unloads, drained; version 2 takes both devices
        assert c.admin("traffic", "web", "2=100").returncode == 0
        wait_for(lambda: split_ready(c, {"2": 100}) if all(r["version"] == "2" for r in c.deployment("web")["replicas"])
                 else None, timeout=60, what="version 2 alone")
        wait_for(lambda: loaded(agent) == ["2"], timeout=30, what="only version 2 loaded on n1")
    assert load.errors == [] and load.answered["2"] > 0, (load.errors[:3], load.answered)
    with grpcclient.InferenceServerClient(c.inference_url) as client:
        assert {version_of(client) for _ in range(20)} == {"2"}
    replicas = c.deployment("web")["replicas"]
    assert sorted((r["version"], r["state"]) for r in replicas) == [("2", "READY"), ("2", "READY")]
