"""Placement profiles over real processes: a controller and two sim agents whose GPUs are of two device models, one
of them slow (the sim's inference_latency). Requests through the router build a profile per device model, which
`xpud models --json` shows; a deployment of the same model version then goes to the faster model's node (binpack
by names alone would take the other), and the profile is still there after the controller is killed and started
again on the same state directory."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from helpers import ControllerProcess, infer, linked_agent, wait_for

IRIS = Path(__file__).resolve().parent.parent / "models" / "iris"
SLOW, FAST = "Sim Slow-16GB", "Sim Fast-16GB"


def profile(c: ControllerProcess) -> dict[str, dict[str, Any]]:
    """iris:1's profile by device model, from `xpud models --json`."""
    (model,) = [m for m in c.admin_json("models")["models"] if m["name"] == "iris"]
    return {p["device_model"]: p for p in model.get("profile", [])}


def stored(state: Path) -> dict[str, int]:
    """Requests per device model in the store's profiles table (read beside the running controller)."""
    with sqlite3.connect(f"file:{state / 'state.db'}?mode=ro", uri=True) as db:
        return dict(db.execute("SELECT device_model, requests FROM profiles WHERE model = 'iris'").fetchall())


def test_profiles_are_measured_shown_used_for_placement_and_kept_across_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[health]\nmin_requests = 100000000\n")  # slowness is not a health matter here
    scenarios = {}
    for name, model, faults in (("n1", SLOW, [{"kind": "inference_latency", "device": 0, "delay_ms": 30}]),
                                ("n2", FAST, [])):
        scenarios[name] = tmp_path / f"{name}.json"
        scenarios[name].write_text(json.dumps({"count": 1, "model": model, "memory_gb": 16, "faults": faults}))
    state = tmp_path / "state"
    c = ControllerProcess(str(state), None, "--routing-policy", "round-robin")  # both replicas get their share
    agents = []
    try:
        for name in ("n1", "n2"):
            agents.append(linked_agent(c, name, str(tmp_path / name), "--sim", "1", "--scenario",
                                       str(scenarios[name]), "--config", str(config)))
        assert c.admin("models", "push", str(IRIS), "--name", "iris").returncode == 0
        deployed = c.admin("deploy", "probe", "--model", "iris", "--device", "gpu", "--replicas", "2",
                           "--strategy", "spread")
        assert deployed.returncode == 0, deployed.stderr
        wait_for(lambda: c.deployment("probe").get("phase") == "Running", timeout=60, what="probe Running")
        assert profile(c) == {}  # nothing routed yet
        for _ in range(60):
            assert infer(c.inference_url, "probe") == 0

        shown = profile(c)
        assert set(shown) == {SLOW, FAST}, shown
        slow, fast = shown[SLOW], shown[FAST]
        assert int(slow["requests"]) + int(fast["requests"]) == 60
        assert int(slow["requests"]) >= 20 and int(fast["requests"]) >= 20, shown
        assert int(slow["memory_bytes"]) == int(fast["memory_bytes"]) == 16 << 30
        assert slow["latency_ms"] >= 30 > fast["latency_ms"], shown
        assert fast["throughput_rps"] > slow["throughput_rps"] > 0, shown
        assert fast["throughput_per_gib"] > slow["throughput_per_gib"] > 0, shown
        listed = c.admin("models")
        assert listed.returncode == 0 and "BEST ON" in listed.stdout and FAST in listed.stdout, listed.stdout

        # binpack with both GPUs equally free would take n1 (names); the profile says the fast model's n2
        placed = c.admin("deploy", "placed", "--model", "iris", "--device", "gpu")
        assert placed.returncode == 0, placed.stderr
        (replica,) = c.deployment("placed")["replicas"]
        assert replica["node"] == "n2", replica

        # written by the periodic flush, then the controller dies without a chance to write more
        wait_for(lambda: stored(state) == {SLOW: int(slow["requests"]), FAST: int(fast["requests"])},
                 what="profiles in the store")
        c.kill()
        c = ControllerProcess(str(state), c.port, "--routing-policy", "round-robin")
        again = profile(c)
        assert {m: p["requests"] for m, p in again.items()} == {m: p["requests"] for m, p in shown.items()}
        assert again[FAST]["throughput_per_gib"] > again[SLOW]["throughput_per_gib"]
        wait_for(lambda: c.deployment("placed").get("phase") == "Running", timeout=60, what="placed Running")
        assert infer(c.inference_url, "placed") == 0
        wait_for(lambda: int(profile(c)[FAST]["requests"]) == int(fast["requests"]) + 1, what="one more counted")
    finally:
        for agent in agents:
            agent.kill()
        c.kill()
