"""The traffic split's pure parts: weights checked, replicas per version, keys onto versions."""

from __future__ import annotations

import pytest

from xpud.controller.core import DeploymentSpec, Replica
from xpud.controller.nodes import adopt
from xpud.controller.pool import NodeState
from xpud.controller.traffic import Split, key_point, normalized, replica_counts, replica_versions
from xpud.proto import link_pb2 as lpb
from xpud.proto.status import InvalidArgument


def spec(replicas: int, *traffic: tuple[str, int]) -> DeploymentSpec:
    return DeploymentSpec("web", "m", "1", replicas, 1 << 20, traffic=tuple(traffic))


@pytest.mark.parametrize(("replicas", "traffic", "counts"), [
    (1, (), {"1": 1}),
    (10, (("1", 90), ("2", 10)), {"1": 9, "2": 1}),
    (2, (("1", 99), ("2", 1)), {"1": 1, "2": 1}),  # at least one each
    (3, (("1", 50), ("2", 50)), {"1": 2, "2": 1}),  # the remainder to the first of equals
    (4, (("1", 34), ("2", 33), ("3", 33)), {"1": 2, "2": 1, "3": 1}),
    (1, (("1", 50), ("2", 50)), {"1": 1, "2": 1}),  # fewer replicas than versions: one each
])
def test_replicas_per_version(replicas: int, traffic: tuple[tuple[str, int], ...], counts: dict[str, int]) -> None:
    s = spec(replicas, *traffic)
    assert replica_counts(s) == counts
    assert replica_versions(s) == [v for v, n in counts.items() for _ in range(n)]


@pytest.mark.parametrize(("pairs", "fragment"), [
    ((("1", 50), ("2", 40)), "sum to 100"),
    ((("1", 101),), "percentage"),
    ((("1", 50), ("1", 50)), "given twice"),
    ((("", 100),), "needs a version"),
])
def test_bad_weights(pairs: tuple[tuple[str, int], ...], fragment: str) -> None:
    with pytest.raises(InvalidArgument, match=fragment):
        normalized(pairs)


def test_weights_in_version_order_without_zeros() -> None:
    assert normalized((("10", 20), ("2", 80), ("3", 0))) == (("2", 80), ("10", 20))


def test_keys_land_by_weight_and_stay() -> None:
    split = Split.of((("1", 90), ("2", 10)))
    drawn = [split.draw(key_point(f"user-{i}")) for i in range(2000)]
    assert 120 <= drawn.count("2") <= 280  # binomial(2000, 0.1): mean 200, deviation 13.4
    assert all(split.draw(key_point("alice")) == split.draw(key_point("alice")) for _ in range(10))


def test_the_split_is_stored_with_the_spec(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from xpud.controller.store import SqliteStore

    store = SqliteStore(tmp_path)
    split = spec(3, ("1", 90), ("2", 10))
    store.put_deployment(split)
    store.close()
    again = SqliteStore(tmp_path)
    assert again.deployments() == [split]
    again.close()


def test_a_node_reporting_two_versions_has_them_adopted_at_their_versions_indexes() -> None:
    """A node that comes back serving both versions of a split (its desired.json) keeps them: each version's
    instance takes an index the split gives that version, so nothing reloads."""
    node = NodeState("n1")
    node.report([lpb.InstanceStatus(deployment="web", version="2", state="READY", devices=["sim:1"]),
                 lpb.InstanceStatus(deployment="web", version="1", state="READY", devices=["sim:0"])])
    s = spec(2, ("1", 50), ("2", 50))
    placement: dict[str, list[Replica]] = {}
    adopt(node, {"web": s}, placement)
    versions = replica_versions(s)
    assert sorted((versions[r.index], r.device) for r in placement["web"]) == [("1", "sim:0"), ("2", "sim:1")]
    assert node.instance_count() == 2 and [i.version for i in node.instances_of("web")] == ["2", "1"]
