"""Every flag of `xpud agent` and `xpud controller` is also an environment variable and a config-file key:
precedence flag > environment > file > default, the same checks for each source, and the README's table."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest

from helpers import ChildProcess, free_port, run_xpud, xpud_command
from xpud.agent.config import AgentConfig, load_config
from xpud.cli import agent_config, build_parser
from xpud.settings import SettingsError, reference, resolve, settings

ROOT = Path(__file__).resolve().parent.parent


def parse(*argv: str, environ: dict[str, str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given = resolve(parser, args, environ or {})
    return args


def test_flag_over_environment_over_file_over_default(tmp_path: Path) -> None:
    config = tmp_path / "controller.toml"
    config.write_text('[controller]\nlease = 7.5\ninference_port = 9100\nlisten = "127.0.0.1:7171"\n')
    environ = {"XPUD_CONTROLLER_INFERENCE_PORT": "9200", "XPUD_CONTROLLER_LISTEN": "127.0.0.1:7272"}
    args = parse("controller", "--config", str(config), "--listen", "127.0.0.1:7373", environ=environ)
    assert args.listen == "127.0.0.1:7373"  # flag
    assert args.inference_port == 9200  # environment over the file
    assert args.lease == 7.5  # file over the default
    assert args.audit_log_keep == 5  # default
    assert args.insecure is False


def test_the_config_directory_holds_the_default_file(tmp_path: Path) -> None:
    (tmp_path / "controller.toml").write_text("[controller]\nlease = 9\n")
    args = parse("controller", environ={"XPUD_CONFIG_DIR": str(tmp_path)})
    assert args.lease == 9.0 and args.config == str(tmp_path / "controller.toml")
    assert parse("controller", environ={"XPUD_CONFIG_DIR": str(tmp_path / "none")}).config is None


@pytest.mark.parametrize(("environ", "message"), [
    ({"XPUD_CONTROLLER_LEASE": "-1"}, "XPUD_CONTROLLER_LEASE: must be > 0, got -1"),
    ({"XPUD_CONTROLLER_INFERENCE_PORT": "http"}, "XPUD_CONTROLLER_INFERENCE_PORT: expected a TCP port number"),
    ({"XPUD_CONTROLLER_INSECURE": "maybe"}, "XPUD_CONTROLLER_INSECURE: expected true or false, got 'maybe'"),
    ({"XPUD_CONTROLLER_LOG_LEVEL": "loud"}, "XPUD_CONTROLLER_LOG_LEVEL: expected one of debug, info"),
])
def test_a_bad_variable_is_refused_by_the_flags_own_check(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        parse("controller", environ=environ)


@pytest.mark.parametrize(("text", "message"), [
    ("[controller]\nlease = -2\n", "[controller] lease: must be > 0, got -2"),
    ("[controller]\nlisen = \"x:1\"\n", "[controller] unknown key(s) lisen"),
    ("[agent]\nnode = \"x\"\n", "unknown section(s) agent (settings go in a [controller] table)"),
    ("[controller]\ninsecure = \"yes please\"\n", "expected true or false"),
    ("[controller\n", "is not valid TOML"),
])
def test_a_bad_file_is_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "controller.toml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=re.escape(message)):
        parse("controller", "--config", str(config))


def test_the_command_line_exits_2_with_one_line() -> None:
    result = run_xpud("controller", env={"XPUD_CONTROLLER_LEASE": "0", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stderr.strip() == "xpud controller: error: XPUD_CONTROLLER_LEASE: must be > 0, got 0"


# A value for each agent flag's file key, in the file's own types; a new flag must add one here.
AGENT_SAMPLES: dict[str, tuple[Any, str, Any]] = {  # dest -> (file value, AgentConfig attribute, expected)
    "standalone": (True, "standalone", True),
    "metrics_port": (9999, "metrics_port", 9999),
    "metrics_host": ("0.0.0.0", "metrics_host", "0.0.0.0"),
    "metrics_tls": (True, "metrics_tls", True),
    "sim": (3, "plugin_options", {"sim": {"count": 3}}),
    "scenario": ("faults", "plugin_options", {"sim": {"scenario": "faults"}}),
    "interval": (2.5, "interval", 2.5),
    "node": ("gpu-07", "node", "gpu-07"),
    "model_repo": ("/srv/models", "model_repo", "/srv/models"),
    "grpc_port": (9001, "grpc_port", 9001),
    "inference_token_port": (9011, "inference_token_port", 9011),
    "grpc_host": ("127.0.0.2", "grpc_host", "127.0.0.2"),
    "insecure": (True, "insecure", True),
    "max_message_bytes": (1 << 20, "max_message_bytes", 1 << 20),
    "controller": ("ctl:7070", "controller", "ctl:7070"),
    "labels": ({"rack": "r1"}, "labels", {"rack": "r1"}),
    "zone": ("z9", "zone", "z9"),
    "cache_dir": ("/var/cache/x", "cache_dir", "/var/cache/x"),
    "advertise": ("gpu-07.lan", "advertise", "gpu-07.lan"),
    "cache_size": ("50GiB", "cache_max_bytes", 50 << 30),
    "tls_ca": ("/etc/xpud/pki/ca.pem", "tls_ca", "/etc/xpud/pki/ca.pem"),
    "tls_cert": ("/etc/xpud/pki/n.pem", "tls_cert", "/etc/xpud/pki/n.pem"),
    "tls_key": ("/etc/xpud/pki/n.key", "tls_key", "/etc/xpud/pki/n.key"),
    "log_level": ("debug", "log_level", "debug"),
}


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f'{k} = "{v}"' for k, v in value.items()) + " }"
    return repr(value).replace("'", '"')


def test_every_agent_flag_has_a_file_key_the_agent_reads(tmp_path: Path) -> None:
    found = {s.dest: s for s in settings(build_parser(), "agent") if s.key is not None}
    assert set(found) == set(AGENT_SAMPLES), "give each new agent flag a sample in AGENT_SAMPLES"
    for dest, (value, attribute, expected) in AGENT_SAMPLES.items():
        *tables, key = found[dest].key.split(".")  # type: ignore[union-attr]
        config = tmp_path / f"{dest}.toml"
        config.write_text(f"[{'.'.join(tables)}]\n{key} = {_toml(value)}\n")
        loaded = load_config(config)
        assert getattr(loaded, attribute) == expected, dest
        assert getattr(AgentConfig(), attribute) != expected, dest  # the key did something


def test_agent_environment_sits_between_flags_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nnode = "from-file"\nzone = "file-zone"\ninterval = 4.0\n'
                      '[serving]\ngrpc_port = 9301\n')
    environ = {"XPUD_AGENT_ZONE": "env-zone", "XPUD_AGENT_GRPC_PORT": "9302", "XPUD_AGENT_LABELS": "a=1,b=2",
               "XPUD_AGENT_CONFIG": str(config)}
    args = parse("agent", "--grpc-port", "9303", environ=environ)
    loaded = agent_config(args)
    assert (loaded.node, loaded.zone, loaded.grpc_port, loaded.interval) == ("from-file", "env-zone", 9303, 4.0)
    assert loaded.labels == {"a": "1", "b": "2"}


def test_agent_switches_in_the_file_are_not_undone_by_unset_flags(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[agent]\nstandalone = true\nmetrics_tls = true\n")
    loaded = agent_config(parse("agent", "--config", str(config)))
    assert loaded.standalone and loaded.metrics_tls
    assert agent_config(parse("agent", "--config", str(config), "--standalone")).standalone


def test_a_real_controller_takes_its_settings_from_the_environment_and_the_file(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "controller.toml"
    config.write_text(f'[controller]\nlisten = "127.0.0.1:{port}"\ninference_port = 0\nstate = "{tmp_path / "s"}"\n'
                      'log_level = "warning"\n')
    proc = ChildProcess(xpud_command("controller"), env={"XPUD_CONTROLLER_CONFIG": str(config),
                                                        "XPUD_CONTROLLER_LOG_LEVEL": "info"})
    try:
        proc.wait_for_line(rf"agents and admin at 127\.0\.0\.1:{port}", "controller")  # info: the variable won
        assert run_xpud("nodes", "--controller", f"127.0.0.1:{port}").returncode == 0
    finally:
        proc.kill()


README_BEGIN, README_END = "<!-- settings:begin -->", "<!-- settings:end -->"


def test_the_readme_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(README_BEGIN) + len(README_BEGIN), readme.index(README_END)
    table = reference(build_parser())
    assert readme[start:end].strip() == table, (
        "README's settings table is out of date; regenerate it with: .venv/bin/python -c "
        "'from xpud.cli import build_parser; from xpud.settings import reference; print(reference(build_parser()))'")


def test_the_example_files_load_and_the_units_reload() -> None:
    load_config(ROOT / "systemd" / "agent.toml.example")
    args = parse("controller", "--config", str(ROOT / "systemd" / "controller.toml.example"))
    assert args.audit_log_max_bytes == 100 << 20
    for unit in ("xpud-agent.service", "xpud-controller.service"):
        assert "ExecReload=/bin/kill -HUP $MAINPID" in (ROOT / "systemd" / unit).read_text()
