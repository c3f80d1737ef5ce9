"""`xpud devices` and the CLI's error handling, run as a real process."""

from __future__ import annotations

import json

import pytest

from helpers import run_xpud


def test_devices_sim_2_shows_cpu_and_two_gpus():
    result = run_xpud("devices", "--sim", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["ID", "VENDOR", "MODEL"]
    ids = [line.split()[0] for line in lines[1:]]
    assert ids[0] == "cpu:0"
    assert [i for i in ids if i.startswith("sim:")] == ["sim:0", "sim:1"]
    sim_line = next(line for line in lines if line.startswith("sim:0"))
    assert "Sim A100-SXM4-80GB" in sim_line and "/80.0 GiB" in sim_line and sim_line.rstrip().endswith("ok")
    cpu_line = lines[1]
    assert "n/a" in cpu_line  # the cpu has no power reading here: shown as n/a, never 0


def test_devices_json_has_static_facts_and_latest_sample():
    result = run_xpud("devices", "--json", "--sim", "1")
    assert result.returncode == 0, result.stderr
    devices = {d["id"]: d for d in json.loads(result.stdout)}
    sim = devices["sim:0"]
    assert sim["vendor"] == "sim" and sim["kind"] == "gpu" and sim["memory_total"] == 80 * 1024**3
    assert sim["compute_capability"] == "8.0" and sim["uuid"].startswith("GPU-")
    sample = sim["sample"]
    assert 0 <= sample["utilization"] <= 1 and sample["health"] == "ok"
    assert sample["fan_speed"] is None  # unsupported: null, not 0
    cpu = devices["cpu:0"]
    assert cpu["kind"] == "cpu" and cpu["cores"] >= 1 and cpu["sample"]["memory_used"] > 0


def test_devices_scenario_file(tmp_path):
    scenario = tmp_path / "s.json"
    scenario.write_text(json.dumps({"count": 3, "model": "Sim L4", "memory_gb": 24}))
    result = run_xpud("devices", "--json", "--scenario", str(scenario))
    assert result.returncode == 0, result.stderr
    sims = [d for d in json.loads(result.stdout) if d["plugin"] == "sim"]
    assert [d["model"] for d in sims] == ["Sim L4"] * 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["devices", "--sim", "x"], "--sim: expected a whole number of devices, got 'x'"),
        (["devices", "--sim", "-1"], "--sim: expected 0..100000 devices"),
        (["devices", "--bogus"], "unrecognized arguments: --bogus"),
        (["devices", "--config", "/nonexistent/agent.toml"], "file '/nonexistent/agent.toml' does not exist"),
        (["devices", "--scenario", "/nonexistent/s.json"], "cannot read sim scenario '/nonexistent/s.json'"),
        (["devices", "--scenario", "nosuchname"], "no bundled sim scenario named 'nosuchname'"),
        (["agent", "--standalone", "--metrics-port", "99999"], "port must be 0..65535"),
        (["agent", "--standalone", "--interval", "0"], "--interval: must be > 0"),
        (["agent"], "give either --standalone or --controller HOST:PORT"),
        (["agent", "--controller", "nohost"], "expected HOST:PORT, got 'nohost'"),
        (["agent", "--controller", "127.0.0.1:1", "--labels", "novalue"], "label 'novalue' must look like key=value"),
        (["deploy", "x"], "the following arguments are required: --model"),
        (["deploy", "x", "--model", "m", "--memory", "lots"], "--memory 'lots' is not understood"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["controller", "--store", "etcd://127.0.0.1:2379"], "--store: unknown store 'etcd://127.0.0.1:2379'"),
        (["controller", "--store", "sqlite://state.db"], "--store: expected sqlite:///PATH/TO/FILE.db"),
        (["up", "--store", "/var/lib/xpud"], "--store: unknown store '/var/lib/xpud'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    result = run_xpud(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_file_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "agent.toml"
    bad.write_text("[agent]\nmetrics_port = 'eighty'\n")
    result = run_xpud("devices", "--config", str(bad))
    assert result.returncode == 2
    assert "[agent] metrics_port must be an integer" in result.stderr
    bad.write_text("[agent\n")
    result = run_xpud("agent", "--standalone", "--config", str(bad))
    assert result.returncode == 2 and "is not valid TOML" in result.stderr
    scenario = tmp_path / "s.json"
    scenario.write_text("{not json")
    result = run_xpud("devices", "--scenario", str(scenario))
    assert result.returncode == 2 and "is not valid JSON" in result.stderr


def test_config_file_enables_sim_and_sets_options(tmp_path):
    cfg = tmp_path / "agent.toml"
    cfg.write_text('[plugins]\nenabled = ["cpu"]\n\n[plugins.sim]\ncount = 2\nscenario = "faults"\n')
    result = run_xpud("devices", "--json", "--config", str(cfg))
    assert result.returncode == 0, result.stderr
    ids = [d["id"] for d in json.loads(result.stdout)]
    assert ids == ["cpu:0", "sim:0", "sim:1"]
