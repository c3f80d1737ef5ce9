"""What one scheduling pass costs as deployments accumulate: the controller in-process, side by side per step.

N nodes (2 simulated GPUs and a CPU each, the same Hello and telemetry as `scale.py`'s agents) join a real
`Controller` on a real store (SQLite in a temporary directory, fsync'd). Their sessions are in-memory outboxes,
so nothing but the pass is measured: no gRPC, no other streams. Then D deployments of R spread replicas are
created one after the other through the Admin servicer (`CreateDeployment`, as the CLI's call lands), with a
second of telemetry for every node before each. Each pass's breakdown is the controller's own: the values of
the line `--controller-debug` logs for it, taken from the log record (so older commits can be measured too).

Prints JSON: for the first, the middle and the last deployments, the call's time and the pass's steps
(schedule, shares, commit, pushes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale_agents import hello_for, telemetry_for

from xpud.controller.admin import AdminService
from xpud.controller.control import Controller
from xpud.controller.linkservice import Session
from xpud.controller.store import ArtifactStore, SqliteStore
from xpud.controller.tuning import ProcessTuning
from xpud.proto import admin_pb2 as apb


class PassLog(logging.Handler):
    """Keeps the values of the controller's last "pass (...)" debug line: kind, inputs, views, schedule, CPU,
    shares, commit, pushes, push time, garbage collection, oldest generation."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.last: tuple[Any, ...] = ()

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, str) and record.msg.startswith("pass (") and isinstance(record.args, tuple):
            self.last = record.args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    passes = PassLog()
    logger = logging.getLogger("xpud.controller.control")
    logger.addHandler(passes)
    logger.setLevel(logging.DEBUG)
    with tempfile.TemporaryDirectory(prefix="xpud-pass-") as tmp:
        store, artifacts = SqliteStore(Path(tmp)), ArtifactStore(Path(tmp) / "artifacts")
        # the tuning `xpud controller` installs; no node is lost while the pool is built
        controller = Controller(store, artifacts, lease=1e9, tuning=ProcessTuning(time.monotonic))
        await controller.start()
        started = time.perf_counter()
        for i in range(args.nodes):
            hello = hello_for(i, 2).hello
            node = controller.pool.node(hello.node)
            node.session = Session(hello.node)
            controller.pool.hello(node, hello, time.time())
            controller.pool.telemetry(node, telemetry_for(1, 2, i * 0.1).telemetry)
            await controller.node_joined(node, hello)
        await controller.reconcile_now()
        while controller.planner.warm():  # what the controller does between passes once the pool settles
            pass
        joined = time.perf_counter() - started
        digest, size = artifacts.put([b"\x08" + b"\0" * 100])
        store.add_model("bench", None, digest, size, "model.onnx")
        admin = AdminService(controller)
        steps = []
        for k in range(args.deployments):
            for i, node in enumerate(controller.pool.nodes.values()):  # a second of telemetry: load moves
                controller.pool.telemetry(node, telemetry_for(2 + k, 2, i * 0.1).telemetry)
                controller.pool.seen(node, time.time())
                while not node.session.outbox.empty():  # what the agents would have read
                    node.session.outbox.get_nowait()
            t0 = time.perf_counter()
            await admin.CreateDeployment(apb.Deployment(name=f"bench-{k}", model="bench", replicas=args.replicas,
                                                        device="gpu", strategy="spread"), None)
            call = (time.perf_counter() - t0) * 1e3
            kind, _, _, schedule, _, shares, commit, pushes, push, *_ = passes.last
            steps.append({"deployment": k + 1, "call_ms": round(call, 2), "pass": kind,
                          "schedule_ms": round(schedule, 2), "shares_ms": round(shares, 2),
                          "commit_ms": round(commit, 2), "pushes": pushes, "push_ms": round(push, 2)})
        await controller.close()
        store.close()
    picks = sorted({0, len(steps) // 2, len(steps) - 1})
    last_tenth = steps[-max(len(steps) // 10, 1):]
    return {
        "benchmark": "pass_cost", "nodes": args.nodes, "deployments": args.deployments, "replicas": args.replicas,
        "machine": {"python": platform.python_version(), "arch": platform.machine()},
        "join_s": round(joined, 2),
        "steps": [steps[i] for i in picks],
        "last_tenth_median_ms": {key: round(statistics.median(s[key] for s in last_tenth), 2)
                                 for key in ("call_ms", "schedule_ms", "shares_ms", "commit_ms", "push_ms")},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--deployments", type=int, default=30)
    parser.add_argument("--replicas", type=int, default=200, help="spread replicas per deployment")
    print(json.dumps(asyncio.run(run(parser.parse_args())), indent=2))
