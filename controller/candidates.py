"""The feasible devices of one signature, kept sorted, and the candidate groups the strategies pick from.

A `CandidatePool` holds the devices that pass every static filter for one signature (`memo.signature`), sorted
by free memory then names, and re-sorted as a device's free memory changes: ascending for binpack, most free
first for spread (built the first time a spread deployment needs it). Its searches give the devices that tie on
the best primary key of a strategy (`scoring.STRATEGIES`) among those that fit, the first `LOAD_CANDIDATES` of
them by names: a bisect for binpack, a short scan for spread; never a walk of every device.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter
from collections.abc import Iterable, Mapping
from itertools import islice

from . import filters
from .core import DeploymentSpec, NodeView
from .memo import FilterMemo, Key, NodeAnswer, answer, signature
from .scoring import LOAD_CANDIDATES

Entry = tuple[int, str, str]  # (free memory, node, device), or (-free, ...) in the spread order


class CandidatePool:
    """The feasible devices of one signature in sorted lists, with the rejections of the others."""

    __slots__ = ("asc", "desc", "rejected", "room", "spec")

    def __init__(self, spec: DeploymentSpec, rejected: Counter[filters.Tally], asc: list[Entry]) -> None:
        self.spec = spec  # a deployment of the signature: what the static filters read
        self.rejected = rejected  # the other devices' first rejections, tallied
        self.asc = asc  # (free, node, device), ascending
        self.desc: list[Entry] | None = None  # (-free, node, device), ascending
        # priority p -> (room, node, device) ascending, room = free + memory of replicas of priority <= p;
        # built and kept by preemption, which alone reads it
        self.room: dict[int, list[Entry]] = {}

    @classmethod
    def build(cls, spec: DeploymentSpec, nodes: Iterable[NodeView], free: Mapping[Key, int], memo: FilterMemo,
              draining: frozenset[str]) -> tuple[CandidatePool, list[Key]]:
        """The pool of the deployment's signature over `nodes`, from the memo's answers (renewed where a view
        changed); with its devices."""
        table = memo.table(signature(spec), draining)
        rejected: Counter[filters.Tally] = Counter()
        keys: list[Key] = []
        for node in nodes:
            got = table.get(node.name)
            if got is None or got[0] is not node:
                got = memo.renew(table, node, spec, draining)
            for why, count in got[1]:
                rejected[why] += count
            keys.extend(got[2])
        return cls(spec, rejected, sorted((free[k], *k) for k in keys)), keys

    def spread_order(self) -> list[Entry]:
        if self.desc is None:
            self.desc = sorted((-f, n, d) for f, n, d in self.asc)
        return self.desc

    def insert(self, free: int, key: Key) -> None:
        insort(self.asc, (free, *key))
        if self.desc is not None:
            insort(self.desc, (-free, *key))

    def remove(self, free: int, key: Key) -> None:
        node, dev = key
        del self.asc[bisect_left(self.asc, (free, node, dev))]
        if self.desc is not None:
            del self.desc[bisect_left(self.desc, (-free, node, dev))]

    def room_at(self, ceiling: int, held: Mapping[Key, Counter[int]]) -> list[Entry]:
        """(room, node, device) ascending, room = free memory + what replicas of priority <= ceiling hold."""
        room = self.room.get(ceiling)
        if room is None:
            room = self.room[ceiling] = sorted(
                (f + held_below(held.get((n, d), _NONE), ceiling), n, d) for f, n, d in self.asc)
        return room

    def replace_node(self, old: NodeView | None, new: NodeView, free: Mapping[Key, int],
                     table: dict[str, NodeAnswer], draining: frozenset[str]) -> tuple[Key, ...]:
        """A node's new view: the rejections of its old one (None: a node that joined) leave the tally, its new
        answer goes in the memo's `table` and in the pool. The old view's devices are out of the pool already
        (`remove`). Returns the devices added."""
        if old is not None:
            for why, count in answer(old, self.spec, draining)[1]:
                self.rejected[why] -= count
                if not self.rejected[why]:
                    del self.rejected[why]
        got = table[new.name] = answer(new, self.spec, draining)
        for why, count in got[1]:
            self.rejected[why] += count
        for key in got[2]:
            self.insert(free[key], key)
        self.room.clear()  # only preemption reads it, and only a full pass (a state of its own) preempts
        return got[2]

    def explain(self, spec: DeploymentSpec, total: int) -> str:
        """The pending reason's tally: how many of all `total` devices fit a replica of the deployment now, and why
        the others do not."""
        rejected = Counter(self.rejected)
        short = bisect_left(self.asc, (spec.memory_bytes,))
        most_free = self.asc[-1][0] if self.asc else None
        why = filters.memory_fits(0, spec, most_free)
        if short and why is not None:
            rejected[(filters.MEMORY_RANK, *why)] += short
        return filters.explain(rejected, total, len(self.asc) - short)

    # --- the candidate groups -----------------------------------------------------------------------------------

    def least_free(self, need: int) -> list[Key]:
        """binpack: the devices with the least free memory that is `need` or more; empty when none fits."""
        asc = self.asc
        i = bisect_left(asc, (need,))
        if i == len(asc):
            return []
        free = asc[i][0]
        return [(e[1], e[2]) for e in asc[i : i + LOAD_CANDIDATES] if e[0] == free]

    def fewest_on_node(self, need: int, counts: Counter[str], cursor: int) -> tuple[list[Key], int]:
        """spread: the devices that fit on the nodes with the fewest replicas of the deployment (`counts`), the
        most free memory first; empty when none fits. With the cursor for the deployment's next pick."""
        desc = self.spread_order()
        # Most free first: stop at the first that does not fit. The devices before `cursor` are on nodes that have
        # a replica of this deployment already (its earlier picks in this fill found them so; placing only adds
        # replicas and moves the picked device down the order; an eviction resets the cursor). So a node without
        # one is looked for from there; when there is none, the fewest replicas from the start.
        for first in dict.fromkeys((cursor, 0)):
            start, best_count = -1, 0
            for i, (neg_free, node, _dev) in enumerate(islice(desc, first, None), first):
                if -neg_free < need:
                    break
                count = counts.get(node, 0)
                if start < 0 or count < best_count:  # the fewest replicas on the node, then the most free
                    start, best_count = i, count
                    if count == 0:
                        break
            if start >= 0 and best_count == 0:
                break
        cursor = start if start >= 0 and best_count == 0 else 0
        if start < 0:
            return [], cursor
        neg_free, group = desc[start][0], list[Key]()
        for entry in islice(desc, start, None):  # the first candidates with the same free memory and count, by names
            if entry[0] != neg_free or len(group) == LOAD_CANDIDATES:
                break
            if counts.get(entry[1], 0) == best_count:
                group.append((entry[1], entry[2]))
        return group, cursor


def move(pools: Iterable[CandidatePool], old: int, new: int, key: Key, priority: int, held: Counter[int]) -> None:
    """A replica of `priority` took or gave back memory on a device: its free memory went from `old` to `new` in
    each of its pools. `held`: the device's memory held by priority, before the change. (One call for all the
    device's pools: this runs at every placement.)"""
    node, dev = key
    for pool in pools:
        asc = pool.asc
        del asc[bisect_left(asc, (old, node, dev))]
        insort(asc, (new, node, dev))
        if (desc := pool.desc) is not None:
            del desc[bisect_left(desc, (-old, node, dev))]
            insort(desc, (-new, node, dev))
        for ceiling, room in pool.room.items():
            if priority > ceiling:  # memory of replicas <= ceiling counts as room: theirs does not change it
                below = held_below(held, ceiling)
                del room[bisect_left(room, (old + below, node, dev))]
                insort(room, (new + below, node, dev))


_NONE: Counter[int] = Counter()


def held_below(held: Counter[int], ceiling: int) -> int:
    """Memory of a device's replicas with priority <= ceiling, from what it holds by priority."""
    return sum(m for p, m in held.items() if p <= ceiling)
