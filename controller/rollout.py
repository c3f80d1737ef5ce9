"""Rolling updates: a deployment's nodes move to a new model version one node at a time, with no request failed.

During a rollout a node serves one version of the deployment (a split is never rolled out), and its agent loads a
new version beside the one it serves, warms it up, swaps them and drains the old one (in-flight requests finish): a
node whose devices have room for both moves with nothing taken down. With no room, its old version unloads first,
which takes its replicas down: allowed only when they are no more than `max_unavailable` (-1, the default, allows
one replica where there is no room; 0 waits, paused, for room). A node that fails to load the new version pauses the
rollout (`xpud rollback` turns it back). Everything here is pure: `step` reads the deployment, its replicas, what
nodes report and free memory, and says what the rollout becomes; the controller persists it (the spec carries it)
and pushes the shares.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from xpud.proto.status import FailedPrecondition

from .core import DeploymentSpec, Replica, Rollout
from .store import Event

Key = tuple[str, str]  # (node, device)


@dataclass(frozen=True)
class Served:
    """What a node reports of the deployment's instance."""

    state: str  # LOADING, READY, FAILED, UNLOADING
    model: str
    version: str
    reason: str = ""


Report = Callable[[str], "Served | None"]  # node -> what it reports of the deployment (None: nothing)


def begin(old: DeploymentSpec, new: DeploymentSpec, source: str, target: str, now: float,
          nodes: Sequence[str]) -> DeploymentSpec:
    """`new` replacing `old`, served at `source` (resolved), now at `target`: with a rollout when the served model
    version changes on a deployment that has replicas and no traffic split (a split's versions change at once).
    An apply during a rollout keeps it (same target), turns it back (the source again) or is refused."""
    rollout = old.rollout
    if rollout is not None:
        if (new.model, target) == (old.model, rollout.target):
            return replace(new, rollout=rollout, previous=old.previous)
        if (new.model, target) == (rollout.model, rollout.version):
            return replace(new, rollout=reverse(rollout, old.model, nodes), previous=old.previous)
        raise FailedPrecondition(f"deployment {old.name!r} is rolling out {old.model}:{rollout.target} (from "
                                 f"{rollout.model}:{rollout.version}); wait for it to finish (`xpud rollout status "
                                 f"{old.name}`) or turn it back with `xpud rollback {old.name}`")
    if (new.model, target) == (old.model, source) or not source:
        return replace(new, previous=old.previous)
    if old.traffic or new.traffic or not nodes:
        return replace(new, previous=(old.model, source))
    return replace(new, rollout=Rollout(old.model, source, target, started=now), previous=old.previous)


def reverse(rollout: Rollout, model: str, nodes: Sequence[str]) -> Rollout:
    """The rollout turned back (`model`: its target's): the nodes it has not updated serve its source, the new
    target, already (one unloading loads it again); those it updated go back, one at a time."""
    return Rollout(model, rollout.target, rollout.version, updated=tuple(n for n in nodes if n not in rollout.updated),
                   started=rollout.started, rollback=not rollout.rollback)


def rollback(spec: DeploymentSpec, source: str, now: float, nodes: Sequence[str]) -> DeploymentSpec:
    """The deployment returning to its previous version the same way (FailedPrecondition when there is none);
    `source`: the version it serves now (resolved), `nodes`: those holding its replicas."""
    if spec.rollout is not None:
        return replace(spec, model=spec.rollout.model, version=spec.rollout.version,
                       rollout=reverse(spec.rollout, spec.model, nodes))
    if spec.traffic:
        raise FailedPrecondition(f"deployment {spec.name!r} splits its traffic across versions "
                                 f"({' '.join(f'{v}={w}' for v, w in spec.traffic)}): set the weights with "
                                 f"`xpud traffic {spec.name} VERSION=100`")
    if not spec.previous:
        raise FailedPrecondition(f"deployment {spec.name!r} has no previous version to roll back to: it has "
                                 f"served only {spec.model}:{source or spec.version or 'latest'}")
    model, version = spec.previous
    back = Rollout(spec.model, source, version, started=now, rollback=True) if nodes else None
    return replace(spec, model=model, version=version, previous=(spec.model, source), rollout=back)


def wanted(spec: DeploymentSpec) -> list[tuple[str, str]]:
    """The (model, version) pairs a deployment's pass needs from the catalog."""
    out = [(spec.model, v) for v, _ in (spec.traffic or ((spec.version, 0),))]
    if spec.rollout is not None:
        out += [(spec.rollout.model, spec.rollout.version), (spec.model, spec.rollout.target)]
    return out


def node_version(spec: DeploymentSpec, node: str) -> tuple[str, str] | None:
    """The (model, version) a node is given during the rollout; None: nothing (its old version unloads first)."""
    rollout = spec.rollout
    if rollout is None:
        return spec.model, spec.version
    if node == rollout.down:
        return None
    if node in rollout.updated:
        return spec.model, rollout.target
    return rollout.model, rollout.version


def holders(replicas: Sequence[Replica]) -> list[str]:
    """The nodes holding the deployment's replicas, in the order a rollout takes them."""
    return sorted({r.node for r in replicas})


def step(spec: DeploymentSpec, replicas: Sequence[Replica], report: Report, free: Mapping[Key, int],
         now: float = 0.0) -> tuple[DeploymentSpec, list[Event]]:
    """The rollout's next move: the spec as it becomes (the same object when nothing moves) and its events."""
    rollout = spec.rollout
    if rollout is None:
        return spec, []
    name, target = spec.name, f"{spec.model}:{rollout.target}"
    nodes = holders(replicas)
    at_target = {n for n in nodes if (s := report(n)) is not None and s.state == "READY"
                 and (s.model, s.version) == (spec.model, rollout.target)}
    for n in rollout.updated:  # one node at a time: the last one given the target must be serving it
        if n not in nodes or n in at_target:
            continue
        served = report(n)
        if served is not None and served.state == "FAILED" and served.version == rollout.target:
            return _paused(spec, f"{target} failed to load on {n}: {served.reason}; `xpud rollback {name}` "
                           f"returns to {rollout.model}:{rollout.version}")
        return _unpause(spec)
    if rollout.down:
        if rollout.down in nodes and report(rollout.down) is not None:
            return _unpause(spec)  # its old version is still unloading
        moved = replace(rollout, down="", updated=(*rollout.updated, rollout.down), paused="")
        return replace(spec, rollout=moved), [("RolloutProgress", name, f"{rollout.down}: loading {target} "
                                               f"({len(moved.updated)}/{len(nodes)} node(s))")]
    todo = [n for n in nodes if n not in rollout.updated]
    if not todo:
        what = "rolled back to" if rollout.rollback else "rolled out"
        return (replace(spec, rollout=None, previous=(rollout.model, rollout.version)),
                [("RollbackComplete" if rollout.rollback else "RolloutComplete", name,
                  f"{what} {target} on {len(nodes)} node(s) (was {rollout.model}:{rollout.version})")])
    node = todo[0]
    here = [r for r in replicas if r.node == node]
    need: dict[Key, int] = {}
    for r in here:
        need[(r.node, r.device)] = need.get((r.node, r.device), 0) + r.memory
    short = [k for k, m in need.items() if free.get(k, 0) < m]
    if not short:
        moved = replace(rollout, updated=(*rollout.updated, node), paused="")
        return replace(spec, rollout=moved), [("RolloutProgress", name, f"{node}: loading {target} beside "
                                               f"{rollout.model}:{rollout.version} ({len(moved.updated)}/"
                                               f"{len(nodes)} node(s))")]
    allowed = 1 if spec.max_unavailable < 0 else spec.max_unavailable
    devices = ", ".join(f"{n}/{d}" for n, d in short)
    if len(here) > allowed:
        return _paused(spec, f"no room on {devices} to load {target} beside {rollout.model}:{rollout.version}, "
                       f"and unloading it first takes {len(here)} replica(s) down (--max-unavailable {allowed}); "
                       "free memory there or allow more with --max-unavailable")
    moved = replace(rollout, down=node, paused="")
    return replace(spec, rollout=moved), [("RolloutProgress", name, f"{node}: no room on {devices} beside "
                                           f"{rollout.model}:{rollout.version}: unloading it first")]


def _paused(spec: DeploymentSpec, why: str) -> tuple[DeploymentSpec, list[Event]]:
    assert spec.rollout is not None
    if spec.rollout.paused == why:
        return spec, []
    return replace(spec, rollout=replace(spec.rollout, paused=why)), [("RolloutPaused", spec.name, why)]


def _unpause(spec: DeploymentSpec) -> tuple[DeploymentSpec, list[Event]]:
    assert spec.rollout is not None
    if not spec.rollout.paused:
        return spec, []
    return replace(spec, rollout=replace(spec.rollout, paused="")), []


def free_memory(totals: Mapping[Key, int], placement: Mapping[str, Sequence[Replica]]) -> dict[Key, int]:
    """Each device's memory not held by a placed replica (as the scheduler counts it)."""
    free = dict(totals)
    for replicas in placement.values():
        for r in replicas:
            key = (r.node, r.device)
            if key in free:
                free[key] -= r.memory
    return free
