"""`schedule` for a caller that schedules again and again (the controller): the same decisions, with shortcuts.

Each pass keeps the `Scheduler` state it ends with (free memory per device, the sorted device pools). The next
pass takes a shortcut when its draining set, its memory reserved outside the placement, the devices deployments
avoid and its other deployments are equal, the current placement is the last decision's, nothing was left
pending, and its nodes are the same or changed in ways that keep every replica where it is: views that differ
only in live load (`Scheduler.update_live`), nodes that joined, went Suspect or came back, were cordoned,
relabelled, or whose devices' health changed while `filters.displacement` keeps each of their replicas
(`Scheduler.refresh`). Then:
  - with no deployment added, the decision is the last one (a full pass would keep every replica and place
    nothing), so nothing is computed;
  - with one deployment added, only that one is placed, against the kept state. A full pass would do the same:
    it keeps every current replica first, and with nothing pending the new deployment is the only one with
    missing replicas. Should it need preemption, the pass starts over in full (evictions move others).
Anything else is a full pass (with the `FilterMemo`). So adding a deployment to a large, settled pool costs its
own replicas, and a join its own nodes, instead of every device.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from .core import Decision, DeploymentSpec, NodeView, Replica
from .memo import PLAIN, FilterMemo, Key, same_but_load
from .scheduler import Load, Prefer, Scheduler


class Planner:
    """Schedules like `scheduler.schedule`, keeping the state between passes (see the module docstring)."""

    def __init__(self) -> None:
        self.memo = FilterMemo()
        self._last: Scheduler | None = None
        self._decision = Decision()  # the last pass's decision: the kept state's placement
        self._nodes: Sequence[NodeView] = ()
        self._specs: dict[str, DeploymentSpec] = {}
        self.last = ""  # the path the last pass took: "full", "same" or "added"
        self.why = ""  # why the last full pass could not take a shortcut
        self.passes: Counter[str] = Counter()  # how many passes took each path
        self.refreshed = 0  # nodes that joined or changed without a full pass (`Scheduler.refresh`)

    def schedule(self, nodes: Sequence[NodeView], deployments: Sequence[DeploymentSpec],
                 current: Mapping[str, Sequence[Replica]], *, draining: frozenset[str] = frozenset(),
                 load: Load | None = None, reserved: Mapping[Key, int] | None = None,
                 avoid: Mapping[str, frozenset[Key]] | None = None, prefer: Prefer | None = None) -> Decision:
        draining = frozenset(draining)
        specs = {d.name: d for d in deployments}
        reserved, avoid = dict(reserved or {}), dict(avoid or {})
        ranked = {mv: tuple(order) for mv, order in (prefer or {}).items()}
        decision = self._shortcut(nodes, specs, current, draining, load, reserved, avoid, ranked)
        if decision is None:
            self.last = "full"
            s = Scheduler(nodes, deployments, draining, self.memo, load, reserved, avoid, ranked)
            decision = s.run(current)
            for spec in deployments:  # ready for the next deployment of a signature in use (usually the next one's)
                s.build_pool(spec)
            self._last, self._decision = s, decision
        self.passes[self.last] += 1
        self._nodes, self._specs = nodes, specs
        return decision

    def warm(self) -> bool:
        """Build one missing pool of a plain signature (`memo.PLAIN`) in the kept state, then one missing spread
        order of those pools, so that the first deployment of that signature is placed without walking every
        node's filters or sorting its devices. True if one was built (call again); False when there is nothing
        (left) to build. Between passes only (the caller runs passes one at a time)."""
        s = self._last
        if s is None:
            return False
        return any(s.build_pool(spec) for spec in PLAIN) or any(s.build_pool(spec, spread=True) for spec in PLAIN)

    def _shortcut(self, nodes: Sequence[NodeView], specs: dict[str, DeploymentSpec],
                  current: Mapping[str, Sequence[Replica]], draining: frozenset[str],
                  load: Load | None, reserved: dict[Key, int],
                  avoid: dict[str, frozenset[Key]], prefer: dict[tuple[str, str], tuple[str, ...]]) -> Decision | None:
        s, last = self._last, self._decision
        if s is None or last.pending or draining != s.draining or reserved != s.reserved or avoid != s.avoid \
                or prefer != s.prefer:
            self.why = "first pass" if s is None else "pending" if last.pending else \
                "draining changed" if draining != s.draining else "reserved memory changed" \
                if reserved != s.reserved else "avoided devices changed" if avoid != s.avoid else \
                "profile preference changed"
            return None
        changed = _changes(self._nodes, nodes)
        if changed is None:
            self.why = "nodes gone"
            return None
        live, refresh = [], []  # views that differ in live load only; nodes that joined or changed (see refresh)
        for old, new in changed:
            if old is not None and same_but_load(old, new):
                live.append(new)
            elif old is None or s.keeps_replicas(old, new):
                refresh.append((old, new))
            else:
                self.why = "node(s) changed"
                return None
        added = [name for name in specs if name not in self._specs]
        if len(added) > 1 or len(specs) - len(added) != len(self._specs) \
                or any(specs[name] != spec for name, spec in self._specs.items()):
            self.why = "deployments changed"
            return None
        placed = {name: reps for name, reps in s.replicas().items() if reps}
        if {name: list(reps) for name, reps in current.items() if reps} != placed:
            self.why = "placement changed"
            return None
        for view in live:  # the same filter answers and sorted pools, new readings
            s.update_live(view)
        for old, new in refresh:  # nothing was pending, and these move no replica: capacity only changed
            s.refresh(old, new)
        self.refreshed += len(refresh)
        s.set_load(load)
        if not added:
            self.last = "same"
            return Decision(replicas={name: list(reps) for name, reps in last.replicas.items()})
        spec = specs[added[0]]
        s.add_deployment(spec)
        if not s.place_new(spec):  # preemption or pending: only a full pass decides those
            self._last, self.why = None, "needs preemption or stays pending"
            return None
        self.last = "added"
        self._decision = Decision(replicas=s.replicas())
        return self._decision


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
