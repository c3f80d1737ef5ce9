"""The agent's TOML configuration."""

from __future__ import annotations

import pytest

from xpud.agent.config import AgentConfig, ConfigError, load_config


def write(tmp_path, text):  # type: ignore[no-untyped-def]
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_defaults_run_every_installed_plugin_but_sim():
    config = load_config(None)
    assert config.metrics_port == 8002 and config.interval == 1.0
    assert config.plugins(["sim", "nvidia", "cpu", "amd"]) == ["cpu", "amd", "nvidia"]
    config.enable_sim(2)
    assert config.plugins(["sim", "nvidia", "cpu"]) == ["cpu", "nvidia", "sim"]
    assert config.plugin_options["sim"] == {"count": 2}


def test_full_file(tmp_path):
    config = load_config(write(tmp_path, """
[agent]
node = "edge-7"
interval = 0.5
metrics_host = "127.0.0.1"
metrics_port = 9100
sample_budget = 0.25

[plugins]
enabled = ["cpu", "jetson"]

[plugins.jetson]
tegrastats = true
"""))
    assert (config.node, config.interval) == ("edge-7", 0.5)
    assert (config.metrics_host, config.metrics_port) == ("127.0.0.1", 9100)
    assert config.sample_budget == 0.25
    assert config.plugins(["cpu", "jetson", "nvidia", "sim"]) == ["cpu", "jetson"]
    assert config.plugin_options == {"jetson": {"tegrastats": True}}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[agent]\ninterval = 0\n", "[agent] interval must be a number >= 0.01"),
        ("[agent]\nmetrics_port = 70000\n", "metrics_port must be <= 65535"),
        ("[agent]\nmetrics_port = true\n", "metrics_port must be an integer"),
        ("[agent]\nfrobnicate = 1\n", "[agent] unknown key(s) frobnicate"),
        ("[scheduler]\n", "unknown section(s) scheduler"),
        ("[plugins]\nenabled = 'cpu'\n", "[plugins] enabled must be a list of plugin names"),
        ("[plugins]\nsim = 3\n", "[plugins.sim] must be a table of options"),
        ("[agent\n", "is not valid TOML"),
    ],
)
def test_bad_files_say_what_to_fix(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert message in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    assert isinstance(AgentConfig().node, str)
