"""What the admin API shows of the controller's state: deployment status, nodes, the pool, events (protos)."""

from __future__ import annotations

from collections import Counter

from xpud.proto import admin_pb2 as apb

from .core import NODE_LOST, DeploymentSpec
from .pool import NodeState
from .profiles import Profiles
from .rollout import holders, node_version
from .state import State
from .stats import VersionStats
from .store import EventRecord, ModelRecord, TensorSpec
from .traffic import replica_versions, weights


def deployment_status(state: State, name: str) -> apb.DeploymentStatus:
    spec = state.specs[name]
    out = apb.DeploymentStatus(spec=deployment_proto(spec))
    failed = 0
    unreported = ""
    held: Counter[tuple[str, str, str]] = Counter()  # instances reported per (node, device, version), given out
    versions = replica_versions(spec) if spec.traffic else []
    per_version: dict[str, list[int]] = {v: [0, 0] for v, _ in weights(spec)}  # version -> [placed, ready]
    r_out = spec.rollout
    if r_out is not None:  # a rollout: its source and its target, each with the replicas of the nodes given it
        per_version = {r_out.version: [0, 0], r_out.target: [0, 0]}
    for r in sorted(state.placement.get(name, []), key=lambda r: r.index):
        node = state.pool.nodes.get(r.node)
        # with a split, the instance of the replica's version (a node may serve several versions side by side)
        inst = node.instance(name, versions[r.index] if r.index < len(versions) and r_out is None else "") \
            if node is not None else None
        replica_state, reason = "PENDING", "waiting for the node to load it"
        if node is not None and node.state == NODE_LOST:
            replica_state, reason = "PENDING", f"node {r.node} is lost"
        elif inst is not None and held[(r.node, r.device, inst.version)] < sum(d == r.device for d in inst.devices):
            held[(r.node, r.device, inst.version)] += 1  # one reported instance per replica: two on a device need two
            replica_state, reason = inst.state, inst.reason
        elif node is not None and node.generation_observed >= state.generations.get(r.node, 0) > 0:
            # the node applied the desired state that carries it and does not report it: drift, not running
            reason = f"node {r.node} does not report it (generation {node.generation_observed} applied)"
            failed += 1
            unreported = unreported or reason
        # its version: the split's for its index; with no split, what its node loaded (the latest, resolved)
        version = versions[r.index] if r.index < len(versions) else (inst.version if inst is not None else "")
        out.replicas.add(node=r.node, device=r.device, state=replica_state, reason=reason,
                         version=version or spec.version)
        out.ready += replica_state == "READY"
        # the version its node is given: a rollout's (`rollout.node_version`; one unloading first, still the source),
        # the split's, else the deployment's
        given = (node_version(spec, r.node) or (r_out.model, r_out.version))[1] if r_out is not None else \
            version if spec.traffic else spec.version
        counts = per_version.get(given)
        if counts is not None:  # with a split, ready counts only once its node loaded the replica's version
            counts[0] += 1
            loaded = not (spec.traffic or r_out) or (inst is not None and inst.version == given)
            counts[1] += replica_state == "READY" and loaded
        failed += replica_state == "FAILED"
    if r_out is not None:  # requests go to every ready replica: each version's share is its part of them
        total = max(sum(ready for _, ready in per_version.values()), 1)
        for v, (placed, ready) in per_version.items():
            out.versions.add(version=v, weight=round(100 * ready / total), replicas=placed, ready=ready)
    for v, w in weights(spec) if r_out is None else ():
        placed, ready = per_version[v]
        out.versions.add(version=v or "latest", weight=w, replicas=placed, ready=ready)
    rollout_status(state, spec, out.rollout)
    pending = state.pending.get(name, "")
    if spec.replicas == 0:  # kept, with nothing running: scaled to zero by its owner
        out.phase, out.reason = "Stopped", f"0 replicas: `xpud deploy {name} --model {spec.model}" \
            f"{':' + spec.version if spec.version else ''} --replicas N` runs it again"
    elif not out.replicas:
        out.phase, out.reason = "Pending", pending or "not scheduled yet"
    elif failed:
        out.phase = "Degraded"
        out.reason = next((r.reason for r in out.replicas if r.state == "FAILED"), unreported)
    elif out.ready >= spec.replicas:
        out.phase, out.reason = "Running", ""
    else:
        out.phase, out.reason = "Progressing", pending
    return out


def rollout_status(state: State, spec: DeploymentSpec, out: apb.RolloutStatus) -> None:
    """The rollout in progress (per node: updated, updating, unloading or waiting) and the previous version."""
    if spec.previous:
        out.previous_model, out.previous_version = spec.previous
    r = spec.rollout
    if r is None:
        return
    nodes = holders(state.placement.get(spec.name, []))
    out.state, out.reason = ("Paused", r.paused) if r.paused else ("Progressing", "")
    out.from_model, out.from_version, out.to_model, out.to_version = r.model, r.version, spec.model, r.target
    out.nodes, out.started, out.rollback = len(nodes), r.started, r.rollback
    for n in nodes:
        node = state.pool.nodes.get(n)
        inst = node.instances.get(spec.name) if node is not None else None
        serving = inst is not None and inst.state == "READY"
        at_target = serving and inst is not None and (inst.model, inst.version) == (spec.model, r.target)
        what = "unloading" if n == r.down else ("updated" if at_target else "updating") if n in r.updated \
            else "waiting"
        out.updated += what == "updated"
        out.per_node.add(node=n, state=what, version=inst.version if serving and inst is not None else "")


def add_version_stats(status: apb.DeploymentStatus, stats: VersionStats) -> apb.DeploymentStatus:
    """Fill each version's live figures from the router's window (one version alone: every answer of the
    deployment, whatever version a replica loaded)."""
    split = len(status.versions) > 1
    for v in status.versions:
        s = stats.summary(status.spec.name, v.version if split else None)
        v.request_rate, v.error_rate, v.requests = s.rate, s.error_rate, s.requests
        v.p50_ms, v.p99_ms = s.p50_s * 1000, s.p99_s * 1000
    return status


def deployment_list(state: State) -> apb.ListDeploymentsResponse:
    return apb.ListDeploymentsResponse(deployments=[deployment_status(state, name) for name in sorted(state.specs)])


def deployment_proto(spec: DeploymentSpec) -> apb.Deployment:
    return apb.Deployment(name=spec.name, model=spec.model, version=spec.version, replicas=spec.replicas,
                          device=spec.device, memory_bytes=spec.memory_bytes, priority=spec.priority,
                          labels=dict(spec.labels), zone=spec.zone, max_batch_size=spec.max_batch_size,
                          strategy=spec.strategy,
                          traffic=[apb.VersionWeight(version=v, weight=w) for v, w in spec.traffic],
                          max_inflight=spec.max_inflight, auto_rollback_error_rate=spec.auto_rollback_error_rate,
                          max_unavailable=spec.max_unavailable if spec.max_unavailable >= 0 else None)


def node_info(state: State, n: NodeState) -> apb.NodeInfo:
    return apb.NodeInfo(name=n.name, state=n.state, cordoned=n.cordoned, labels=n.labels, zone=n.zone,
                        agent_version=n.agent_version, inference_endpoint=n.endpoint,
                        generation_desired=state.generations.get(n.name, 0),
                        generation_observed=n.generation_observed, last_seen=n.last_seen_wall,
                        devices=len(n.devices), execution_providers=n.providers)


def node_list(state: State) -> apb.ListNodesResponse:
    nodes = sorted(state.pool.nodes.values(), key=lambda n: n.name)
    return apb.ListNodesResponse(nodes=[node_info(state, n) for n in nodes])


def pool_view(state: State) -> apb.GetPoolResponse:
    out = apb.GetPoolResponse()
    placed: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for name, replicas in state.placement.items():
        for r in replicas:
            placed.setdefault((r.node, r.device), []).append((name, r.memory))
    for n in sorted(state.pool.nodes.values(), key=lambda n: n.name):
        for d in n.devices.values():
            here = placed.get((n.name, d.id), [])
            item = out.devices.add(node=n.name, device=d, memory_allocated=sum(m for _, m in here),
                                   replicas=sorted(name for name, _ in here), node_state=n.state)
            if d.id in n.samples:
                item.sample.CopyFrom(n.samples[d.id])
    return out


def model_info(m: ModelRecord, profiles: Profiles | None = None) -> apb.ModelInfo:
    """A model version, with what the router measured of it per device model when `profiles` are given."""
    measured = [apb.DeviceProfile(device_model=device_model, requests=p.requests, errors=p.errors,
                                  latency_ms=p.latency_s * 1000, throughput_rps=p.throughput(),
                                  throughput_per_gib=p.per_gib(), memory_bytes=p.memory)
                for device_model, p in (profiles.of(m.name, m.version) if profiles is not None else ())
                if p.requests]
    return apb.ModelInfo(name=m.name, version=m.version, digest=m.digest, size_bytes=m.size, created=m.created,
                         inputs=[tensor_info(t) for t in m.inputs], outputs=[tensor_info(t) for t in m.outputs],
                         profile=measured)


def tensor_info(t: TensorSpec) -> apb.TensorInfo:
    return apb.TensorInfo(name=t.name, datatype=t.datatype, shape=list(t.shape), dim_names=list(t.dim_names))


def event_proto(e: EventRecord) -> apb.Event:
    return apb.Event(seq=e.seq, time=e.when, kind=e.kind, subject=e.subject, message=e.message, actor=e.actor)
