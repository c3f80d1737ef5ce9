"""The auto-rollback guard of a traffic change: the judgement over a stepped clock (enough requests, the threshold,
requests rolling out of the window), the controller's core putting the weights back (persisted, replaced by the
next change or deploy), then over real processes: `xpud traffic web 2=100 --auto-rollback-error-rate 0.05` to a
broken version 2, kept across a controller restart, shown in `xpud deployments --json`, and undone once version
2 fails (a RollbackTriggered event says why). Bad rates are refused with nothing changed."""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from helpers import ControllerProcess, versioned_web, wait_for
from models import onnx_bytes, scale
from xpud.controller.control import Controller
from xpud.controller.core import DeploymentSpec
from xpud.controller.rollback import breach, raised, watched
from xpud.controller.stats import VersionStats
from xpud.controller.store import ArtifactStore, SqliteStore
from xpud.proto import admin_pb2 as apb
from xpud.proto import admin_pb2_grpc
from xpud.proto.status import InvalidArgument

ONES = np.ones((1, 4), np.float32)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


GUARDED = DeploymentSpec("web", "m", "2", 2, 0, auto_rollback_error_rate=0.05, rollback_traffic=(("1", 100),))


def test_the_versions_watched_are_those_whose_weight_rose() -> None:
    assert raised((("1", 100),), (("2", 100),)) == ("2",)
    assert raised((("1", 90), ("2", 10)), (("1", 50), ("2", 50))) == ("2",)
    assert raised((("1", 50), ("2", 50)), (("1", 90), ("2", 10))) == ("1",)
    assert raised((("1", 100),), (("1", 100),)) == ()
    assert watched(GUARDED) == ("2",)
    assert watched(DeploymentSpec("web", "m", "2", 2, 0)) == ()  # no guard


def test_a_version_is_judged_with_enough_requests_above_the_threshold_within_the_window() -> None:
    clock = Clock()
    stats = VersionStats(window_s=30, clock=clock)
    for _ in range(19):
        stats.record("web", "2", ok=False, seconds=0.01)
    assert breach(GUARDED, stats, min_requests=20) is None  # 19 answers: too few to judge
    stats.record("web", "2", ok=True, seconds=0.01)
    found = breach(GUARDED, stats, min_requests=20)
    assert found is not None and found.version == "2" and found.summary.requests == 20
    assert found.summary.errors == 19 and found.threshold == 0.05
    message = found.message(30, (("1", 100),))
    assert "version 2" in message and "0.950" in message and "20 requests" in message and "0.05" in message
    assert "back to 1=100" in message
    for _ in range(30):  # another version failing is not this guard's business
        stats.record("web", "1", ok=False, seconds=0.01)
    clock.t += 31  # the failures rolled out of the window
    assert breach(GUARDED, stats, min_requests=20) is None
    for i in range(100):  # 5 of 100: at the threshold, not above it
        stats.record("web", "2", ok=i % 20 != 0, seconds=0.01)
    assert breach(GUARDED, stats, min_requests=20) is None
    stats.record("web", "2", ok=False, seconds=0.01)
    assert breach(GUARDED, stats, min_requests=20) is not None


async def test_the_core_rolls_back_once_persists_the_guard_and_a_new_change_replaces_it(tmp_path: Path) -> None:
    clock = Clock()
    stats = VersionStats(window_s=30, clock=clock)
    store = SqliteStore(tmp_path)
    controller = Controller(store, ArtifactStore(tmp_path / "artifacts"), stats=stats, rollback_min_requests=20)
    for version in ("1", "2"):
        digest, size = controller.artifacts.put([b"\x08" + version.encode() * 100])
        store.add_model("m", version, digest, size, "model.onnx")
    try:
        await controller.apply_deployment(DeploymentSpec("web", "m", "", 2, 1 << 20))  # "latest": version 2
        with pytest.raises(InvalidArgument, match="none does"):  # latest is 2 already: nothing rises
            await controller.set_traffic("web", [("2", 100)], 0.05)
        for bad in (-0.1, 1.5, math.nan):
            with pytest.raises(InvalidArgument, match=r"within \(0, 1\]"):
                await controller.set_traffic("web", [("1", 100)], bad)
        assert controller.specs["web"].version == "" and not controller.specs["web"].auto_rollback_error_rate
        await controller.set_traffic("web", [("1", 100)])
        await controller.set_traffic("web", [("1", 90), ("2", 10)], 0.05)
        spec = controller.specs["web"]
        assert spec.auto_rollback_error_rate == 0.05 and spec.rollback_traffic == (("1", 100),)
        # kept with the deployment, as a restarted controller reads it
        assert [(s.auto_rollback_error_rate, s.rollback_traffic) for s in store.deployments()] == \
            [(0.05, (("1", 100),))]
        for _ in range(20):
            stats.record("web", "1", ok=False, seconds=0.01)  # version 1's weight fell: not watched
        assert await controller.check_rollbacks() == []
        for i in range(20):
            stats.record("web", "2", ok=i % 2 == 0, seconds=0.01)
        assert await controller.check_rollbacks() == ["web"]
        spec = controller.specs["web"]
        assert (spec.version, spec.traffic, spec.auto_rollback_error_rate, spec.rollback_traffic) == \
            ("1", (), 0.0, ())
        assert await controller.check_rollbacks() == []  # once: the guard is gone with it
        events = [e for e in store.events() if e.kind == "RollbackTriggered"]
        assert len(events) == 1 and events[0].subject == "web" and "version 2" in events[0].message
        # a new traffic change without the flag, or a deploy, replaces a guard
        await controller.set_traffic("web", [("2", 100)], 0.5)
        await controller.set_traffic("web", [("1", 50), ("2", 50)])
        assert not controller.specs["web"].auto_rollback_error_rate
        await controller.set_traffic("web", [("2", 100)], 0.5)
        await controller.apply_deployment(DeploymentSpec("web", "m", "2", 2, 1 << 20, auto_rollback_error_rate=0.5))
        assert not controller.specs["web"].auto_rollback_error_rate and not controller.specs["web"].rollback_traffic
    finally:
        await controller.close()
        store.close()


# -- over real processes -------------------------------------------------------------------------------------------
def web_on(c: ControllerProcess, version: str) -> dict | None:
    """The deployment once it runs version ``version`` alone, every replica ready with it loaded."""
    d = c.deployment("web")
    replicas = d.get("replicas", [])
    ok = d.get("phase") == "Running" and [v["version"] for v in d.get("versions", [])] == [version] and \
        replicas and all(r["version"] == version and r["state"] == "READY" for r in replicas)
    return d if ok else None


def infer(url: str, n: int) -> tuple[int, int]:
    """``n`` requests of four columns through the router: (answered, refused)."""
    ok = failed = 0
    with grpcclient.InferenceServerClient(url) as client:
        x = grpcclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(ONES)
        for _ in range(n):
            try:
                client.infer("web", [x])
                ok += 1
            except InferenceServerException:
                failed += 1
    return ok, failed


def test_a_failing_new_version_is_rolled_back_even_after_a_controller_restart(tmp_path: Path) -> None:
    started: list = []
    try:
        # version 2 takes five columns: every client still sending four is refused (a broken contract)
        c = versioned_web(tmp_path, started, {"1": onnx_bytes(scale(4, 2.0)), "2": onnx_bytes(scale(5, 3.0))})
        wait_for(lambda: web_on(c, "1"), timeout=60, what="web on version 1")

        before = c.deployment("web")["spec"]
        for rate, fragment in (("0", "within (0, 1]"), ("1.5", "within (0, 1]"), ("-0.1", "within (0, 1]"),
                               ("x", "within (0, 1]"), ("nan", "within (0, 1]")):
            refused = c.admin("traffic", "web", "2=100", "--auto-rollback-error-rate", rate)
            assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
            assert fragment in refused.stderr, refused.stderr
        nothing_rises = c.admin("traffic", "web", "1=100", "--auto-rollback-error-rate", "0.05")
        assert nothing_rises.returncode == 2 and "none does" in nothing_rises.stderr, nothing_rises.stderr
        with grpc.insecure_channel(c.address) as channel:  # the API checks the rate itself
            with pytest.raises(grpc.RpcError) as refused_rpc:
                admin_pb2_grpc.AdminStub(channel).SetTraffic(apb.SetTrafficRequest(
                    name="web", weights=[apb.VersionWeight(version="2", weight=100)], auto_rollback_error_rate=2.0))
        assert refused_rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert c.deployment("web")["spec"] == before

        guarded = c.admin("traffic", "web", "2=100", "--auto-rollback-error-rate", "0.05")
        assert guarded.returncode == 0, guarded.stderr
        assert c.deployment("web")["spec"]["auto_rollback_error_rate"] == 0.05
        assert "auto-rollback" in c.admin("deployments").stdout
        wait_for(lambda: web_on(c, "2"), timeout=60, what="web on version 2")

        c.kill()  # the guard and the weights it restores are kept with the deployment
        c = ControllerProcess(str(tmp_path / "state"), c.port)
        started.append(c)
        assert c.deployment("web")["spec"]["auto_rollback_error_rate"] == 0.05
        wait_for(lambda: web_on(c, "2"), timeout=60, what="web on version 2 after the restart")

        def rolled_back() -> list[dict]:
            infer(c.inference_url, 10)
            return c.events("RollbackTriggered", "web")

        events = wait_for(rolled_back, timeout=60, interval=0.5, what="a RollbackTriggered event")
        assert len(events) == 1
        message = events[0]["message"]
        assert "version 2" in message and "above 0.05" in message and "back to 1=100" in message, message
        assert "error rate 1.000" in message and "requests in the last 30 s" in message, message
        d = wait_for(lambda: web_on(c, "1"), timeout=60, what="web back on version 1")
        assert "auto_rollback_error_rate" not in d["spec"] and d["spec"]["version"] == "1"
        ok, failed = infer(c.inference_url, 20)
        assert (ok, failed) == (20, 0)
    finally:
        for proc in reversed(started):
            proc.kill()
