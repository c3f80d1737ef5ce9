"""The real agent process: /metrics over HTTP matches the scenario; clean exit on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import signal
import time

from helpers import metric, metric_values

GIB = 1024**3


def write_scenario(tmp_path, **extra):  # type: ignore[no-untyped-def]
    scenario = {
        "count": 2,
        "model": "Sim T4",
        "memory_gb": 16,
        "power_limit_w": 70,
        "compute_capability": "7.5",
        "load": {"shape": "constant", "value": 0.5},
        **extra,
    }
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(scenario))
    return str(path)


def test_metrics_match_the_scenario_and_sigterm_exits_zero(start_agent, tmp_path):
    agent = start_agent("--scenario", write_scenario(tmp_path), "--interval", "0.2")
    text = agent.scrape()
    for device in ("sim:0", "sim:1"):
        assert metric(text, "hw_gpu_utilization", hw_id=device) == 0.5
        assert metric(text, "hw_gpu_memory_limit_bytes", hw_id=device) == 16 * GIB
        assert metric(text, "hw_gpu_memory_usage_bytes", hw_id=device) == int(16 * GIB * (0.05 + 0.6 * 0.5))
        assert metric(text, "hw_temperature_celsius", hw_id=device, sensor="core") == 32 + 45 * 0.5
        assert metric(text, "hw_power_watts", hw_id=device) == 60 + (70 - 60) * 0.5
        assert metric(text, "hw_power_limit_watts", hw_id=device) == 70
        assert metric(text, "hw_status", hw_id=device, hw_state="ok") == 1
        assert metric(text, "hw_status", hw_id=device, hw_state="failed") == 0
    labels = next(iter(metric_values(text, "hw_gpu_utilization")))
    assert ("hw_model", "Sim T4") in labels and ("hw_vendor", "sim") in labels and ("hw_type", "gpu") in labels
    assert any(k == "hw_uuid" and v.startswith("GPU-") for k, v in labels)
    # the host CPU is always there
    assert 0 <= metric(text, "system_cpu_utilization", hw_id="cpu:0") <= 1
    assert metric(text, "system_memory_limit_bytes", hw_id="cpu:0") > 0
    assert metric(text, "xpud_plugin_up", plugin="cpu") == 1
    assert metric(text, "xpud_plugin_up", plugin="sim") == 1
    # fields the device does not have are absent, not 0
    assert not [k for k in metric_values(text, "hw_fan_speed_ratio") if ("hw_id", "sim:0") in k]
    code, out = agent.stop(signal.SIGTERM)
    assert code == 0, out
    assert "Traceback" not in out


def test_faults_show_up_as_health_and_events(start_agent, tmp_path):
    faults = [
        {"kind": "lost", "device": 1, "at_s": 0},
        {"kind": "xid_storm", "device": 0, "at_s": 0, "rate_hz": 100, "duration_s": 1000, "code": 13},
    ]
    agent = start_agent("--scenario", write_scenario(tmp_path, faults=faults), "--interval", "0.1")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = agent.scrape()
        if metric_values(text, "hw_events_total"):
            break
        time.sleep(0.2)
    assert metric(text, "hw_status", hw_id="sim:1", hw_state="failed") == 1
    assert metric(text, "hw_status", hw_id="sim:0", hw_state="degraded") == 1
    assert metric(text, "hw_events_total", hw_id="sim:1", event_type="lost") == 1
    assert metric(text, "hw_events_total", hw_id="sim:0", event_type="xid", event_code="13") >= 1
    # a lost GPU reports no utilisation at all rather than a made-up 0
    assert not [k for k in metric_values(text, "hw_gpu_utilization") if ("hw_id", "sim:1") in k]
    code, out = agent.stop(signal.SIGINT)
    assert code == 0, out


def test_port_in_use_is_a_clear_error(start_agent, tmp_path):
    first = start_agent("--sim", "1")
    from helpers import run_xpud

    result = run_xpud("agent", "--standalone", "--metrics-host", "127.0.0.1", "--metrics-port", str(first.port))
    assert result.returncode == 1
    assert "cannot serve metrics on 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr
