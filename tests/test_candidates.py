"""The sorted pools of feasible devices: the candidate groups each strategy's primary key gives, the lists kept
sorted as free memory moves, the pending tally."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from pool_shapes import GiB, dep, node

from xpud.controller import candidates, scoring
from xpud.controller.candidates import CandidatePool
from xpud.controller.memo import FilterMemo

# Free GiB by device of a pool of single-GPU nodes a..e.
FREE = {"a": 30, "b": 10, "c": 30, "d": 80, "e": 10}


def _pool(free: dict[str, int]) -> CandidatePool:
    nodes = [node(n) for n in sorted(free)]
    pool, _keys = CandidatePool.build(dep(), nodes, {(n, "nvidia:0"): g * GiB for n, g in free.items()},
                                      FilterMemo(), frozenset())
    return pool


@pytest.mark.parametrize(
    ("need", "group"),
    [
        (5, ["b", "e"]),  # the least free that fits, by names
        (20, ["a", "c"]),
        (40, ["d"]),
        (90, []),  # none fits
    ],
)
def test_least_free(need: int, group: list[str]) -> None:
    assert _pool(FREE).least_free(need * GiB) == [(n, "nvidia:0") for n in group]


@pytest.mark.parametrize(
    ("need", "counts", "group"),
    [
        (5, {}, ["d"]),  # the most free
        (5, {"d": 1}, ["a", "c"]),  # then the nodes without a replica yet
        (20, {"a": 1, "c": 1, "d": 1}, ["d"]),  # every node that fits has one: the fewest, then the most free
        (20, {"a": 1, "c": 2, "d": 2}, ["a"]),
        (90, {}, []),
    ],
)
def test_fewest_on_node(need: int, counts: dict[str, int], group: list[str]) -> None:
    got, _cursor = _pool(FREE).fewest_on_node(need * GiB, Counter(counts), 0)
    assert got == [(n, "nvidia:0") for n in group]


def test_groups_hold_at_most_load_candidates_devices() -> None:
    pool = _pool({f"n{i:02d}": 80 for i in range(scoring.LOAD_CANDIDATES + 5)})
    assert len(pool.least_free(GiB)) == scoring.LOAD_CANDIDATES
    group, _cursor = pool.fewest_on_node(GiB, Counter(), 0)
    assert group == pool.least_free(GiB) == [(f"n{i:02d}", "nvidia:0") for i in range(scoring.LOAD_CANDIDATES)]


def test_the_lists_stay_sorted_as_free_memory_moves() -> None:
    rng = random.Random(3)
    free = {f"n{i}": rng.choice([10, 30, 80]) * GiB for i in range(12)}
    pool = _pool({n: g // GiB for n, g in free.items()})
    pool.spread_order()
    pool.room_at(0, {})
    held: dict[str, Counter[int]] = {n: Counter() for n in free}
    for _ in range(200):
        n = rng.choice(sorted(free))
        priority = rng.choice([0, 1])
        taken = rng.choice([-1, 1]) * rng.randint(0, 5) * GiB
        candidates.move([pool], free[n], free[n] - taken, (n, "nvidia:0"), priority, held[n])
        free[n] -= taken
        held[n][priority] += taken
        assert pool.asc == sorted((f, k, "nvidia:0") for k, f in free.items())
        assert pool.desc == sorted((-f, k, "nvidia:0") for k, f in free.items())
        assert pool.room[0] == sorted((f + held[k][0], k, "nvidia:0") for k, f in free.items())


def test_explain_tallies_the_devices_short_of_memory() -> None:
    pool = _pool(FREE)
    assert pool.explain(dep(gib=40), 7) == (
        "1/7 devices fit: 4 have too little free memory (need 40.0 GiB, most free 80.0 GiB)")
