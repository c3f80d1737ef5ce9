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
each signature's feasible devices are computed once into lists sorted by free memory and names, kept sorted as
free memory changes; picking a device is then a bisect (binpack) or a short scan (spread). Live load (each
device's utilization, from the views or from a `load` mapping) is read only when a device is picked: it ranks
the first `LOAD_CANDIDATES` devices (by names) among those that fit equally well, not every device of a large
pool. Like Kubernetes' percentageOfNodesToScore and Nomad's candidate limit, that bounds the work of a pick, and
it keeps live load out of the sorted lists: a load change costs nothing until a pick reads it. A caller that schedules
again and again over mostly the same node views (the controller) passes a `FilterMemo`, which keeps each node's
static-filter answers per signature across calls for as long as the node's view is the same (or differs only in
live load, which no filter reads).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from itertools import islice
from typing import Protocol

from . import filters, scoring
from .core import DEVICE_KINDS, NODE_READY, Decision, DeploymentSpec, DeviceView, NodeView, Replica

Key = tuple[str, str]  # (node, device id)
Signature = tuple[str, tuple[tuple[str, str], ...], str]
# Like Kubernetes' DefaultPreemption (minCandidateNodesAbsolute), preemption compares a bounded number of devices
# where eviction works (those with the least room that is enough first), not every device of the pool.
PREEMPTION_CANDIDATES = 100
# Live load ranks at most this many devices of those that fit equally well (the same free memory, and for spread
# the same replica count on the node): the first ones by names. In pools of up to this many devices, every one.
LOAD_CANDIDATES = 16
Entry = tuple[int, str, str]  # (free memory, node, device), or (-free, ...) in the spread order


class Load(Protocol):
    """Live utilization by (node, device id), None when unknown (then the view's reading counts): a dict, or the
    controller's `pool.LiveLoad`, which reads the latest samples."""

    def get(self, key: Key, /) -> float | None: ...


class _Pool:
    """The devices passing every static filter for one signature, sorted by free memory (ascending for binpack,
    descending for spread: built lazily) then names."""

    __slots__ = ("asc", "desc", "rejected", "room", "spec")

    def __init__(self, spec: DeploymentSpec, rejected: Counter[filters.Tally], asc: list[Entry]) -> None:
        self.spec = spec  # a deployment of the signature: what the static filters read
        self.rejected = rejected
        self.asc = asc  # (free, node, device), ascending
        self.desc: list[Entry] | None = None  # (-free, node, device), ascending
        # priority p -> (room, node, device) ascending, room = free + memory of replicas of priority <= p
        self.room: dict[int, list[Entry]] = {}

    def spread_order(self) -> list[Entry]:
        """`desc`, built the first time a spread deployment (or `Planner.warm`) needs it."""
        if self.desc is None:
            self.desc = sorted((-f, n, d) for f, n, d in self.asc)
        return self.desc


NodeAnswer = tuple[NodeView, tuple[tuple[filters.Tally, int], ...], tuple[Key, ...]]  # view, rejections, feasible


class FilterMemo:
    """Static-filter answers per (signature, draining) and node, valid while the node's view is the same object
    or one that differs only in live load (utilization, memory used), which no filter reads.

    The signatures of deployments that are gone are dropped, so the memo holds at most the live signatures times
    the nodes.
    """

    def __init__(self) -> None:
        self.answers: dict[tuple[Signature, frozenset[str]], dict[str, NodeAnswer]] = {}

    def keep_only(self, used: set[tuple[Signature, frozenset[str]]]) -> None:
        self.answers = {k: v for k, v in self.answers.items() if k in used}


def _signature(spec: DeploymentSpec) -> Signature:
    """What the static filters read of a deployment."""
    return spec.device, tuple(sorted(spec.labels.items())), spec.zone


# The signatures of deployments that name only a device kind (no labels, no zone): most of them.
_PLAIN = [DeploymentSpec("", "", "", 0, 0, device=kind) for kind in DEVICE_KINDS]


def _answer(node: NodeView, spec: DeploymentSpec, draining: frozenset[str]) -> NodeAnswer:
    """One node's static-filter answer for a deployment: its devices' rejections (tallied) and the feasible ones."""
    if (why := filters.first_node_rejection(node, spec, draining)) is not None:
        return node, ((why, len(node.devices)),), ()
    rejected: Counter[filters.Tally] = Counter()
    feasible = []
    for dev in node.devices:
        if (why := filters.first_device_rejection(dev, spec)) is not None:
            rejected[why] += 1
        else:
            feasible.append((node.name, dev.id))
    return node, tuple(rejected.items()), tuple(feasible)


class _Scheduler:
    def __init__(self, nodes: Sequence[NodeView], deployments: Sequence[DeploymentSpec], draining: frozenset[str],
                 memo: FilterMemo | None = None, load: Load | None = None):
        self.draining = draining
        self.memo = memo if memo is not None else FilterMemo()
        self.nodes = {n.name: n for n in nodes}
        self.devices: dict[Key, DeviceView] = {(n.name, d.id): d for n in nodes for d in n.devices}
        self.free = {k: d.memory_total for k, d in self.devices.items()}
        self.load = load
        self.utils: dict[Key, float] = {}  # live utilization as read in this pass
        # spread: where the next pick of the deployment being placed starts scanning (see _find); 0: the start
        self.cursor = 0
        self.specs = {d.name: d for d in deployments}
        self.priority = {d.name: d.priority for d in deployments}
        self.levels = sorted({d.priority for d in deployments})
        self.order = sorted(self.specs.values(), key=lambda d: (-d.priority, d.name))
        self.pools: dict[Signature, _Pool] = {}
        self.members: dict[Key, list[_Pool]] = defaultdict(list)
        self.placed: dict[str, dict[int, Replica]] = {d.name: {} for d in deployments}
        self.on_device: dict[Key, dict[tuple[str, int], Replica]] = defaultdict(dict)
        self.on_node: dict[str, Counter[str]] = defaultdict(Counter)
        self.displaced: dict[str, dict[int, tuple[str, str]]] = defaultdict(dict)  # dep -> index -> (cause, from)
        self.held: dict[Key, Counter[int]] = defaultdict(Counter)  # device -> priority -> memory of its replicas
        self.any_ready = any(n.state == NODE_READY for n in nodes)
        self.decision = Decision()

    # --- bookkeeping ------------------------------------------------------------------------------------------

    def _util(self, key: Key) -> float:
        """A device's live utilization: from `load` when given (and known there), else its view's; 0 if unknown.
        Read once per pass (`utils`): consecutive picks of one deployment rank mostly the same devices."""
        util = self.utils.get(key)
        if util is None:
            util = self.load.get(key) if self.load is not None else None
            if util is None:
                util = scoring.utilization(self.devices[key])
            self.utils[key] = util
        return util

    def _least_busy(self, group: Sequence[Entry]) -> Key:
        """The least busy device of a group (in names order: ties go to names)."""
        best = group[0]
        if len(group) > 1:
            best_util = self._util((best[1], best[2]))
            for entry in group[1:]:
                if (util := self._util((entry[1], entry[2]))) < best_util:
                    best, best_util = entry, util
        return best[1], best[2]

    def _held(self, key: Key, ceiling: int) -> int:
        """Memory held on a device by replicas with priority <= ceiling."""
        return sum(m for p, m in self.held[key].items() if p <= ceiling)

    def _take(self, key: Key, memory: int, priority: int) -> None:
        """A replica of `priority` takes `memory` bytes of the device (gives them back when negative)."""
        old = self.free[key]
        new = self.free[key] = old - memory
        node, dev = key
        for pool in self.members.get(key, ()):
            del pool.asc[bisect_left(pool.asc, (old, node, dev))]
            insort(pool.asc, (new, node, dev))
            if pool.desc is not None:
                del pool.desc[bisect_left(pool.desc, (-old, node, dev))]
                insort(pool.desc, (-new, node, dev))
            for ceiling, room in pool.room.items():
                if priority > ceiling:  # memory of replicas <= ceiling counts as room: theirs does not change it
                    held = self._held(key, ceiling)
                    del room[bisect_left(room, (old + held, node, dev))]
                    insort(room, (new + held, node, dev))
        self.held[key][priority] += memory

    def _place(self, spec: DeploymentSpec, index: int, key: Key) -> Replica:
        replica = Replica(spec.name, index, key[0], key[1], spec.memory_bytes)
        self.placed[spec.name][index] = replica
        self.on_device[key][(spec.name, index)] = replica
        self.on_node[spec.name][key[0]] += 1
        self._take(key, spec.memory_bytes, spec.priority)
        return replica

    def _evict(self, replica: Replica, cause: str) -> None:
        self.cursor = 0  # memory given back moves devices up the spread order
        key = (replica.node, replica.device)
        del self.placed[replica.deployment][replica.index]
        del self.on_device[key][(replica.deployment, replica.index)]
        self.on_node[replica.deployment][replica.node] -= 1
        self._take(key, -replica.memory, self.priority[replica.deployment])
        self.displaced[replica.deployment][replica.index] = (cause, f"{replica.node}/{replica.device}")

    def refresh(self, old: NodeView | None, new: NodeView) -> None:
        """Put a node's new view (`old`: the one this state holds, None for a node it has not seen) in the state,
        as building it from the new views would: the node's devices leave every pool and come back as the static
        filters now answer. For a change that keeps every replica on the node (`_keeps_replicas`): the free memory
        of the devices that hold some stays."""
        name = new.name
        if old is not None:
            for dev in old.devices:
                key = (name, dev.id)
                free = self.free[key]
                for pool in self.members.pop(key, ()):
                    del pool.asc[bisect_left(pool.asc, (free, name, dev.id))]
                    if pool.desc is not None:
                        del pool.desc[bisect_left(pool.desc, (-free, name, dev.id))]
                if not self.on_device.get(key):  # nothing on it: it starts over from its new view
                    del self.free[key], self.devices[key]
                    self.held.pop(key, None)
                    self.on_device.pop(key, None)
        self.nodes[name] = new
        for dev in new.devices:
            key = (name, dev.id)
            self.devices[key] = dev
            self.free.setdefault(key, dev.memory_total)
        for sig, pool in self.pools.items():
            answers = self.memo.answers.setdefault((sig, self.draining), {})
            if old is not None:
                for why, count in _answer(old, pool.spec, self.draining)[1]:
                    pool.rejected[why] -= count
                    if not pool.rejected[why]:
                        del pool.rejected[why]
            answer = answers[name] = _answer(new, pool.spec, self.draining)
            for why, count in answer[1]:
                pool.rejected[why] += count
            for key in answer[2]:
                free = self.free[key]
                insort(pool.asc, (free, *key))
                if pool.desc is not None:
                    insort(pool.desc, (-free, *key))
                self.members[key].append(pool)
            pool.room.clear()  # only preemption reads it, and only a full pass (a state of its own) preempts
        if new.state == NODE_READY:
            self.any_ready = True
        elif old is not None and old.state == NODE_READY:
            self.any_ready = any(n.state == NODE_READY for n in self.nodes.values())

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

    def _pool(self, spec: DeploymentSpec) -> _Pool:
        sig = _signature(spec)
        pool = self.pools.get(sig)
        if pool is not None:
            return pool
        answers = self.memo.answers.setdefault((sig, self.draining), {})
        rejected: Counter[filters.Tally] = Counter()
        keys: list[Key] = []
        for node in self.nodes.values():
            answer = answers.get(node.name)
            if answer is None or answer[0] is not node:
                if answer is not None and _same_but_load(answer[0], node):
                    answer = answers[node.name] = (node, answer[1], answer[2])  # the same answer, for this view
                else:
                    answer = answers[node.name] = _answer(node, spec, self.draining)
            for why, count in answer[1]:
                rejected[why] += count
            keys.extend(answer[2])
        pool = _Pool(spec, rejected, sorted((self.free[k], *k) for k in keys))
        for k in keys:
            self.members[k].append(pool)
        self.pools[sig] = pool
        return pool

    def _find(self, spec: DeploymentSpec, pool: _Pool) -> Key | None:
        """The device for the next replica: the best by `scoring`'s keys, live load ranking the first
        LOAD_CANDIDATES of those that tie on everything before it."""
        need = spec.memory_bytes
        if spec.strategy != "spread":  # the least free memory that fits
            asc = pool.asc
            i = bisect_left(asc, (need,))
            if i == len(asc):
                return None
            free = asc[i][0]
            return self._least_busy([e for e in asc[i : i + LOAD_CANDIDATES] if e[0] == free])
        desc, counts = pool.spread_order(), self.on_node[spec.name]
        # Most free first: stop at the first that does not fit. The devices before `cursor` are on nodes that have
        # a replica of this deployment already: its earlier picks in this fill found them so, and placing only
        # adds replicas and moves the picked device down the order (an eviction resets the cursor). So a node
        # without one is looked for from there; when there is none, the fewest replicas from the start.
        for first in dict.fromkeys((self.cursor, 0)):
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
        self.cursor = start if start >= 0 and best_count == 0 else 0
        if start < 0:
            return None
        neg_free, group = desc[start][0], list[Entry]()
        for entry in islice(desc, start, None):  # the first candidates with the same free memory and count, by names
            if entry[0] != neg_free or len(group) == LOAD_CANDIDATES:
                break
            if counts.get(entry[1], 0) == best_count:
                group.append(entry)
        return self._least_busy(group)

    def _preempt(self, spec: DeploymentSpec, pool: _Pool) -> Key | None:
        """Evict replicas of lower priority from the device where that works best; None when nowhere works.

        Victims come from the lowest priority level that is enough somewhere (then the next level up, ...);
        among the first candidates of that level, the device needing the fewest victims wins.
        """
        need, prio = spec.memory_bytes, spec.priority
        best: tuple[tuple[int, int, int, float, str, str], Key, list[Replica]] | None = None
        for ceiling in (p for p in self.levels if p < prio):
            room = pool.room.get(ceiling)
            if room is None:
                room = pool.room[ceiling] = sorted((f + self._held((n, d), ceiling), n, d) for f, n, d in pool.asc)
            start = bisect_left(room, (need,))
            for space, node, dev in room[start : start + PREEMPTION_CANDIDATES]:
                key = (node, dev)
                victims = sorted(
                    (r for r in self.on_device[key].values() if self.priority[r.deployment] <= ceiling),
                    key=lambda r: scoring.victim_key(self.priority[r.deployment], r.index, r.deployment),
                )
                chosen = scoring.pick_victims(self.free[key], need, victims)
                if not chosen:  # cannot happen (room >= need and _find failed), but stay safe
                    continue
                rank = scoring.preemption_key([self.priority[r.deployment] for r in chosen], space, self._util(key),
                                              node, dev)
                if best is None or rank < best[0]:
                    best = (rank, key, chosen)
            if best is not None:
                break
        if best is None:
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

    def _fill(self, spec: DeploymentSpec) -> bool:
        """Place the missing replicas of one deployment, lowest index first; False when some are left."""
        have = self.placed[spec.name]
        missing = [i for i in range(spec.replicas) if i not in have]
        if not missing:
            return True
        pool = self._pool(spec)
        self.cursor = 0
        for index in missing:
            key = self._find(spec, pool) or self._preempt(spec, pool)
            if key is None:
                return False
            self._place(spec, index, key)
            if (gone := self.displaced[spec.name].pop(index, None)) is not None:
                to = f"{key[0]}/{key[1]}"
                self.decision.moved.append((spec.name, f"{gone[0]}: replica {index} moved {gone[1]} -> {to}"))
        return True

    def place(self) -> None:
        # No second pass is needed for the ones left short: once priority p's turn has come, a device's room for p
        # (memory_total minus what replicas of priority >= p hold) only shrinks. So the result is a fixed point:
        # the same input with this decision in force keeps everything and places nothing more. Pending reasons are
        # written against the final state, so they are the same in that next call.
        short = [spec for spec in self.order if not self._fill(spec)]
        for spec in short:
            self.decision.pending[spec.name] = self._pending_reason(spec, self._pool(spec))
        for spec in self.order:
            for index, (cause, source) in sorted(self.displaced.pop(spec.name, {}).items()):
                if index < spec.replicas:
                    self.decision.moved.append((spec.name, f"{cause}: replica {index} from {source} awaits a device"))
            have = self.placed[spec.name]
            self.decision.replicas[spec.name] = [have[i] for i in sorted(have)]


def schedule(
    nodes: Sequence[NodeView],
    deployments: Sequence[DeploymentSpec],
    current: Mapping[str, Sequence[Replica]],
    *,
    draining: frozenset[str] = frozenset(),
    memo: FilterMemo | None = None,
    load: Load | None = None,
) -> Decision:
    """Place every replica of every deployment on a device, keeping `current` placements that still hold.

    `draining` names nodes whose replicas must move (the caller also marks them cordoned). Returns the
    replicas per deployment (sorted by index), what is pending and why, what was preempted and what moved.
    `memo` carries static-filter answers from one call to the next (the same decision, sooner). `load` gives
    devices' live utilization by (node, device id), over what their views hold (the controller's views hold none).
    """
    return _full(nodes, deployments, current, frozenset(draining), memo, load).decision


def _full(nodes: Sequence[NodeView], deployments: Sequence[DeploymentSpec], current: Mapping[str, Sequence[Replica]],
          draining: frozenset[str], memo: FilterMemo | None, load: Load | None) -> _Scheduler:
    """One whole pass; the memo then keeps only the signatures still in use."""
    s = _Scheduler(nodes, deployments, draining, memo, load)
    s.keep(current)
    s.place()
    if memo is not None:
        memo.keep_only({(_signature(spec), draining) for spec in [*deployments, *_PLAIN]})
    return s


class Planner:
    """`schedule` for a caller that schedules again and again (the controller), with two shortcuts.

    Each pass keeps the scheduler's final state (free memory per device, the sorted device pools) with its inputs.
    The next pass, if its nodes are the same (views that differ only in live load, utilization or memory used,
    count as the same: the sorted lists hold no load) or changed in ways that keep every replica where it is
    (nodes that joined; nodes that went Suspect or came back, were cordoned, relabelled, or whose devices' health
    changed, while `filters.displacement` keeps each of their replicas: `_Scheduler.refresh` puts their new views in
    the kept state, as a join storm needs), its draining set and the other deployments are equal, the current
    placement is the last decision's and nothing was left pending:
      - with no deployment added, the decision is the last one (a full pass would keep every replica and place
        nothing), so nothing is computed;
      - with one deployment added, only that one is placed, against the kept state. A full pass would do the
        same: it keeps every current replica first, and with nothing pending the new deployment is the only one
        with missing replicas. Should it need preemption, the pass starts over in full (evictions move others).
    Anything else is a full `schedule` pass (with the `FilterMemo`). So the decision is always the one `schedule`
    gives for the same input; the shortcuts only make adding a deployment to a large, settled pool cost its own
    replicas, and a join its own nodes, instead of every device.
    """

    def __init__(self) -> None:
        self.memo = FilterMemo()
        self._last: _Scheduler | None = None
        self._nodes: Sequence[NodeView] = ()
        self._specs: dict[str, DeploymentSpec] = {}
        self.last = ""  # the path the last pass took: "full", "same" or "added"
        self.why = ""  # why the last full pass could not take a shortcut
        self.passes: Counter[str] = Counter()  # how many passes took each path
        self.refreshed = 0  # nodes that joined or changed without a full pass (`_Scheduler.refresh`)

    def schedule(self, nodes: Sequence[NodeView], deployments: Sequence[DeploymentSpec],
                 current: Mapping[str, Sequence[Replica]], *, draining: frozenset[str] = frozenset(),
                 load: Load | None = None) -> Decision:
        draining = frozenset(draining)
        specs = {d.name: d for d in deployments}
        decision = self._shortcut(nodes, specs, current, draining, load)
        if decision is None:
            self.last = "full"
            s = _full(nodes, deployments, current, draining, self.memo, load)
            for spec in deployments:  # ready for the next deployment of a signature in use (usually the next one's)
                s._pool(spec)
            self._last, decision = s, s.decision
        self.passes[self.last] += 1
        self._nodes, self._specs = nodes, specs
        return decision

    def warm(self) -> bool:
        """Build one missing pool of a plain signature (`_PLAIN`) in the kept state, then one missing spread order
        of those pools, so that the first deployment of that signature is placed without walking every node's
        filters or sorting its devices again (5 ms at 10,000 nodes). True if one was built (call again); False when
        there is nothing (left) to build. Between passes only (the caller runs passes one at a time)."""
        s = self._last
        if s is None:
            return False
        for spec in _PLAIN:
            if _signature(spec) not in s.pools:
                s._pool(spec)
                return True
        for spec in _PLAIN:
            if (pool := s.pools[_signature(spec)]).desc is None:
                pool.spread_order()
                return True
        return False

    def _shortcut(self, nodes: Sequence[NodeView], specs: dict[str, DeploymentSpec],
                  current: Mapping[str, Sequence[Replica]], draining: frozenset[str],
                  load: Load | None) -> Decision | None:
        s = self._last
        if s is None or s.decision.pending or draining != s.draining:
            self.why = "first pass" if s is None else "pending" if s.decision.pending else "draining changed"
            return None
        changed = _changes(self._nodes, nodes)
        if changed is None:
            self.why = "nodes gone"
            return None
        live, refresh = [], []  # views that differ in live load only; nodes that joined or changed (see refresh)
        for old, new in changed:
            if old is not None and _same_but_load(old, new):
                live.append(new)
            elif old is None or _keeps_replicas(s, old, new):
                refresh.append((old, new))
            else:
                self.why = "node(s) changed"
                return None
        added = [name for name in specs if name not in self._specs]
        if len(added) > 1 or len(specs) - len(added) != len(self._specs) \
                or any(specs[name] != spec for name, spec in self._specs.items()):
            self.why = "deployments changed"
            return None
        placed = {name: [have[i] for i in sorted(have)] for name, have in s.placed.items() if have}
        if {name: list(reps) for name, reps in current.items() if reps} != placed:
            self.why = "placement changed"
            return None
        for view in live:  # only live load moved: the same filter answers and sorted lists, new readings
            s.nodes[view.name] = view
            for dev in view.devices:
                s.devices[(view.name, dev.id)] = dev
        for old, new in refresh:  # nothing was pending, and these moves no replica: capacity only changed
            s.refresh(old, new)
        self.refreshed += len(refresh)
        s.load, s.utils = load, {}
        if not added:
            self.last = "same"
            return Decision(replicas={name: list(reps) for name, reps in s.decision.replicas.items()})
        spec = specs[added[0]]
        s.specs[spec.name], s.priority[spec.name], s.placed[spec.name] = spec, spec.priority, {}
        s.levels = sorted(set(s.levels) | {spec.priority})
        s.order = sorted(s.specs.values(), key=lambda d: (-d.priority, d.name))
        pool = s._pool(spec)
        s.cursor = 0
        for index in range(spec.replicas):
            found = s._find(spec, pool)
            if found is None:  # preemption or pending: only a full pass decides those
                self._last, self.why = None, "needs preemption or stays pending"
                return None
            s._place(spec, index, found)
        self.last = "added"
        s.decision = Decision(replicas={name: [have[i] for i in sorted(have)] for name, have in s.placed.items()})
        return s.decision


def _changes(before: Sequence[NodeView], after: Sequence[NodeView]) -> list[tuple[NodeView | None, NodeView]] | None:
    """The views that are new objects in `after`, with the one `before` held for the node (None: a node that
    joined); None when a node of `before` is gone. The controller's views keep their places and joined nodes
    come after them (`Pool.views`): then one walk by position; other orders are matched by name."""
    if len(after) >= len(before):
        pairs: list[tuple[NodeView | None, NodeView]] = [
            (old, new) for old, new in zip(before, after[:len(before)], strict=True) if old is not new]
        if all(old is not None and old.name == new.name for old, new in pairs):  # (node names are unique)
            return pairs + [(None, new) for new in after[len(before):]]
    held = {view.name: view for view in before}
    pairs = []
    for new in after:
        old = held.pop(new.name, None)
        if old is not new:
            pairs.append((old, new))
    return None if held else pairs


def _keeps_replicas(s: _Scheduler, old: NodeView, new: NodeView) -> bool:
    """Whether a node's change keeps every replica on it where it is (as `keep` in a full pass would), so that
    `_Scheduler.refresh` may take it: each device holding replicas is still there with the same memory, and
    `filters.displacement` lets each replica stay (a Suspect, cordoned or relabelled node that still matches, a
    device whose health is now known...)."""
    now = {dev.id: dev for dev in new.devices}
    for dev in old.devices:
        replicas = s.on_device.get((old.name, dev.id))
        if not replicas:
            continue
        device = now.get(dev.id)
        if device is None or device.memory_total != dev.memory_total:
            return False
        for replica in replicas.values():
            if filters.displacement(new.name, dev.id, new, device, s.specs[replica.deployment], s.draining):
                return False
    return True


def _same_but_load(old: NodeView, new: NodeView) -> bool:
    """The same node for every filter and for displacement: only live readings (utilization, memory used) moved."""
    if (old.name, old.state, old.cordoned, old.zone, len(old.devices)) != \
            (new.name, new.state, new.cordoned, new.zone, len(new.devices)) or old.labels != new.labels:
        return False
    return all((a.node, a.id, a.kind, a.memory_total, a.runnable, a.health)
               == (b.node, b.id, b.kind, b.memory_total, b.runnable, b.health)
               for a, b in zip(old.devices, new.devices, strict=True))
