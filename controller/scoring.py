"""Ranking of the scheduler (the Score half of a Filter/Score framework): smaller wins.

A pick runs in two steps. The deployment's strategy (`STRATEGIES`: binpack or spread) gives each feasible device a
primary key; the pass finds the devices with the best one in its sorted pools (a bisect or a short scan, never a
walk of every device) and takes the first `LOAD_CANDIDATES` of them by names. The chain of scorers in `RANKING`
then ranks that group: each scorer is a plain function `(candidate, context) -> float`, compared in table order;
the first best candidate (by names) wins the ties that are left. The pass reads `RANKING` when it starts, so a new
scorer is one function added to the table (and a table test); preemption ranks its devices by the same chain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from .core import DeploymentSpec, DeviceView, Replica

Candidate = tuple[str, str]  # a device by (node, device id)

# Live load (and any other scorer) ranks at most this many of the devices with the best primary key: the first ones
# by names, like Kubernetes' percentageOfNodesToScore; it bounds a pick's work in a large pool.
LOAD_CANDIDATES = 16


class Context(Protocol):
    """What a scorer may read of the pick in progress (`scheduler.Scheduler` provides it)."""

    @property
    def deployment(self) -> DeploymentSpec:
        """The deployment being placed."""
        ...

    def device(self, key: Candidate, /) -> DeviceView: ...

    def free(self, key: Candidate, /) -> int:
        """Free memory of the device now, in bytes (what replicas placed so far leave)."""
        ...

    def utilization(self, key: Candidate, /) -> float:
        """Live utilization of the device, 0..1 (0 when unknown)."""
        ...

    def on_node(self, node: str, /) -> int:
        """Replicas of the deployment being placed on the node so far."""
        ...


Scorer = Callable[[Candidate, Context], float]
PrimaryKey = Callable[[int, int], tuple[int, ...]]  # (free memory, replicas of the deployment on the node) -> key


# --- primary keys: what each strategy prefers first -------------------------------------------------------------


def binpack(free: int, on_node: int) -> tuple[int, ...]:
    """Fill devices up: the least free memory (among those that fit) first."""
    return (free,)


def spread(free: int, on_node: int) -> tuple[int, ...]:
    """Fan out: the node with the fewest replicas of the deployment, then the most free memory."""
    return on_node, -free


# Strategy name -> primary key. The pass keeps pools sorted so that the best keys are found without a walk;
# tests/test_scoring.py checks its picks against these keys by definition.
STRATEGIES: dict[str, PrimaryKey] = {"binpack": binpack, "spread": spread}


# --- scorers: the ranking within the group that ties on the primary key -------------------------------------


def utilization(device: DeviceView) -> float:
    """A device view's live utilization, 0 when unknown."""
    return device.utilization or 0.0


def least_busy(candidate: Candidate, context: Context) -> float:
    """The least utilized device first."""
    return context.utilization(candidate)


def not_suspect(candidate: Candidate, context: Context) -> float:
    """A device its agent judges suspect (a recoverable XID, throttling, some failed requests) after the others."""
    return float(context.device(candidate).health_state == "suspect")


RANKING: tuple[Scorer, ...] = (not_suspect, least_busy)


# --- preemption ---------------------------------------------------------------------------------------------


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
    priorities: Sequence[int], room: int, rank: object, node: str, device: str
) -> tuple[int, int, int, object, str, str]:
    """Between devices where preemption works: the lowest top victim priority, then the fewest victims, then the
    least room (free memory plus what the victims hold: the tightest fit), then `rank` (the `RANKING` chain's
    answer for the device), names."""
    return max(priorities, default=0), len(priorities), room, rank, node, device
