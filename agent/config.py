"""Agent configuration: a TOML file, then command-line flags on top.

Example (all keys optional)::

    [agent]
    node = "gpu-01"            # default: the host name
    controller = "ctl:7070"    # join this controller (else: --standalone)
    labels = { rack = "r1" }
    zone = "z1"
    interval = 1.0             # telemetry tick, seconds
    metrics_host = "127.0.0.1"  # default; "0.0.0.0" for a Prometheus elsewhere
    metrics_port = 8002
    sample_budget = 0.5        # seconds a plugin may take per tick
    log_level = "info"         # debug, info, warning, error (SIGHUP applies a change)
    cache_size = "20GiB"       # the artifact cache's limit
    tls_ca = "/etc/xpud/pki/ca.pem"        # with tls_cert and tls_key: mTLS to the controller and on OIP

    [serving]
    model_repo = "/var/lib/xpud/models"   # serve every model in this Triton-layout repository
    grpc_host = "0.0.0.0"      # default: 0.0.0.0 with TLS, else 127.0.0.1
    grpc_port = 8001
    max_message_bytes = 67108864          # grpc max receive/send message length
    default_max_batch_size = 4            # for models without config.pbtxt whose graph batches

    [health]                   # the device health state machine's thresholds (agent/telemetry/health.py)
    hold_s = 60                # a recovering device returns to the pool after this long with nothing wrong
    clean_s = 60               # a suspect one turns healthy after this long with nothing wrong
    xid_storm = 5              # recoverable XIDs within xid_window_s that make a device unhealthy
    xid_window_s = 60

    [plugins]
    enabled = ["cpu", "nvidia", "jetson", "amd"]   # default: every installed plugin but "sim"

    [plugins.sim]              # options of one plugin; a [plugins.sim] table enables the simulator
    count = 2
    scenario = "faults"        # a bundled scenario name or a JSON file
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpud.proto.units import SizeError, parse_size

from .telemetry.health import HealthPolicy

DEFAULT_METRICS_PORT = 8002
DEFAULT_GRPC_PORT = 8001
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
OPT_IN_PLUGINS = frozenset({"sim"})  # only when asked for
LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(ValueError):
    """A configuration the agent cannot start with; the message says what to fix."""


@dataclass
class AgentConfig:
    node: str = field(default_factory=socket.gethostname)
    interval: float = 1.0
    metrics_host: str = "127.0.0.1"  # loopback unless asked: /metrics has no TLS
    metrics_port: int = DEFAULT_METRICS_PORT
    metrics_tls: bool = False  # /metrics over HTTPS with tls_cert/tls_key (with tls_ca: client certificates)
    sample_budget: float = 0.5
    model_repo: str | None = None  # None: serve nothing (the agent then never imports onnxruntime)
    grpc_host: str = ""  # "": every address with TLS (a CA, certificate and key), else loopback only
    grpc_port: int = DEFAULT_GRPC_PORT
    inference_token_port: int | None = None  # OIP over TLS for clients with the pool's tokens (no certificate)
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    default_max_batch_size: int = 4
    controller: str | None = None  # HOST:PORT of the controller; None: standalone
    labels: dict[str, str] = field(default_factory=dict)
    zone: str = ""
    cache_dir: str | None = None  # the artifact cache and the last desired state
    cache_max_bytes: int = 20 << 30  # the artifact cache evicts least recently used artifacts past this
    tls_ca: str | None = None  # the link to the controller: CA of the controller's certificate
    tls_cert: str | None = None  # this agent's certificate and key, for a controller that requires mTLS
    tls_key: str | None = None
    advertise: str | None = None  # host the controller's router uses to reach this agent's endpoint
    insecure: bool = False  # serve OIP on a non-loopback address without TLS anyway
    standalone: bool = False  # run without a controller
    log_level: str | None = None  # None: info, or debug with -v
    enabled: list[str] | None = None  # None: every installed plugin but the opt-in ones
    plugin_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    health: HealthPolicy = field(default_factory=HealthPolicy)

    def plugins(self, installed: Iterable[str]) -> list[str]:
        """Names of the plugins to run, in a stable order (cpu first)."""
        if self.enabled is not None:
            names = list(self.enabled)
        else:
            names = sorted(n for n in installed if n not in OPT_IN_PLUGINS)
        names += [n for n in self.plugin_options if n in OPT_IN_PLUGINS and n not in names]
        return sorted(dict.fromkeys(names), key=lambda n: (n != "cpu", n))

    def cache_path(self) -> Path:
        """Where this node keeps artifacts and state: --cache-dir, systemd's CacheDirectory, or ~/.cache/xpud/<node>."""
        if self.cache_dir:
            return Path(self.cache_dir)
        base = os.environ.get("CACHE_DIRECTORY") or os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "xpud" / self.node

    @property
    def secured(self) -> bool:
        """Whether the OIP endpoint serves mTLS (a CA, a certificate and a key)."""
        return bool(self.tls_ca and self.tls_cert and self.tls_key)

    def serving_host(self) -> str:
        return self.grpc_host or ("0.0.0.0" if self.secured else "127.0.0.1")

    def endpoint(self, port: int) -> str:
        host = self.advertise or self.serving_host()
        if host in ("", "0.0.0.0", "::", "[::]"):
            host = socket.getfqdn()
        return f"{host}:{port}"

    def enable_sim(self, count: int | None = None, scenario: str | None = None) -> None:
        opts = self.plugin_options.setdefault("sim", {})
        if count is not None:
            opts["count"] = count
        if scenario is not None:
            opts["scenario"] = scenario
        if self.enabled is not None and "sim" not in self.enabled:
            self.enabled.append("sim")


def _number(
    table: Mapping[str, Any], key: str, default: float, *, minimum: float, integer: bool = False,
    maximum: float | None = None, section: str = "agent",
) -> Any:
    value = table.get(key, default)
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
        what = "an integer" if integer else "a number"
        raise ConfigError(f"[{section}] {key} must be {what} >= {minimum:g}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"[{section}] {key} must be <= {maximum:g}, got {value!r}")
    return value


def _size(value: Any, where: str) -> int:
    try:
        size = value if isinstance(value, int) and not isinstance(value, bool) else parse_size(str(value))
    except SizeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if size < 1:
        raise ConfigError(f"{where} must be at least 1 byte, got {value!r}")
    return size


def read_toml(path: str | Path) -> dict[str, Any]:
    """A config file's tables; ConfigError says why it cannot be read (also for the controller's file)."""
    try:
        return tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def load_config(path: str | Path | None) -> AgentConfig:
    """Read a TOML configuration file (None: all defaults)."""
    config = AgentConfig()
    if path is None:
        return config
    data = read_toml(path)
    unknown = set(data) - {"agent", "plugins", "serving", "health"}
    if unknown:
        raise ConfigError(f"config file {str(path)!r}: unknown section(s) {', '.join(sorted(unknown))}")
    agent = data.get("agent", {})
    known = {"node", "interval", "metrics_host", "metrics_port", "sample_budget", "controller", "labels", "zone",
             "cache_dir", "advertise", "insecure", "standalone", "metrics_tls", "log_level", "cache_size", "tls_ca",
             "tls_cert", "tls_key"}
    if set(agent) - known:
        raise ConfigError(f"[agent] unknown key(s) {', '.join(sorted(set(agent) - known))}")
    config.node = str(agent.get("node", config.node))
    config.interval = float(_number(agent, "interval", config.interval, minimum=0.01))
    config.metrics_host = str(agent.get("metrics_host", config.metrics_host))
    config.metrics_port = _number(agent, "metrics_port", config.metrics_port, minimum=0, maximum=65535, integer=True)
    config.sample_budget = float(_number(agent, "sample_budget", config.sample_budget, minimum=0.01))
    for key in ("insecure", "standalone", "metrics_tls"):
        if key in agent:
            if not isinstance(agent[key], bool):
                raise ConfigError(f"[agent] {key} must be true or false")
            setattr(config, key, agent[key])
    if "log_level" in agent:
        if agent["log_level"] not in LOG_LEVELS:
            raise ConfigError(f"[agent] log_level must be one of {', '.join(LOG_LEVELS)}, got {agent['log_level']!r}")
        config.log_level = agent["log_level"]
    if "cache_size" in agent:
        config.cache_max_bytes = _size(agent["cache_size"], "[agent] cache_size")
    for key in ("controller", "zone", "cache_dir", "advertise", "tls_ca", "tls_cert", "tls_key"):
        if key in agent:
            setattr(config, key, str(agent[key]))
    labels = agent.get("labels", {})
    if not isinstance(labels, dict):
        raise ConfigError('[agent] labels must be a table, e.g. labels = { rack = "r1" }')
    config.labels = {str(k): str(v) for k, v in labels.items()}
    _serving(config, data.get("serving", {}))
    if not isinstance(data.get("health", {}), dict):
        raise ConfigError("[health] must be a table of thresholds, e.g. hold_s = 60")
    try:
        config.health = HealthPolicy.from_mapping(data.get("health", {}))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    plugins = dict(data.get("plugins", {}))
    enabled = plugins.pop("enabled", None)
    if enabled is not None:
        if not isinstance(enabled, list) or not all(isinstance(n, str) for n in enabled):
            raise ConfigError('[plugins] enabled must be a list of plugin names, e.g. ["cpu", "nvidia"]')
        config.enabled = list(enabled)
    for name, options in plugins.items():
        if not isinstance(options, dict):
            raise ConfigError(f"[plugins.{name}] must be a table of options")
        config.plugin_options[name] = dict(options)
    return config


def _serving(config: AgentConfig, table: Mapping[str, Any]) -> None:
    known = {"model_repo", "grpc_host", "grpc_port", "max_message_bytes", "default_max_batch_size",
             "inference_token_port"}
    if set(table) - known:
        raise ConfigError(f"[serving] unknown key(s) {', '.join(sorted(set(table) - known))}")
    if "model_repo" in table:
        config.model_repo = str(table["model_repo"])
    config.grpc_host = str(table.get("grpc_host", config.grpc_host))
    config.grpc_port = _number(table, "grpc_port", config.grpc_port, minimum=0, maximum=65535, integer=True,
                               section="serving")
    if "inference_token_port" in table:
        config.inference_token_port = _number(table, "inference_token_port", 0, minimum=0, maximum=65535,
                                              integer=True, section="serving")
    config.max_message_bytes = _number(table, "max_message_bytes", config.max_message_bytes, minimum=1024,
                                       integer=True, section="serving")
    config.default_max_batch_size = _number(table, "default_max_batch_size", config.default_max_batch_size,
                                            minimum=0, integer=True, section="serving")


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k2=v2`` -> dict; raises ConfigError naming the bad part."""
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"label {part!r} must look like key=value (e.g. --labels gpu=a100,rack=r1)")
        labels[key.strip()] = value.strip()
    return labels
