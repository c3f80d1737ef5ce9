"""Static-filter answers per node, kept across scheduling passes.

The static filters (`filters.NODE_FILTERS`, `filters.DEVICE_FILTERS`) read a deployment only through its
signature (device kind, labels, zone, device model), and a node only through what live readings do not move. So one
node's answer for one signature holds for as long as its view is the same, or differs only in live load: a caller that
schedules again and again over mostly the same views (the controller) keeps them in a `FilterMemo`.
"""

from __future__ import annotations

from collections import Counter

from . import filters
from .core import DEVICE_KINDS, DeploymentSpec, NodeView

Key = tuple[str, str]  # (node, device id)
Signature = tuple[str, tuple[tuple[str, str], ...], str, str]
NodeAnswer = tuple[NodeView, tuple[tuple[filters.Tally, int], ...], tuple[Key, ...]]  # view, rejections, feasible
MemoKey = tuple[Signature, frozenset[str]]  # (signature, draining nodes)


def signature(spec: DeploymentSpec) -> Signature:
    """What the static filters read of a deployment."""
    return spec.device, tuple(sorted(spec.labels.items())), spec.zone, spec.device_model


# Deployments that name only a device kind (no labels, no zone), one per kind: the signatures of most of them.
PLAIN = [DeploymentSpec("", "", "", 0, 0, device=kind) for kind in DEVICE_KINDS]


def answer(node: NodeView, spec: DeploymentSpec, draining: frozenset[str]) -> NodeAnswer:
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


def same_but_load(old: NodeView, new: NodeView) -> bool:
    """The same node for every filter and for displacement: only live readings (utilization, memory used) moved."""
    if (old.name, old.state, old.cordoned, old.zone, len(old.devices)) != \
            (new.name, new.state, new.cordoned, new.zone, len(new.devices)) or old.labels != new.labels:
        return False
    return all((a.node, a.id, a.kind, a.memory_total, a.runnable, a.health, a.health_state, a.model)
               == (b.node, b.id, b.kind, b.memory_total, b.runnable, b.health, b.health_state, b.model)
               for a, b in zip(old.devices, new.devices, strict=True))


class FilterMemo:
    """Static-filter answers per (signature, draining) and node, valid while the node's view is the same object
    or one that differs only in live load (`same_but_load`). A pass drops the signatures no deployment uses any
    more (`keep_only`), so the memo holds at most the live signatures times the nodes."""

    def __init__(self) -> None:
        self.answers: dict[MemoKey, dict[str, NodeAnswer]] = {}

    def table(self, sig: Signature, draining: frozenset[str]) -> dict[str, NodeAnswer]:
        """The answers of one signature, by node name (the caller fills it)."""
        return self.answers.setdefault((sig, draining), {})

    def renew(self, table: dict[str, NodeAnswer], node: NodeView, spec: DeploymentSpec,
              draining: frozenset[str]) -> NodeAnswer:
        """The answer for a node view that `table` does not hold yet: the held one when the view moved only in
        live load, else computed anew. (A caller first checks `table[node.name][0] is node`: nothing changed.)"""
        held = table.get(node.name)
        if held is not None and same_but_load(held[0], node):
            held = table[node.name] = (node, held[1], held[2])
        else:
            held = table[node.name] = answer(node, spec, draining)
        return held

    def keep_only(self, used: set[MemoKey]) -> None:
        self.answers = {k: v for k, v in self.answers.items() if k in used}
