"""Rolling updates over real processes: `xpud deploy NAME --model N:V2` on a serving deployment and `xpud rollback`
move it node by node under steady load from concurrent tritonclient callers, with no request failed."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from helpers import ControllerProcess, versioned_web, wait_for
from models import onnx_bytes, scale

FACTORS = {"1": 2.0, "2": 3.0}  # each version scales by its own factor: the answer shows which one served
CALLERS = 4
CAP = 1500  # requests per caller at most: the load is bounded whatever happens
ONES = np.ones((1, 4), np.float32)


@pytest.fixture
def rolled(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A controller, two simulated nodes, model m in versions 1 and 2, deployment web (m:1, 2 replicas, spread)."""
    started: list = []
    try:
        c = versioned_web(tmp_path, started, {v: onnx_bytes(scale(4, f)) for v, f in FACTORS.items()})
        wait_for(lambda: serving(c, "1"), timeout=60, what="web Running on version 1")
        yield c
    finally:
        for proc in reversed(started):
            proc.kill()


def serving(c: ControllerProcess, version: str) -> dict | None:
    """The deployment once no rollout is in progress and every replica is READY on `version`."""
    d = c.deployment("web")
    replicas = d.get("replicas", [])
    done = not d.get("rollout", {}).get("state") and len(replicas) == 2
    return d if done and all(r["state"] == "READY" and r.get("version") == version for r in replicas) else None


class Load:
    """Concurrent tritonclient callers through the router until stopped (or CAP each): what answered, what failed."""

    def __init__(self, url: str) -> None:
        self.url, self.stop = url, threading.Event()
        self.served: Counter[str] = Counter()
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.call, daemon=True) for _ in range(CALLERS)]
        for t in self.threads:
            t.start()

    def call(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        x = grpcclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(ONES)
        for _ in range(CAP):
            if self.stop.is_set():
                break
            try:
                y = float(client.infer("web", [x], client_timeout=10).as_numpy("y")[0][0])
                version = next((v for v, f in FACTORS.items() if abs(y - f) < 1e-6), f"unexpected {y}")
                with self.lock:
                    self.served[version] += 1
            except Exception as exc:  # every failure is kept: the test says there are none
                with self.lock:
                    self.errors.append(str(exc))
        client.close()

    def total(self) -> int:
        with self.lock:
            return sum(self.served.values()) + len(self.errors)

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)


def test_rollout_and_rollback_under_load_fail_no_request(rolled: ControllerProcess) -> None:
    c = rolled
    load = Load(c.inference_url)
    try:
        wait_for(lambda: load.total() >= 200, timeout=60, what="load going")
        update = c.admin("deploy", "web", "--model", "m:2")  # an existing deployment: a rolling update
        assert update.returncode == 0, update.stderr
        assert "xpud rollout status web" in update.stderr
        wait_for(lambda: serving(c, "2"), timeout=90, what="web rolled out to version 2")
        mark = load.total()
        wait_for(lambda: load.total() >= mark + 200, timeout=60, what="load on version 2")
        status = c.admin("rollout", "status", "web")
        assert status.returncode == 0 and "no rollout in progress" in status.stdout
        assert "xpud rollback web` returns to m:1" in status.stdout
        back = c.admin("rollback", "web")
        assert back.returncode == 0, back.stderr
        wait_for(lambda: serving(c, "1"), timeout=90, what="web rolled back to version 1")
        mark = load.total()
        wait_for(lambda: load.total() >= mark + 200, timeout=60, what="load after the rollback")
    finally:
        load.finish()
    assert not load.errors, f"{len(load.errors)} of {load.total()} requests failed: {load.errors[:3]}"
    assert load.served["1"] >= 400 and load.served["2"] >= 200, load.served
    assert set(load.served) == {"1", "2"}, load.served
    kinds = [e["kind"] for e in c.admin_json("events").get("events", []) if e.get("subject") == "web"]
    assert kinds.count("RolloutProgress") >= 2 and "RolloutComplete" in kinds, kinds
    assert "RollbackStarted" in kinds and "RollbackComplete" in kinds, kinds
    d = c.deployment("web")
    assert d["rollout"].get("previous_version") == "2"  # a second rollback would roll 2 out again


def test_rollout_bad_input_changes_nothing(rolled: ControllerProcess) -> None:
    c = rolled
    nothing = c.admin("rollback", "web")  # served only version 1 so far
    assert nothing.returncode == 2 and "no previous version" in nothing.stderr, nothing.stderr
    assert len(nothing.stderr.strip().splitlines()) == 1
    unknown = c.admin("rollback", "nope")
    assert unknown.returncode == 2 and "unknown deployment 'nope'" in unknown.stderr
    assert c.admin("rollout", "status", "nope").returncode == 2
    negative = c.admin("deploy", "web", "--model", "m:2", "--max-unavailable", "-1")
    assert negative.returncode == 2 and "max-unavailable" in negative.stderr
    ghost = c.admin("deploy", "web", "--model", "m:9")
    assert ghost.returncode == 1 and "unknown model 'm:9'" in ghost.stderr, ghost.stderr  # as a new deployment's
    assert serving(c, "1") is not None and not c.deployment("web").get("rollout")


def test_with_no_room_beside_one_node_at_a_time_unloads_first(rolled: ControllerProcess) -> None:
    """50 GiB replicas on 80 GiB devices: a node cannot hold both versions, so each unloads its old one first,
    one node at a time (the default allows one replica down); the other node takes the load meanwhile."""
    c = rolled
    load = Load(c.inference_url)
    try:
        wait_for(lambda: load.total() >= 200, timeout=60, what="load going")
        update = c.admin("deploy", "web", "--model", "m:2", "--memory", "50GiB")
        assert update.returncode == 0, update.stderr
        wait_for(lambda: serving(c, "2"), timeout=90, what="web rolled out to version 2")
        mark = load.total()
        wait_for(lambda: load.total() >= mark + 100, timeout=60, what="load on version 2")
    finally:
        load.finish()
    assert not load.errors, f"{len(load.errors)} of {load.total()} requests failed: {load.errors[:3]}"
    assert load.served["2"] >= 100, load.served
    progress = [e["message"] for e in c.admin_json("events").get("events", []) if e.get("kind") == "RolloutProgress"]
    assert sum("unloading it first" in m for m in progress) == 2, progress
    assert c.deployment("web")["spec"]["memory_bytes"] == 50 << 30  # a number in JSON


def test_a_paused_rollout_is_shown_kept_across_a_restart_and_rolled_back(rolled: ControllerProcess,
                                                                       tmp_path: Path) -> None:
    c = rolled
    update = c.admin("deploy", "web", "--model", "m:2", "--memory", "50GiB", "--max-unavailable", "0")
    assert update.returncode == 0, update.stderr
    paused = wait_for(lambda: (r := c.deployment("web").get("rollout", {})).get("state") == "Paused" and r,
                      timeout=30, what="the rollout paused")
    assert "no room on n1/sim:0" in paused["reason"] and "--max-unavailable 0" in paused["reason"], paused
    status = c.admin("rollout", "status", "web")
    assert status.returncode == 0 and "rolling out m:1 -> m:2: Paused, 0/2 node(s) updated" in status.stdout
    assert "paused: no room" in status.stdout and "waiting" in status.stdout, status.stdout
    assert "rolling out m:1 -> m:2" in c.admin("deployments").stdout
    busy = c.admin("traffic", "web", "1=50", "2=50")  # one change at a time
    assert busy.returncode == 2 and "is rolling out m:2" in busy.stderr, busy.stderr
    c.kill()  # SIGKILL: the rollout is in the store with the deployment
    again = ControllerProcess(str(tmp_path / "state"), c.port)
    try:
        kept = wait_for(lambda: again.deployment("web").get("rollout", {}).get("state") == "Paused",
                        timeout=30, what="the rollout after a restart")
        assert kept
        back = again.admin("rollback", "web")
        assert back.returncode == 0 and "rolling back m:2 -> m:1" in back.stdout, back.stdout + back.stderr
        wait_for(lambda: serving(again, "1"), timeout=60, what="back on version 1")
        assert again.deployment("web")["spec"]["version"] == "1"
    finally:
        again.kill()
