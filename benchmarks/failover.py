"""Failure handling of the control plane, timed over real processes on loopback. Prints JSON.

- agent SIGKILL: seconds from the kill to the controller's NodeLost event, and to every replica READY again
  on the surviving node (targets: Lost within 3 s, replicas running elsewhere within 5 s);
- controller SIGKILL: inference straight to the agents while the controller is down (failures must be 0),
  then seconds from a restart on the same --state until every node is Ready and the deployment Running,
  and how many replicas moved (must be 0).

    .venv/bin/python benchmarks/failover.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tests' process helpers: one way to start and watch our processes

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402

from helpers import ControllerProcess, linked_agent, wait_for  # noqa: E402

IRIS = ROOT / "models" / "iris"


def deployment(c: ControllerProcess) -> dict:
    items = c.admin_json("deployments").get("deployments", [])
    return items[0] if items else {}


def running_on(c: ControllerProcess, nodes: set[str]) -> bool:
    d = deployment(c)
    return (d.get("phase") == "Running" and d.get("ready", 0) == 2
            and {r["node"] for r in d.get("replicas", [])} <= nodes)


def infer_loop(url: str, stop: threading.Event, counts: dict[str, int]) -> None:
    x = grpcclient.InferInput("X", [1, 4], "FP32")
    x.set_data_from_numpy(np.array([[5.1, 3.5, 1.4, 0.2]], np.float32))
    with grpcclient.InferenceServerClient(url) as client:
        while not stop.is_set():
            try:
                client.infer("iris", [x])
                counts["ok"] += 1
            except Exception:
                counts["failed"] += 1


def agent_round(tmp: Path, i: int) -> dict:
    c = ControllerProcess(str(tmp / f"s{i}"))
    a1 = linked_agent(c, "n1", str(tmp / f"a{i}-1"), "--sim", "1")
    a2 = linked_agent(c, "n2", str(tmp / f"a{i}-2"), "--sim", "1")
    try:
        wait_for(lambda: len(c.admin_json("nodes").get("nodes", [])) == 2)
        c.admin("models", "push", str(IRIS), "--name", "iris")
        c.admin("deploy", "iris", "--model", "iris", "--replicas", "2", "--strategy", "spread")
        wait_for(lambda: running_on(c, {"n1", "n2"}))
        killed = time.time()
        a2.kill()
        lost = wait_for(lambda: [e for e in c.admin_json("events")["events"] if e["kind"] == "NodeLost"],
                        interval=0.05)
        wait_for(lambda: running_on(c, {"n1"}), interval=0.05)
        ready = time.time()
        return {"lost_s": round(lost[0]["time"] - killed, 2), "replicas_ready_elsewhere_s": round(ready - killed, 2)}
    finally:
        for p in (a1, a2, c):
            p.kill()


def controller_round(tmp: Path, i: int) -> dict:
    c = ControllerProcess(str(tmp / f"cs{i}"))
    a1 = linked_agent(c, "n1", str(tmp / f"c{i}-1"), "--sim", "1")
    a2 = linked_agent(c, "n2", str(tmp / f"c{i}-2"), "--sim", "1")
    c2 = None
    try:
        wait_for(lambda: len(c.admin_json("nodes").get("nodes", [])) == 2)
        c.admin("models", "push", str(IRIS), "--name", "iris")
        c.admin("deploy", "iris", "--model", "iris", "--replicas", "2", "--strategy", "spread")
        wait_for(lambda: running_on(c, {"n1", "n2"}))
        before = sorted((r["node"], r["device"]) for r in deployment(c)["replicas"])
        stop, counts = threading.Event(), {"ok": 0, "failed": 0}
        loops = [threading.Thread(target=infer_loop, args=(a.grpc_url, stop, counts)) for a in (a1, a2)]
        for t in loops:
            t.start()
        c.kill()
        time.sleep(2.0)  # the controller is away for a while
        restarted = time.time()
        c2 = ControllerProcess(str(tmp / f"cs{i}"), c.port)
        wait_for(lambda: [n["state"] for n in c2.admin_json("nodes")["nodes"]] == ["Ready", "Ready"], interval=0.05)
        wait_for(lambda: running_on(c2, {"n1", "n2"}), interval=0.05)
        recovered = time.time()
        stop.set()
        for t in loops:
            t.join()
        after = sorted((r["node"], r["device"]) for r in deployment(c2)["replicas"])
        return {"recovered_s": round(recovered - restarted, 2), "replicas_moved": sum(a != b for a, b in
                zip(before, after, strict=True)), "agent_infers_ok": counts["ok"], "agent_infers_failed":
                counts["failed"]}
    finally:
        for p in (a1, a2, c, c2):
            if p is not None:
                p.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        agents = [agent_round(Path(tmp), i) for i in range(args.rounds)]
        controllers = [controller_round(Path(tmp), i) for i in range(args.rounds)]
    out = {
        "benchmark": "failover", "lease_s": 3.0, "interval_s": 1.0, "rounds": args.rounds,
        "agent_sigkill": agents,
        "agent_lost_s_max": max(r["lost_s"] for r in agents),
        "agent_replicas_elsewhere_s_max": max(r["replicas_ready_elsewhere_s"] for r in agents),
        "controller_sigkill": controllers,
        "controller_recovered_s_median": statistics.median(r["recovered_s"] for r in controllers),
        "targets": {"lost_within_s": 3.0, "replicas_elsewhere_within_s": 5.0},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
