"""The placement function: which device runs each replica of each deployment.

`schedule` is pure (no I/O, no clock, no randomness; ties are broken by names). It runs in two passes:

1. Stability: every replica in `current` stays where it is unless its deployment is gone or scaled below its
   index (dropped), or `filters.displacement` says it must leave (recorded in `Decision.moved`). Kept replicas
   claim their device's memory first, higher-priority deployments first.
2. Placement, deployments by priority (higher first) then name: each missing index (lowest first) goes to the
   best feasible device (`filters` rule devices out, `scoring` ranks the rest). When none fits, replicas of
   strictly lower-priority deployments may be evicted from one device to make room (`Decision.preempted`);
   those come back as missing indexes of their own deployment, which is handled later in the same call.

Speed: the static filters depend on a deployment only through its (device kind, labels, zone) signature, so
each signature's feasible devices are computed once into lists sorted by the score keys, kept sorted as free
memory changes; picking a device is then a bisect (binpack) or a short scan (spread).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

from . import filters, scoring
from .core import NODE_READY, Decision, DeploymentSpec, DeviceView, NodeView, Replica

Key = tuple[str, str]  # (node, device id)
Signature = tuple[str, tuple[tuple[str, str], ...], str]
# Like Kubernetes' DefaultPreemption (minCandidateNodesAbsolute), preemption compares a bounded number of
# devices where eviction works, taken in binpack order, instead of every device in the pool.
PREEMPTION_CANDIDATES = 100


class _Pool:
    """The devices passing every static filter for one signature, sorted by binpack and (lazily) spread keys."""

    __slots__ = ("asc", "desc", "rejected")

    def __init__(self, rejected: Counter[filters.Tally], asc: list[scoring.BinpackKey]) -> None:
        self.rejected = rejected
        self.asc = asc  # binpack_key(free, util, node, device), ascending
        self.desc: list[tuple[int, float, str, str]] | None = None  # spread_key(...)[1:], ascending


class _Scheduler:
    def __init__(self, nodes: Sequence[NodeView], deployments: Sequence[DeploymentSpec], draining: frozenset[str]):
        self.draining = draining
        self.nodes = {n.name: n for n in nodes}
        self.devices: dict[Key, DeviceView] = {(n.name, d.id): d for n in nodes for d in n.devices}
        self.free = {k: d.memory_total for k, d in self.devices.items()}
        self.util = {k: scoring.utilization(d) for k, d in self.devices.items()}
        self.specs = {d.name: d for d in deployments}
        self.priority = {d.name: d.priority for d in deployments}
        self.by_priority: Counter[int] = Counter()  # placed replicas per priority
        self.order = sorted(self.specs.values(), key=lambda d: (-d.priority, d.name))
        self.min_priority = min((d.priority for d in deployments), default=0)
        self.pools: dict[Signature, _Pool] = {}
        self.members: dict[Key, list[_Pool]] = defaultdict(list)
        self.placed: dict[str, dict[int, Replica]] = {d.name: {} for d in deployments}
        self.on_device: dict[Key, dict[tuple[str, int], Replica]] = defaultdict(dict)
        self.on_node: dict[str, Counter[str]] = defaultdict(Counter)
        self.displaced: dict[str, dict[int, tuple[str, str]]] = defaultdict(dict)  # dep -> index -> (cause, from)
        self.no_preemption: dict[tuple[Signature, int], int] = {}  # (signature, priority) -> smallest need that failed
        self.any_ready = any(n.state == NODE_READY for n in nodes)
        self.decision = Decision()

    # --- bookkeeping ------------------------------------------------------------------------------------------

    def _set_free(self, key: Key, new: int) -> None:
        old = self.free[key]
        self.free[key] = new
        util, (node, dev) = self.util[key], key
        for pool in self.members.get(key, ()):
            del pool.asc[bisect_left(pool.asc, (old, util, node, dev))]
            insort(pool.asc, (new, util, node, dev))
            if pool.desc is not None:
                del pool.desc[bisect_left(pool.desc, (-old, util, node, dev))]
                insort(pool.desc, (-new, util, node, dev))

    def _place(self, spec: DeploymentSpec, index: int, key: Key) -> Replica:
        replica = Replica(spec.name, index, key[0], key[1], spec.memory_bytes)
        self.placed[spec.name][index] = replica
        self.on_device[key][(spec.name, index)] = replica
        self.on_node[spec.name][key[0]] += 1
        self.by_priority[spec.priority] += 1
        self._set_free(key, self.free[key] - spec.memory_bytes)
        return replica

    def _evict(self, replica: Replica, cause: str) -> None:
        key = (replica.node, replica.device)
        del self.placed[replica.deployment][replica.index]
        del self.on_device[key][(replica.deployment, replica.index)]
        self.on_node[replica.deployment][replica.node] -= 1
        self.by_priority[self.priority[replica.deployment]] -= 1
        self._set_free(key, self.free[key] + replica.memory)
        self.displaced[replica.deployment][replica.index] = (cause, f"{replica.node}/{replica.device}")

    # --- pass 1: stability ------------------------------------------------------------------------------------

    def keep(self, current: Mapping[str, Sequence[Replica]]) -> None:
        for spec in self.order:
            for r in sorted(current.get(spec.name, ()), key=lambda r: (r.index, r.node, r.device)):
                if r.index >= spec.replicas or r.index < 0 or r.index in self.placed[spec.name]:
                    continue  # scaled down (or a duplicate index): dropped
                key = (r.node, r.device)
                cause = filters.displacement(
                    r.node, r.device, self.nodes.get(r.node), self.devices.get(key), spec, self.draining
                )
                if cause is None and self.free[key] < spec.memory_bytes:
                    cause = f"device {r.node}/{r.device} has no room for {filters.fmt_bytes(spec.memory_bytes)}"
                if cause is None:
                    self._place(spec, r.index, key)
                else:
                    self.displaced[spec.name][r.index] = (cause, f"{r.node}/{r.device}")

    # --- pass 2: placement ------------------------------------------------------------------------------------

    def _pool(self, spec: DeploymentSpec) -> tuple[_Pool, Signature]:
        sig: Signature = (spec.device, tuple(sorted(spec.labels.items())), spec.zone)
        pool = self.pools.get(sig)
        if pool is not None:
            return pool, sig
        rejected: Counter[filters.Tally] = Counter()
        keys: list[Key] = []
        for node in self.nodes.values():
            if (why := filters.first_node_rejection(node, spec, self.draining)) is not None:
                rejected[why] += len(node.devices)
                continue
            for dev in node.devices:
                if (why := filters.first_device_rejection(dev, spec)) is not None:
                    rejected[why] += 1
                else:
                    keys.append((node.name, dev.id))
        pool = _Pool(rejected, sorted(scoring.binpack_key(self.free[k], self.util[k], *k) for k in keys))
        for k in keys:
            self.members[k].append(pool)
        self.pools[sig] = pool
        return pool, sig

    def _find(self, spec: DeploymentSpec, pool: _Pool) -> Key | None:
        need = spec.memory_bytes
        if spec.strategy != "spread":
            i = bisect_left(pool.asc, (need,))
            return (pool.asc[i][2], pool.asc[i][3]) if i < len(pool.asc) else None
        if pool.desc is None:
            pool.desc = sorted(scoring.spread_key(0, f, u, n, d)[1:] for f, u, n, d in pool.asc)
        counts = self.on_node[spec.name]
        best: Key | None = None
        best_count = 0
        for neg_free, _util, node, dev in pool.desc:  # most free first: stop at the first that does not fit
            if -neg_free < need:
                break
            count = counts.get(node, 0)
            if best is None or count < best_count:
                best, best_count = (node, dev), count
                if count == 0:
                    break
        return best

    def _preempt(self, spec: DeploymentSpec, pool: _Pool, sig: Signature) -> Key | None:
        """Evict lower-priority replicas from the one device where that works best; None when nowhere works.

        Deployments come in priority order, so for priority p a device's room (free memory plus what replicas
        below p hold) never grows again once p's turn has come: a need that failed stays failed for >= needs.
        """
        need, prio = spec.memory_bytes, spec.priority
        if prio <= self.min_priority or need >= self.no_preemption.get((sig, prio), need + 1):
            return None
        floor = min((p for p, n in self.by_priority.items() if n), default=prio)  # the best top victim priority
        best: tuple[tuple[int, int, int, float, str, str], Key, list[Replica]] | None = None
        candidates = 0
        for free, util, node, dev in pool.asc:  # binpack order, so the first (1 victim, floor) device is the best
            here = self.on_device.get((node, dev))
            if not here:
                continue
            lower = [r for r in here.values() if self.priority[r.deployment] < prio]
            if not lower or free + sum(r.memory for r in lower) < need:
                continue
            lower.sort(key=lambda r: scoring.victim_key(self.priority[r.deployment], r.index, r.deployment))
            chosen = scoring.pick_victims(free, need, lower)
            if not chosen:
                continue
            rank = scoring.preemption_key([self.priority[r.deployment] for r in chosen], free, util, node, dev)
            if best is None or rank < best[0]:
                best = (rank, (node, dev), chosen)
            candidates += 1
            if rank[:2] == (1, floor) or candidates >= PREEMPTION_CANDIDATES:
                break
        if best is None:
            self.no_preemption[(sig, prio)] = need
            return None
        for r in best[2]:
            cause = f"preempted by {spec.name} (priority {prio} > {self.priority[r.deployment]})"
            self.decision.preempted.append((r.deployment, f"{cause}: replica {r.index} on {r.node}/{r.device}"))
            self._evict(r, cause)
        return best[1]

    def _pending_reason(self, spec: DeploymentSpec, pool: _Pool) -> str:
        placed = len(self.placed[spec.name])
        prefix = f"{placed}/{spec.replicas} replicas placed: " if placed else ""
        if not self.nodes:
            return prefix + "no nodes"
        if not self.any_ready:
            return prefix + "no Ready node"
        rejected = Counter(pool.rejected)
        short = bisect_left(pool.asc, (spec.memory_bytes,))
        most_free = pool.asc[-1][0] if pool.asc else None
        why = filters.memory_fits(0, spec, most_free)
        if short and why is not None:
            rejected[(filters.MEMORY_RANK, *why)] += short
        return prefix + filters.explain(rejected, len(self.devices), len(pool.asc) - short)

    def place(self) -> None:
        for spec in self.order:
            have = self.placed[spec.name]
            missing = [i for i in range(spec.replicas) if i not in have]
            if missing:
                pool, sig = self._pool(spec)
            for index in missing:
                key = self._find(spec, pool) or self._preempt(spec, pool, sig)
                if key is None:
                    self.decision.pending[spec.name] = self._pending_reason(spec, pool)
                    break
                self._place(spec, index, key)
                if (gone := self.displaced[spec.name].pop(index, None)) is not None:
                    to = f"{key[0]}/{key[1]}"
                    self.decision.moved.append((spec.name, f"{gone[0]}: replica {index} moved {gone[1]} -> {to}"))
            for index, (cause, source) in sorted(self.displaced.pop(spec.name, {}).items()):
                if index < spec.replicas:
                    self.decision.moved.append((spec.name, f"{cause}: replica {index} from {source} awaits a device"))
            self.decision.replicas[spec.name] = [have[i] for i in sorted(have)]


def schedule(
    nodes: Sequence[NodeView],
    deployments: Sequence[DeploymentSpec],
    current: Mapping[str, Sequence[Replica]],
    *,
    draining: frozenset[str] = frozenset(),
) -> Decision:
    """Place every replica of every deployment on a device, keeping `current` placements that still hold.

    `draining` names nodes whose replicas must move (the caller also marks them cordoned). Returns the
    replicas per deployment (sorted by index), what is pending and why, what was preempted and what moved.
    """
    s = _Scheduler(nodes, deployments, frozenset(draining))
    s.keep(current)
    s.place()
    return s.decision
