"""The rolling update's pure parts: when it starts, how it moves node by node, when it waits, how it turns back."""

from __future__ import annotations

from dataclasses import replace

import pytest

from xpud.controller.core import DeploymentSpec, Replica, Rollout
from xpud.controller.rollout import Served, begin, free_memory, node_version, rollback, step
from xpud.proto.status import FailedPrecondition

GIB = 1 << 30


def spec(version: str = "2", **kw: object) -> DeploymentSpec:
    return DeploymentSpec("web", "m", version, 2, GIB, **kw)  # type: ignore[arg-type]


REPLICAS = [Replica("web", 0, "n1", "sim:0", GIB), Replica("web", 1, "n2", "sim:0", GIB)]
ROOM = {("n1", "sim:0"): 8 * GIB, ("n2", "sim:0"): 8 * GIB}


def reports(**served: tuple[str, str]) -> object:
    """node=(state, version) -> the report function `step` takes."""
    return lambda node: Served(served[node][0], "m", served[node][1]) if node in served else None


def test_a_new_version_on_a_placed_deployment_starts_a_rollout() -> None:
    old, new = spec("1"), spec("2")
    started = begin(old, new, "1", "2", 100.0, ["n1", "n2"])
    assert started.rollout == Rollout("m", "1", "2", started=100.0)
    assert begin(old, spec("1"), "1", "1", 0.0, ["n1"]).rollout is None  # the same version: nothing to roll
    unplaced = begin(old, new, "1", "2", 0.0, [])  # no replica anywhere: at once, and 1 is the previous
    assert unplaced.rollout is None and unplaced.previous == ("m", "1")


def test_nodes_move_one_at_a_time_and_the_rollout_completes() -> None:
    s = begin(spec("1"), spec("2"), "1", "2", 0.0, ["n1", "n2"])
    s, said = step(s, REPLICAS, reports(n1=("READY", "1"), n2=("READY", "1")), ROOM)
    assert s.rollout is not None and s.rollout.updated == ("n1",) and said[0][0] == "RolloutProgress"
    assert node_version(s, "n1") == ("m", "2") and node_version(s, "n2") == ("m", "1")
    same, said = step(s, REPLICAS, reports(n1=("READY", "1"), n2=("READY", "1")), ROOM)  # n1 still loading
    assert same is s and not said
    s, _ = step(s, REPLICAS, reports(n1=("READY", "2"), n2=("READY", "1")), ROOM)
    assert s.rollout is not None and s.rollout.updated == ("n1", "n2")
    s, said = step(s, REPLICAS, reports(n1=("READY", "2"), n2=("READY", "2")), ROOM)
    assert s.rollout is None and s.previous == ("m", "1") and said[0][0] == "RolloutComplete"


def test_a_failed_load_pauses_it_and_rollback_turns_it_back() -> None:
    s = begin(spec("1"), spec("2"), "1", "2", 0.0, ["n1", "n2"])
    s, _ = step(s, REPLICAS, reports(n1=("READY", "1"), n2=("READY", "1")), ROOM)
    failed = lambda node: Served("FAILED", "m", "2", "bad model") if node == "n1" else Served("READY", "m", "1")  # noqa: E731
    s, said = step(s, REPLICAS, failed, ROOM)
    assert s.rollout is not None and "failed to load on n1: bad model" in s.rollout.paused
    assert said[0][0] == "RolloutPaused"
    assert step(s, REPLICAS, failed, ROOM) == (s, [])  # told once
    back = rollback(s, "2", 0.0, ["n1", "n2"])
    assert back.version == "1" and back.rollout is not None and back.rollout.rollback
    assert back.rollout.target == "1" and back.rollout.updated == ("n2",)  # n2 never left version 1
    assert node_version(back, "n1") == ("m", "2")  # till its turn
    back, _ = step(back, REPLICAS, reports(n1=("FAILED", "2"), n2=("READY", "1")), ROOM)
    assert back.rollout is not None and back.rollout.updated == ("n2", "n1")
    assert node_version(back, "n1") == ("m", "1")
    done, said = step(back, REPLICAS, reports(n1=("READY", "1"), n2=("READY", "1")), ROOM)
    assert done.rollout is None and said[0][0] == "RollbackComplete" and done.previous == ("m", "2")


def test_no_room_beside_unloads_first_within_max_unavailable() -> None:
    full = {("n1", "sim:0"): GIB // 2, ("n2", "sim:0"): 8 * GIB}
    s = begin(spec("1"), spec("2"), "1", "2", 0.0, ["n1", "n2"])
    ready = reports(n1=("READY", "1"), n2=("READY", "1"))
    down, said = step(s, REPLICAS, ready, full)  # the default allows one replica down where there is no room
    assert down.rollout is not None and down.rollout.down == "n1" and node_version(down, "n1") is None
    same, _ = step(down, REPLICAS, ready, full)  # n1 still reports its old version: unloading
    assert same is down
    up, _ = step(down, REPLICAS, reports(n2=("READY", "1")), full)
    assert up.rollout is not None and up.rollout.down == "" and up.rollout.updated == ("n1",)
    strict = replace(s, max_unavailable=0)
    paused, said = step(strict, REPLICAS, ready, full)
    assert paused.rollout is not None and "no room on n1/sim:0" in paused.rollout.paused
    assert "--max-unavailable 0" in paused.rollout.paused and said[0][0] == "RolloutPaused"


def test_an_apply_during_a_rollout() -> None:
    s = begin(spec("1"), spec("2"), "1", "2", 0.0, ["n1", "n2"])
    s, _ = step(s, REPLICAS, reports(n1=("READY", "1"), n2=("READY", "1")), ROOM)
    assert begin(s, replace(spec("2"), replicas=3), "", "2", 0.0, ["n1", "n2"]).rollout == s.rollout  # kept
    back = begin(s, spec("1"), "", "1", 0.0, ["n1", "n2"])  # the source again: turned back
    assert back.rollout is not None and back.rollout.target == "1" and back.rollout.updated == ("n2",)
    with pytest.raises(FailedPrecondition, match="rolling out m:2"):
        begin(s, spec("3"), "", "3", 0.0, ["n1", "n2"])


def test_rollback_needs_a_previous_version() -> None:
    with pytest.raises(FailedPrecondition, match="no previous version"):
        rollback(spec("1"), "1", 0.0, ["n1"])
    with pytest.raises(FailedPrecondition, match="splits its traffic"):
        rollback(spec("1", traffic=(("1", 50), ("2", 50))), "1", 0.0, ["n1"])


def test_free_memory_counts_every_placed_replica() -> None:
    other = Replica("api", 0, "n1", "sim:0", 3 * GIB)
    assert free_memory(ROOM, {"web": REPLICAS, "api": [other]}) == {("n1", "sim:0"): 4 * GIB,
                                                                    ("n2", "sim:0"): 7 * GIB}


def test_the_rollout_is_stored_with_the_spec(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from xpud.controller.store import SqliteStore

    store = SqliteStore(tmp_path)
    held = replace(spec("2"), rollout=Rollout("m", "1", "2", ("n1",), started=5.0, paused="why"), previous=("m", "0"),
                   max_unavailable=1)
    store.put_deployment(held)
    store.close()
    again = SqliteStore(tmp_path)
    assert again.deployments() == [held]
    again.close()


def test_the_admin_api_refuses_a_negative_max_unavailable() -> None:
    from xpud.controller.admin import spec_of
    from xpud.proto import admin_pb2 as apb
    from xpud.proto.status import InvalidArgument

    with pytest.raises(InvalidArgument, match="max_unavailable -1 must be >= 0"):
        spec_of(apb.Deployment(name="web", model="m", max_unavailable=-1))
    assert spec_of(apb.Deployment(name="web", model="m")).max_unavailable == -1  # unset: the default
    assert spec_of(apb.Deployment(name="web", model="m", max_unavailable=0)).max_unavailable == 0
