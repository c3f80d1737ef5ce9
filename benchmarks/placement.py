"""Speed of the scheduler (controller/scheduler.py) on a large synthetic pool, in plain Python.

Measures, best of --repeat runs:
  - place:      placing every replica of D deployments x R replicas onto N nodes x M devices from nothing;
  - steady:     one schedule() call with that full placement in force and nothing changed (no moves);
  - node_lost:  one schedule() call with that full placement in force and one node Lost: its replicas move;
  - added:      a `Planner` holding that placement is given one more deployment (--replicas spread replicas):
                its shortcut places only those.

With --profiles, nodes alternate between two device models and every model version has a measured preference
for one of them (`profiles.Profiles.preference`): each pick looks at the preferred model's devices first.

Prints one JSON object. Example: python benchmarks/placement.py --nodes 1000 --devices 10 --deployments 2000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace

from xpud.controller.core import NODE_LOST, Decision, DeploymentSpec, DeviceView, NodeView
from xpud.controller.planner import Planner
from xpud.controller.scheduler import schedule

GiB = 1 << 30
ZONES = ("z1", "z2", "z3", "z4")


def make_nodes(count: int, devices: int, models: tuple[str, ...] = ("",)) -> list[NodeView]:
    nodes = []
    for n in range(count):
        name = f"node-{n:04d}"
        kind = "cpu" if n % 50 == 49 else "gpu"  # a few CPU-only nodes among GPU ones
        devs = tuple(
            DeviceView(
                name, f"{kind}:{d}", kind, 80 * GiB if kind == "gpu" else 256 * GiB, utilization=(n * d % 7) / 10,
                model=models[n % len(models)],
            )
            for d in range(devices)
        )
        labels = {"pool": "a" if n % 3 else "b"}
        nodes.append(NodeView(name, labels=labels, zone=ZONES[n % len(ZONES)], devices=devs))
    return nodes


def make_deployments(count: int, replicas: int) -> list[DeploymentSpec]:
    deps = []
    for i in range(count):
        deps.append(
            DeploymentSpec(
                name=f"dep-{i:05d}",
                model=f"model-{i % 97}",
                version="1",
                replicas=replicas,
                memory_bytes=(1 + i * 7 % 12) * GiB,
                device=("gpu", "gpu", "any", "cpu")[i % 4] if i % 10 == 0 else "gpu",
                priority=i % 3,
                labels={"pool": "b"} if i % 11 == 0 else {},
                zone=ZONES[i % len(ZONES)] if i % 5 == 0 else "",
                strategy="spread" if i % 4 == 1 else "binpack",
            )
        )
    return deps


def best_of(repeat: int, fn: Callable[[], Decision]) -> tuple[float, Decision]:
    best, out = float("inf"), Decision()
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--devices", type=int, default=10)
    ap.add_argument("--deployments", type=int, default=2000)
    ap.add_argument("--replicas", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profiles", action="store_true", help="two device models, a preference for every model")
    args = ap.parse_args()

    models = ("Sim A", "Sim B") if args.profiles else ("",)
    nodes = make_nodes(args.nodes, args.devices, models)
    deps = make_deployments(args.deployments, args.replicas)
    prefer = {(m, "1"): ("Sim B", "Sim A") for m in {d.model for d in deps} | {"model-added"}} \
        if args.profiles else {}

    t_place, first = best_of(args.repeat, lambda: schedule(nodes, deps, {}, prefer=prefer))
    placed = sum(len(r) for r in first.replicas.values())
    current = first.replicas

    t_steady, steady = best_of(args.repeat, lambda: schedule(nodes, deps, current, prefer=prefer))
    assert steady.replicas == current and not steady.moved, "an unchanged input moved replicas"

    by_node: dict[str, int] = {}
    for reps in current.values():
        for r in reps:
            by_node[r.node] = by_node.get(r.node, 0) + 1
    victim = max(sorted(by_node), key=lambda n: by_node[n])
    lost = [replace(n, state=NODE_LOST) if n.name == victim else n for n in nodes]
    t_lost, after = best_of(args.repeat, lambda: schedule(lost, deps, current, prefer=prefer))

    extra = DeploymentSpec("added", "model-added", "1", args.replicas, 2 * GiB, device="gpu", strategy="spread")
    t_added, path, added = float("inf"), "", Decision()
    for _ in range(args.repeat):
        planner = Planner()
        planner.schedule(nodes, deps, current, prefer=prefer)  # a full pass: the state the shortcut starts from
        while planner.warm():  # as the controller does between passes
            pass
        gc.collect()  # the call is short: a collection the full pass left due would be most of it
        t0 = time.perf_counter()
        added = planner.schedule(nodes, [*deps, extra], current, prefer=prefer)
        t_added, path = min(t_added, time.perf_counter() - t0), planner.last

    print(
        json.dumps(
            {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "profiles": args.profiles,
                "nodes": args.nodes,
                "devices": args.nodes * args.devices,
                "deployments": args.deployments,
                "replicas_wanted": args.deployments * args.replicas,
                "place": {
                    "replicas_placed": placed,
                    "pending_deployments": len(first.pending),
                    "seconds": round(t_place, 4),
                    "placements_per_s": round(placed / t_place),
                },
                "steady": {"seconds": round(t_steady, 4), "moved": len(steady.moved)},
                "node_lost": {
                    "node": victim,
                    "replicas_on_node": by_node[victim],
                    "moved": len(after.moved),
                    "preempted": len(after.preempted),
                    "pending_deployments": len(after.pending),
                    "seconds": round(t_lost, 4),
                },
                "added": {"path": path, "replicas_placed": len(added.replicas.get("added", ())),
                          "seconds": round(t_added, 4)},
            },
            indent=2,
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
