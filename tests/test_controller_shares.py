"""Nodes' shares kept in proportion to what changed: after any sequence of changes they equal shares built from
scratch, and every reachable node has been sent exactly its share."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from xpud.controller.core import DeploymentSpec, Replica, Rollout
from xpud.controller.shares import Assignment, Shares
from xpud.controller.store import ModelRecord

NODES = [f"n{i}" for i in range(8)]
DEVICES = ["sim:0", "sim:1", "cpu:0"]


def _model(name: str, version: str) -> ModelRecord:
    return ModelRecord(name, version, f"{name}{version}".ljust(64, "0"), 100, "model.onnx", 0.0)


def _replicas(rng: random.Random, name: str) -> list[Replica]:
    return [Replica(name, i, rng.choice(NODES), rng.choice(DEVICES), 1 << 20) for i in range(rng.randint(0, 5))]


@pytest.mark.parametrize("seed", range(40))
def test_shares_follow_any_sequence_of_changes(seed: int) -> None:
    rng = random.Random(seed)
    models = {("m", "1"): _model("m", "1"), ("m", "2"): _model("m", "2")}
    latest = {"m": "2"}

    def find(name: str, version: str) -> ModelRecord | None:
        return models.get((name, version or latest.get(name, "")))

    specs = {f"d{i}": DeploymentSpec(f"d{i}", "m", "", 3, 1 << 20) for i in range(4)}
    placement = {name: _replicas(rng, name) for name in specs}
    shares = Shares()
    reachable = set(NODES)
    for node in NODES:
        shares.new_stream(node)
    for _ in range(30):
        step = rng.randrange(7)
        name = rng.choice(sorted(specs.keys() | placement.keys()) or ["d0"])
        if step == 0:  # re-placed: new replica objects
            placement[name] = _replicas(rng, name)
        elif step == 1 and name in placement:  # one replica moved, the others the same objects
            moved = placement[name] = list(placement[name])
            if moved:
                k = rng.randrange(len(moved))
                moved[k] = replace(moved[k], node=rng.choice(NODES))
        elif step == 2:  # gone from the placement, or deleted
            placement.pop(name, None)
            if rng.random() < 0.5:
                specs.pop(name, None)
        elif step == 3:  # applied again: batch size, priority, a pinned version or a split across versions
            specs[name] = DeploymentSpec(name, "m", rng.choice(["", "1"]), 3, 1 << 20,
                                         priority=rng.randint(-1, 2), max_batch_size=rng.choice([0, 8]),
                                         traffic=rng.choice([(), (("1", 50), ("2", 50))]))
        elif step == 4:  # a newer model version pushed
            latest["m"] = rng.choice(["1", "2"])
        elif step == 5:  # a node on a new stream
            shares.new_stream(rng.choice(NODES))
        else:  # a node lost or back
            reachable ^= {rng.choice(NODES)}
        shares.update(placement, specs, find)
        for node, share in shares.changed(reachable.__contains__).items():
            shares.mark_sent(node, share)

        fresh = Shares()
        fresh.update(placement, specs, find)
        assert shares.now == fresh.now
        for node in NODES:
            share = shares.now.get(node, ())
            if node in reachable:
                assert shares.sent.get(node) == share, node
            elif shares.sent.get(node) != share:
                assert node in shares.stale, node  # sent once it is back


def test_a_share_lists_each_deployment_once_with_its_devices_sorted() -> None:
    shares = Shares()
    spec = DeploymentSpec("web", "m", "", 3, 1 << 20, priority=-2, max_batch_size=4)
    placement = {"web": [Replica("web", 0, "n1", "sim:1", 1), Replica("web", 1, "n1", "sim:0", 1),
                         Replica("web", 2, "n2", "cpu:0", 1)],
                 "api": [Replica("api", 0, "n1", "cpu:0", 1)]}
    model = _model("m", "1")
    shares.update(placement, {"web": spec, "api": replace(spec, name="api")}, lambda name, version: model)
    digest = model.digest
    assert shares.now == {
        "n1": (Assignment("api", "m", "1", digest, 100, ("cpu:0",), 4, 0),
               Assignment("web", "m", "1", digest, 100, ("sim:0", "sim:1"), 4, 0)),
        "n2": (Assignment("web", "m", "1", digest, 100, ("cpu:0",), 4, 0),)}
    assert shares.stale == {"n1", "n2"}
    shares.update(placement, {"web": spec}, lambda name, version: model)  # api deleted: its part goes
    assert shares.now["n1"] == (Assignment("web", "m", "1", digest, 100, ("sim:0", "sim:1"), 4, 0),)


def test_a_node_holding_replicas_of_several_versions_gets_one_assignment_per_version() -> None:
    models = {v: _model("m", v) for v in ("1", "2")}
    spec = DeploymentSpec("web", "m", "1", 4, 1 << 20, traffic=(("1", 50), ("2", 50)))
    # replica_versions: indexes 0 and 1 are version 1's, 2 and 3 version 2's
    placement = {"web": [Replica("web", 0, "n1", "sim:0", 1), Replica("web", 1, "n2", "sim:0", 1),
                         Replica("web", 2, "n1", "sim:1", 1), Replica("web", 3, "n1", "sim:2", 1)]}
    shares = Shares()
    shares.update(placement, {"web": spec}, lambda name, version: models.get(version))
    one, two = models["1"], models["2"]
    assert shares.now == {
        "n1": (Assignment("web", "m", "1", one.digest, 100, ("sim:0",), 0, 0),
               Assignment("web", "m", "2", two.digest, 100, ("sim:1", "sim:2"), 0, 0)),
        "n2": (Assignment("web", "m", "1", one.digest, 100, ("sim:0",), 0, 0),)}
    # a rollout gives a node one version still: the source until its turn, then the target
    rolling = replace(spec, traffic=(), version="2", rollout=Rollout("m", "1", "2", updated=("n2",)))
    shares.update(placement, {"web": rolling}, lambda name, version: models.get(version))
    assert shares.now == {
        "n1": (Assignment("web", "m", "1", one.digest, 100, ("sim:0", "sim:1", "sim:2"), 0, 0),),
        "n2": (Assignment("web", "m", "2", two.digest, 100, ("sim:0",), 0, 0),)}
