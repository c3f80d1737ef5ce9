"""The placement function: which device runs each replica of each deployment.

`schedule` is pure (no I/O, no clock, no randomness; ties are broken by names). It runs in two passes:

1. Stability: every replica in `current` stays where it is unless its deployment is gone or scaled below its
   index (dropped), or `filters.displacement` says it must leave (recorded in `Decision.moved`). Kept replicas
   claim their device's memory first, higher-priority deployments first.
2. Placement, deployments by priority (higher first) then name: each missing index (lowest first) goes to the
   best feasible device (`filters` rule devices out, `scoring` ranks the rest). When none fits, replicas of
   strictly lower-priority deployments may be evicted from one device to make room (`Decision.preempted`);
   those come back as missing indexes of their own deployment, which is handled later in the same call.

Each signature's feasible devices (`memo.signature`: what the static filters read) are kept in pools sorted by
free memory and names, re-sorted as free memory changes, so the devices with the best primary key of the
deployment's strategy (`scoring.STRATEGIES`) are found by a bisect (binpack) or a short scan (spread). The first
`LOAD_CANDIDATES` of them by names are ranked by `scoring.RANKING`; live load is read only then, which keeps it
out of the sorted pools. `Scheduler` holds that state, with methods that let the `Planner` keep it between passes.
"""

from __future__ import annotations

import sys
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from . import candidates, filters, scoring
from .candidates import CandidatePool
from .core import NODE_READY, Decision, DeploymentSpec, DeviceView, NodeView, Replica
from .memo import PLAIN, FilterMemo, Key, Signature, signature
from .scoring import LOAD_CANDIDATES

__all__ = ["LOAD_CANDIDATES", "PREEMPTION_CANDIDATES", "Load", "Prefer", "Scheduler", "schedule"]

# Like Kubernetes' DefaultPreemption (minCandidateNodesAbsolute), preemption compares a bounded number of devices
# where eviction works (those with the least room that is enough first), not every device of the pool.
PREEMPTION_CANDIDATES = 100
RESERVED = sys.maxsize  # the priority reserved memory is held at: above every deployment's


Prefer = Mapping[tuple[str, str], Sequence[str]]  # (model, version) -> device models, best measured first


class Load(Protocol):
    """Live utilization by (node, device id), None when unknown (then the view's reading counts): a dict, or the
    controller's `pool.LiveLoad`, which reads the latest samples."""

    def get(self, key: Key, /) -> float | None: ...


class Scheduler:
    """The state of scheduling one input: node views, free memory per device, the sorted pools of feasible
    devices, the replicas placed. `run` is a whole pass. A caller that keeps the state after a pass (the
    `Planner`) moves it on with `update_live`, `refresh`, `set_load`, `add_deployment`, `place_new` and
    `build_pool`, each leaving it as a pass over the changed input would have built it. It is also the
    `scoring.Context` the scorers read during a pick."""

    def __init__(self, nodes: Sequence[NodeView], deployments: Sequence[DeploymentSpec], draining: frozenset[str],
                 memo: FilterMemo | None = None, load: Load | None = None, reserved: Mapping[Key, int] | None = None,
                 avoid: Mapping[str, frozenset[Key]] | None = None, prefer: Prefer | None = None):
        self.draining = draining  # read-only: the state is for this draining set
        self.reserved = dict(reserved or {})  # read-only: memory held outside the placement (`handover`)
        self.avoid = dict(avoid or {})  # read-only: per deployment, devices its replicas kept failing on (`drift`)
        # read-only: per (model, version), device models by measured throughput per GiB, best first (`profiles`)
        self.prefer = {mv: tuple(order) for mv, order in (prefer or {}).items()}
        self._classes: dict[str, list[CandidatePool]] = {}  # per deployment with a preference, its classes' pools
        self._cursors: dict[int, int] = {}  # spread with a preference: `_cursor` per pool (by id) of the fill
        self._memo_given = memo is not None
        self._memo = memo if memo is not None else FilterMemo()
        self._nodes = {n.name: n for n in nodes}
        self._devices: dict[Key, DeviceView] = {(n.name, d.id): d for n in nodes for d in n.devices}
        self._free = {k: d.memory_total for k, d in self._devices.items()}
        self._load = load
        self._utils: dict[Key, float] = {}  # live utilization as read in this pass
        self._ranking = scoring.RANKING  # read when the state is made: a scorer added to the table counts
        self._placing: DeploymentSpec | None = None  # the deployment a pick is for
        # spread: where the next pick of the deployment being placed starts scanning (`CandidatePool.fewest_on_node`)
        self._cursor = 0
        self._specs = {d.name: d for d in deployments}
        self._priority = {d.name: d.priority for d in deployments}
        self._levels = sorted({d.priority for d in deployments})
        self._order = sorted(self._specs.values(), key=lambda d: (-d.priority, d.name))
        self._pools: dict[Signature, CandidatePool] = {}
        self._members: dict[Key, list[CandidatePool]] = defaultdict(list)
        self._placed: dict[str, dict[int, Replica]] = {d.name: {} for d in deployments}
        self._on_device: dict[Key, dict[tuple[str, int], Replica]] = defaultdict(dict)
        self._counts: dict[str, Counter[str]] = defaultdict(Counter)  # deployment -> node -> its replicas there
        self._displaced: dict[str, dict[int, tuple[str, str]]] = defaultdict(dict)  # dep -> index -> (cause, from)
        self._held: dict[Key, Counter[int]] = defaultdict(Counter)  # device -> priority -> memory of its replicas
        self._any_ready = any(n.state == NODE_READY for n in nodes)
        self._decision = Decision()
        for key, memory in self.reserved.items():  # held above every priority: neither placed into nor preempted
            if key in self._free:
                self._take(key, memory, RESERVED)

    # --- the whole pass -----------------------------------------------------------------------------------------

    def run(self, current: Mapping[str, Sequence[Replica]]) -> Decision:
        """Keep what holds of `current`, place what is missing: `schedule`'s decision. A memo given to the state
        then keeps only the signatures in use."""
        self._keep(current)
        self._place_all()
        if self._memo_given:
            used = [*self._specs.values(), *PLAIN, *(p.spec for pools in self._classes.values() for p in pools)]
            self._memo.keep_only({(signature(spec), self.draining) for spec in used})
        return self._decision

    def replicas(self) -> dict[str, list[Replica]]:
        """The replicas placed now, by deployment (each deployment listed, its replicas by index)."""
        return {name: [have[i] for i in sorted(have)] for name, have in self._placed.items()}

    @property
    def pools(self) -> Mapping[Signature, CandidatePool]:
        """The candidate pools built so far, by signature (read-only)."""
        return self._pools

    # --- moving a kept state on (the Planner) -------------------------------------------------------------------

    def keeps_replicas(self, old: NodeView, new: NodeView) -> bool:
        """Whether a node's change keeps every replica on it where it is (as a pass's stability step would), so
        that `refresh` may take it: each device holding replicas is still there with the same memory, and
        `filters.displacement` lets each replica stay."""
        now = {dev.id: dev for dev in new.devices}
        for dev in old.devices:
            replicas = self._on_device.get((old.name, dev.id))
            if not replicas:
                continue
            device = now.get(dev.id)
            if device is None or device.memory_total != dev.memory_total:
                return False
            for replica in replicas.values():
                if filters.displacement(new.name, dev.id, new, device, self._specs[replica.deployment],
                                        self.draining):
                    return False
        return True

    def update_live(self, view: NodeView) -> None:
        """A node's new view that differs only in live readings (`memo.same_but_load`): the pools stay as they are."""
        self._nodes[view.name] = view
        for dev in view.devices:
            self._devices[(view.name, dev.id)] = dev

    def refresh(self, old: NodeView | None, new: NodeView) -> None:
        """Put a node's new view (`old`: the one the state holds, None for a node that joined) in the state, as
        building it from the new views would: the node's devices leave every pool and come back as the static
        filters now answer. For a change that keeps every replica (`keeps_replicas`): the free memory of the
        devices holding some stays."""
        name = new.name
        if old is not None:
            for dev in old.devices:
                key = (name, dev.id)
                free = self._free[key]
                for pool in self._members.pop(key, ()):
                    pool.remove(free, key)
                if not self._on_device.get(key) and key not in self.reserved:  # nothing on it: starts over
                    del self._free[key], self._devices[key]
                    self._held.pop(key, None)
                    self._on_device.pop(key, None)
        self._nodes[name] = new
        for dev in new.devices:
            key = (name, dev.id)
            self._devices[key] = dev
            self._free.setdefault(key, dev.memory_total)
        for sig, pool in self._pools.items():
            for key in pool.replace_node(old, new, self._free, self._memo.table(sig, self.draining), self.draining):
                self._members[key].append(pool)
        if new.state == NODE_READY:
            self._any_ready = True
        elif old is not None and old.state == NODE_READY:
            self._any_ready = any(n.state == NODE_READY for n in self._nodes.values())

    def set_load(self, load: Load | None) -> None:
        """The live load the next picks read (readings taken before are forgotten)."""
        self._load, self._utils = load, {}

    def add_deployment(self, spec: DeploymentSpec) -> None:
        """A deployment that is new to the state, with no replica placed yet (`place_new` places them)."""
        self._specs[spec.name], self._priority[spec.name], self._placed[spec.name] = spec, spec.priority, {}
        self._levels = sorted(set(self._levels) | {spec.priority})
        self._order = sorted(self._specs.values(), key=lambda d: (-d.priority, d.name))

    def place_new(self, spec: DeploymentSpec) -> bool:
        """Place every replica of an added deployment where a pass would, without preempting. False when one
        does not fit: then preemption or a pending reason is needed, and the state is part-way (discard it)."""
        pool = self._pool(spec)
        self._placing, self._cursor = spec, 0
        self._cursors.clear()
        for index in range(spec.replicas):
            found = self._find(spec, pool)
            if found is None:
                return False
            self._place(spec, index, found)
        return True

    def build_pool(self, spec: DeploymentSpec, *, spread: bool = False) -> bool:
        """Build the pool of the deployment's signature (with its spread order if `spread`) when the state has
        none, ahead of the first deployment that needs it. True when something was built."""
        if self.prefer and spec.name not in self._classes and (spec.model, spec.version) in self.prefer:
            for pool in self._class_pools(spec):  # its device models' pools too (shared by deployments alike)
                if spec.strategy == "spread":
                    pool.spread_order()
        sig = signature(spec)
        if sig not in self._pools:
            pool = self._pool(spec)
            if spread:
                pool.spread_order()
            return True
        pool = self._pools[sig]
        if spread and pool.desc is None:
            pool.spread_order()
            return True
        return False

    # --- scoring.Context ----------------------------------------------------------------------------------------

    @property
    def deployment(self) -> DeploymentSpec:
        assert self._placing is not None, "read during a pick only"
        return self._placing

    def device(self, key: Key, /) -> DeviceView:
        return self._devices[key]

    def free(self, key: Key, /) -> int:
        return self._free[key]

    def utilization(self, key: Key, /) -> float:
        """From `load` when given (and known there), else the view's; 0 if unknown. Read once per pass:
        consecutive picks of one deployment rank mostly the same devices."""
        util = self._utils.get(key)
        if util is None:
            util = self._load.get(key) if self._load is not None else None
            if util is None:
                util = scoring.utilization(self._devices[key])
            self._utils[key] = util
        return util

    def on_node(self, node: str, /) -> int:
        return self._counts[self.deployment.name].get(node, 0)

    # --- bookkeeping --------------------------------------------------------------------------------------------

    def _best(self, group: list[Key]) -> Key:
        """The best of a group (in names order) by the `scoring.RANKING` chain; ties go to names."""
        if len(group) == 1:
            return group[0]
        if len(self._ranking) != 1:
            return min(group, key=self._rank)
        scorer = self._ranking[0]  # the usual table: one scorer, called directly
        best, best_rank = group[0], scorer(group[0], self)
        for key in group[1:]:
            if (rank := scorer(key, self)) < best_rank:
                best, best_rank = key, rank
        return best

    def _rank(self, key: Key) -> Any:
        """A device's rank by the scorers, compared in order: one scorer's value alone, else the tuple of them."""
        ranking = self._ranking
        if len(ranking) == 1:
            return ranking[0](key, self)
        return tuple(scorer(key, self) for scorer in ranking)

    def _take(self, key: Key, memory: int, priority: int) -> None:
        """A replica of `priority` takes `memory` bytes of the device (gives them back when negative)."""
        old = self._free[key]
        new = self._free[key] = old - memory
        held = self._held[key]
        candidates.move(self._members.get(key, ()), old, new, key, priority, held)
        held[priority] += memory

    def _place(self, spec: DeploymentSpec, index: int, key: Key) -> Replica:
        replica = Replica(spec.name, index, key[0], key[1], spec.memory_bytes)
        self._placed[spec.name][index] = replica
        self._on_device[key][(spec.name, index)] = replica
        self._counts[spec.name][key[0]] += 1
        self._take(key, spec.memory_bytes, spec.priority)
        return replica

    def _evict(self, replica: Replica, cause: str) -> None:
        self._cursor = 0  # memory given back moves devices up the spread order
        self._cursors.clear()
        key = (replica.node, replica.device)
        del self._placed[replica.deployment][replica.index]
        del self._on_device[key][(replica.deployment, replica.index)]
        self._counts[replica.deployment][replica.node] -= 1
        self._take(key, -replica.memory, self._priority[replica.deployment])
        self._displaced[replica.deployment][replica.index] = (cause, f"{replica.node}/{replica.device}")

    # --- pass 1: stability --------------------------------------------------------------------------------------

    def _keep(self, current: Mapping[str, Sequence[Replica]]) -> None:
        for spec in self._order:
            for r in sorted(current.get(spec.name, ()), key=lambda r: (r.index, r.node, r.device)):
                if r.index >= spec.replicas or r.index < 0 or r.index in self._placed[spec.name]:
                    continue  # scaled down (or a duplicate index): dropped
                key = (r.node, r.device)
                cause = filters.displacement(
                    r.node, r.device, self._nodes.get(r.node), self._devices.get(key), spec, self.draining
                )
                if cause is None and key in self.avoid.get(spec.name, ()):
                    cause = f"replica failed on {r.node}/{r.device}"
                if cause is None and self._free[key] < spec.memory_bytes:
                    cause = f"device {r.node}/{r.device} has no room for {filters.fmt_bytes(spec.memory_bytes)}"
                if cause is None:
                    self._place(spec, r.index, key)
                else:
                    self._displaced[spec.name][r.index] = (cause, f"{r.node}/{r.device}")

    # --- pass 2: placement --------------------------------------------------------------------------------------

    def _pool(self, spec: DeploymentSpec) -> CandidatePool:
        sig = signature(spec)
        pool = self._pools.get(sig)
        if pool is None:
            pool, keys = CandidatePool.build(spec, self._nodes.values(), self._free, self._memo, self.draining)
            for k in keys:
                self._members[k].append(pool)
            self._pools[sig] = pool
        return pool

    def _find(self, spec: DeploymentSpec, pool: CandidatePool) -> Key | None:
        """`_pick`, with the devices the deployment avoids (a few, if any) out of its pools meanwhile."""
        avoid = self.avoid.get(spec.name)
        if not avoid:
            return self._pick(spec, pool)
        pools = [pool, *self._class_pools(spec)] if self.prefer else [pool]
        hidden = [(k, p) for k in sorted(avoid) for p in pools if any(m is p for m in self._members.get(k, ()))]
        for k, p in hidden:
            p.remove(self._free[k], k)
        try:
            return self._pick(spec, pool)
        finally:
            for k, p in hidden:
                p.insert(self._free[k], k)

    def _class_pools(self, spec: DeploymentSpec) -> list[CandidatePool]:
        """The pools of the device models `prefer` ranks for the deployment's model version, best first (one
        signature per device model: `DeploymentSpec.device_model`); empty when it ranks none. Their rejections are
        not tallied: pending reasons come from the deployment's own pool."""
        pools = self._classes.get(spec.name)
        if pools is None:
            derived = [replace(spec, device_model=m) for m in self.prefer.get((spec.model, spec.version), ())]
            missing = {d.device_model: d for d in derived if signature(d) not in self._pools}
            if missing:  # cut from the deployment's own pool in one walk (already sorted), not the nodes' filters
                split: dict[str, list[candidates.Entry]] = {m: [] for m in missing}
                devices = self._devices
                for entry in self._pool(spec).asc:
                    if (into := split.get(devices[(entry[1], entry[2])].model)) is not None:
                        into.append(entry)
                for m, entries in split.items():
                    pool = self._pools[signature(missing[m])] = CandidatePool(missing[m], Counter(), entries)
                    for _, node, dev in entries:
                        self._members[(node, dev)].append(pool)
            pools = self._classes[spec.name] = [self._pools[signature(d)] for d in derived]
        return pools

    def _pick(self, spec: DeploymentSpec, pool: CandidatePool) -> Key | None:
        """The device for the next replica: among the first LOAD_CANDIDATES devices (by names) with the best
        primary key of the strategy (`scoring.STRATEGIES`), the best by `scoring.RANKING`; with a profile
        preference for two device models or more among the feasible devices, `_pick_preferred`."""
        if self.prefer and (spec.model, spec.version) in self.prefer:
            classes = [p for p in self._class_pools(spec) if p.asc]
            if len(classes) > 1:
                return self._pick_preferred(spec, pool, classes)
        if spec.strategy == "spread":
            group, self._cursor = pool.fewest_on_node(spec.memory_bytes, self._counts[spec.name], self._cursor)
        else:
            group = pool.least_free(spec.memory_bytes)
        return self._best(group) if group else None

    def _pick_preferred(self, spec: DeploymentSpec, pool: CandidatePool, classes: list[CandidatePool]) -> Key | None:
        """binpack: the least free device that fits in the best class that has one, then in the whole pool.
        spread: its fewest replicas per node still come first (the user asked for that); among the groups that tie
        on it, the best class's (most free memory within it), the whole pool's last."""
        need = spec.memory_bytes
        if spec.strategy != "spread":
            for p in classes:
                if group := p.least_free(need):
                    return self._best(group)
            group = pool.least_free(need)
            return self._best(group) if group else None
        counts, cursors = self._counts[spec.name], self._cursors
        best: list[Key] = []
        fewest = 0
        for p in (*classes, pool):
            group, cursors[id(p)] = p.fewest_on_node(need, counts, cursors.get(id(p), 0))
            if group and (not best or counts.get(group[0][0], 0) < fewest):
                best, fewest = group, counts.get(group[0][0], 0)
                if not fewest:
                    break
        return self._best(best) if best else None

    def _preempt(self, spec: DeploymentSpec, pool: CandidatePool) -> Key | None:
        """Evict replicas of lower priority from the device where that works best; None when nowhere works.

        Victims come from the lowest priority level that is enough somewhere (then the next level up, ...);
        among the first candidates of that level, the device needing the fewest victims wins.
        """
        need, prio = spec.memory_bytes, spec.priority
        best: tuple[tuple[int, int, int, object, str, str], Key, list[Replica]] | None = None
        for ceiling in (p for p in self._levels if p < prio):
            room = pool.room_at(ceiling, self._held)
            start = bisect_left(room, (need,))
            for space, node, dev in room[start : start + PREEMPTION_CANDIDATES]:
                key = (node, dev)
                victims = sorted(
                    (r for r in self._on_device[key].values() if self._priority[r.deployment] <= ceiling),
                    key=lambda r: scoring.victim_key(self._priority[r.deployment], r.index, r.deployment),
                )
                chosen = scoring.pick_victims(self._free[key], need, victims)
                if not chosen:  # cannot happen (room >= need and _find failed), but stay safe
                    continue
                rank = scoring.preemption_key([self._priority[r.deployment] for r in chosen], space,
                                              self._rank(key), node, dev)
                if best is None or rank < best[0]:
                    best = (rank, key, chosen)
            if best is not None:
                break
        if best is None:
            return None
        for r in best[2]:
            cause = f"preempted by {spec.name} (priority {prio} > {self._priority[r.deployment]})"
            self._decision.preempted.append((r.deployment, f"{cause}: replica {r.index} on {r.node}/{r.device}"))
            self._evict(r, cause)
        return best[1]

    def _pending_reason(self, spec: DeploymentSpec, pool: CandidatePool) -> str:
        placed = len(self._placed[spec.name])
        prefix = f"{placed}/{spec.replicas} replicas placed: " if placed else ""
        if not self._nodes:
            return prefix + "no nodes"
        if not self._any_ready:
            return prefix + "no Ready node"
        return prefix + pool.explain(spec, len(self._devices))

    def _fill(self, spec: DeploymentSpec) -> bool:
        """Place the missing replicas of one deployment, lowest index first; False when some are left."""
        have = self._placed[spec.name]
        missing = [i for i in range(spec.replicas) if i not in have]
        if not missing:
            return True
        pool = self._pool(spec)
        self._placing, self._cursor = spec, 0
        self._cursors.clear()
        for index in missing:
            key = self._find(spec, pool) or self._preempt(spec, pool)
            if key is None:
                return False
            self._place(spec, index, key)
            if (gone := self._displaced[spec.name].pop(index, None)) is not None:
                to = f"{key[0]}/{key[1]}"
                self._decision.moved.append((spec.name, f"{gone[0]}: replica {index} moved {gone[1]} -> {to}"))
        return True

    def _place_all(self) -> None:
        # No second pass is needed for the ones left short: once priority p's turn has come, a device's room for p
        # (memory_total minus what replicas of priority >= p hold) only shrinks. So the result is a fixed point:
        # the same input with this decision in force keeps everything and places nothing more. Pending reasons are
        # written against the final state, so they are the same in that next call.
        short = [spec for spec in self._order if not self._fill(spec)]
        for spec in short:
            self._decision.pending[spec.name] = self._pending_reason(spec, self._pool(spec))
        for spec in self._order:
            for index, (cause, source) in sorted(self._displaced.pop(spec.name, {}).items()):
                if index < spec.replicas:
                    self._decision.moved.append((spec.name, f"{cause}: replica {index} from {source} awaits a device"))
            have = self._placed[spec.name]
            self._decision.replicas[spec.name] = [have[i] for i in sorted(have)]


def schedule(
    nodes: Sequence[NodeView],
    deployments: Sequence[DeploymentSpec],
    current: Mapping[str, Sequence[Replica]],
    *,
    draining: frozenset[str] = frozenset(),
    memo: FilterMemo | None = None,
    load: Load | None = None,
    reserved: Mapping[Key, int] | None = None,
    avoid: Mapping[str, frozenset[Key]] | None = None,
    prefer: Prefer | None = None,
) -> Decision:
    """Place every replica of every deployment on a device, keeping `current` placements that still hold.

    `draining` names nodes whose replicas must move (the caller also marks them cordoned). Returns the
    replicas per deployment (sorted by index), what is pending and why, what was preempted and what moved.
    `memo` carries static-filter answers from one call to the next (the same decision, sooner). `load` gives
    devices' live utilization by (node, device id), over what their views hold (the controller's views hold none).
    `reserved` is memory by (node, device id) held outside `current` (old replicas kept while their replacements
    load): nothing is placed into it. `avoid` names, per deployment, devices its replicas leave and are not
    placed on (where they kept failing). `prefer` ranks, per (model, version), device models by measured throughput
    per GiB (`profiles.Profiles.preference`), best first: see `Scheduler._pick_preferred`.
    """
    return Scheduler(nodes, deployments, frozenset(draining), memo, load, reserved, avoid, prefer).run(current)
