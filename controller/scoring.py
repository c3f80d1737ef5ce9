"""Ranking of the scheduler (the Score half of a Filter/Score framework): smaller keys win.

The scheduler keeps feasible devices in lists sorted by these keys, so `binpack_key` and `spread_key` are
exactly the orders it picks from; the table tests check the fast path against a plain min() over them.
"""

from __future__ import annotations

from collections.abc import Sequence

from .core import DeviceView, Replica

BinpackKey = tuple[int, float, str, str]
SpreadKey = tuple[int, int, float, str, str]


def utilization(device: DeviceView) -> float:
    """Live utilization, 0 when unknown."""
    return device.utilization or 0.0


def binpack_key(free: int, util: float, node: str, device: str) -> BinpackKey:
    """Fill devices up: the least free memory (among those that fit) first, then the least busy, then names."""
    return free, util, node, device


def spread_key(on_node: int, free: int, util: float, node: str, device: str) -> SpreadKey:
    """Fan out: the node with the fewest replicas of this deployment, then the most free memory, the least busy."""
    return on_node, -free, util, node, device


def victim_key(priority: int, index: int, deployment: str) -> tuple[int, int, str]:
    """Eviction order on one device: lowest priority first, then the most recently placed (highest index)."""
    return priority, -index, deployment


def pick_victims(free: int, need: int, victims: Sequence[Replica]) -> list[Replica] | None:
    """The replicas to evict (taken in `victims` order) so `free` reaches `need`, or None when even all are too few.

    After taking victims in order, each taken one is given back (last taken first) when the rest still free
    enough, so no victim is evicted needlessly.
    """
    taken: list[Replica] = []
    for v in victims:
        if free >= need:
            break
        taken.append(v)
        free += v.memory
    if free < need:
        return None
    for v in reversed(list(taken)):
        if free - v.memory >= need:
            taken.remove(v)
            free -= v.memory
    return taken


def preemption_key(
    priorities: Sequence[int], room: int, util: float, node: str, device: str
) -> tuple[int, int, int, float, str, str]:
    """Between devices where preemption works: the lowest top victim priority, then the fewest victims, then the
    least room (free memory plus what the victims hold: the tightest fit), the least busy, names."""
    return max(priorities, default=0), len(priorities), room, util, node, device
