"""The `xpud` command: parses arguments and wires the parts together, nothing else."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from xpud import __version__

if TYPE_CHECKING:  # the CLI imports the heavy parts only for the command it runs
    from xpud.agent.config import AgentConfig
    from xpud.agent.telemetry.inventory import Inventory
    from xpud.plugins.base import DeviceSample

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 2 (no usage dump, never a traceback)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def usage_error(prog: str, message: str) -> NoReturn:
    sys.stderr.write(f"{prog}: error: {message}\n")
    raise SystemExit(EXIT_USAGE)


def _number(cast: Callable[[str], Any], expected: str, valid: Callable[[Any], bool], invalid: str) -> Any:
    """An argparse type: ``cast`` the text, then check it; both failures say what was expected."""

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(invalid.format(value=text))
        return value

    return parse


_count = _number(
    int, "a whole number of devices", lambda v: 0 <= v <= 100_000, "expected 0..100000 devices, got {value}"
)
_port = _number(int, "a TCP port number", lambda v: 0 <= v <= 65535, "port must be 0..65535, got {value}")
_positive = _number(float, "seconds", lambda v: v > 0, "must be > 0, got {value}")
_keep = _number(int, "a whole number of files", lambda v: 0 <= v <= 1000, "expected 0..1000 files, got {value}")
_size = _number(int, "a number of bytes", lambda v: v >= 1024, "must be at least 1024 bytes, got {value}")


def _cache_size(text: str) -> int:
    from xpud.admin_cli import parse_size

    return parse_size(text)


LOG_LEVELS = ("debug", "info", "warning", "error")


def _log_level(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", choices=LOG_LEVELS, metavar="LEVEL",
                   help="debug, info, warning or error (default info; -v: debug); SIGHUP applies a change")


def _address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


def _store_url(text: str) -> str:
    from xpud.controller.store import StoreURLError, check_url

    try:
        check_url(text)
    except StoreURLError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


STORE_HELP = ("where the controller keeps its state, as a URL (sqlite:///PATH/state.db); default: SQLite in --state. "
              "Model files stay in --state's artifacts/ folder either way")


def _existing_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"file {text!r} does not exist")
    return text


def _tls_flags(p: argparse.ArgumentParser, ca_help: str, cert_help: str) -> None:
    p.add_argument("--tls-ca", type=_existing_file, metavar="FILE", help=ca_help)
    p.add_argument("--tls-cert", type=_existing_file, metavar="FILE", help=cert_help)
    p.add_argument("--tls-key", type=_existing_file, metavar="FILE", help="the private key of --tls-cert")


def build_parser() -> Parser:
    parser = Parser(prog="xpud", description="Node-level accelerator agent and control plane.")
    parser.add_argument("--version", action="version", version=f"xpud {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    sim_help = "add N simulated GPUs (the sim plugin)"
    scenario_help = "sim scenario: a JSON file or a bundled name (default, faults)"
    devices = sub.add_parser("devices", help="list this node's accelerators with live numbers")
    devices.add_argument("--json", action="store_true", help="JSON: static facts and the latest sample per device")
    devices.add_argument("--sim", type=_count, metavar="N", help=sim_help)
    devices.add_argument("--scenario", metavar="FILE", help=scenario_help)
    devices.add_argument("--config", type=_existing_file, metavar="FILE", help="agent configuration (TOML)")

    agent = sub.add_parser("agent", help="run the node agent")
    agent.add_argument("--standalone", action="store_true", help="run without a controller")
    agent.add_argument("--metrics-port", type=_port, metavar="P", help="Prometheus /metrics port (default 8002)")
    agent.add_argument("--metrics-host", metavar="HOST",
                       help="address for /metrics (default 127.0.0.1; 0.0.0.0 for a Prometheus elsewhere)")
    agent.add_argument("--metrics-tls", action="store_true",
                       help="serve /metrics over HTTPS with --tls-cert/--tls-key; with --tls-ca, scrapers need a "
                            "certificate signed by it")
    agent.add_argument("--sim", type=_count, metavar="N", help=sim_help)
    agent.add_argument("--scenario", metavar="FILE", help=scenario_help)
    agent.add_argument("--config", type=_existing_file, metavar="FILE",
                       help="agent configuration (TOML; default $XPUD_CONFIG_DIR/agent.toml or /etc/xpud/agent.toml)")
    agent.add_argument("--interval", type=_positive, metavar="SECONDS", help="telemetry interval (default 1)")
    agent.add_argument("--node", metavar="NAME", help="node name (default: host name)")
    agent.add_argument("--model-repo", metavar="DIR", help="serve every model in this Triton-layout repository")
    agent.add_argument("--grpc-port", type=_port, metavar="P", help="inference endpoint port (default 8001)")
    agent.add_argument("--grpc-host", metavar="HOST",
                       help="inference endpoint address (default 0.0.0.0 with TLS, else 127.0.0.1)")
    agent.add_argument("--inference-token-port", type=_port, metavar="P",
                       help="also serve inference over TLS to clients with one of the pool's tokens and no "
                            "certificate (a secured pool)")
    agent.add_argument("--insecure", action="store_true", default=None,
                       help="serve inference on a non-loopback address without TLS anyway")
    agent.add_argument("--max-message-bytes", type=_size, metavar="BYTES",
                       help="largest gRPC message received or sent (default 64 MiB)")
    agent.add_argument("--controller", type=_address, metavar="HOST:PORT", help="join this controller")
    agent.add_argument("--labels", metavar="k=v,...", help="node labels for placement")
    agent.add_argument("--zone", metavar="Z", help="node zone for placement")
    agent.add_argument("--cache-dir", metavar="DIR", help="artifact cache and agent state (default ~/.cache/xpud/NODE)")
    agent.add_argument("--advertise", metavar="HOST", help="host the controller's router uses to reach this agent")
    agent.add_argument("--cache-size", type=_cache_size, metavar="SIZE",
                       help="artifact cache limit, e.g. 50GiB (default 20GiB)")
    _tls_flags(agent, "the controller link: CA of the controller's certificate",
               "this agent's certificate, for a controller that requires mTLS")
    _log_level(agent)

    controller = sub.add_parser("controller", help="run the controller (pool, scheduler, router, admin API)")
    controller.add_argument("--config", type=_existing_file, metavar="FILE",
                            help="controller configuration: a [controller] table of these flags' keys (TOML; "
                                 "default $XPUD_CONFIG_DIR/controller.toml or /etc/xpud/controller.toml)")
    controller.add_argument("--listen", type=_address, default="127.0.0.1:7070", metavar="HOST:PORT",
                            help="agent link and admin API (default 127.0.0.1:7070)")
    controller.add_argument("--inference-port", type=_port, default=8000, metavar="P",
                            help="inference router port (default 8000)")
    controller.add_argument("--insecure", action="store_true",
                            help="listen on a non-loopback address without mTLS (--tls-ca) anyway")
    controller.add_argument("--state", metavar="DIR", help="state directory (default: a per-user data dir)")
    controller.add_argument("--store", type=_store_url, metavar="URL", help=STORE_HELP)
    controller.add_argument("--lease", type=_positive, default=3.0, metavar="SECONDS",
                            help="a node silent this long is Lost and its replicas move (default 3)")
    _tls_flags(controller, "require agents and admin clients to present a certificate signed by this CA (mTLS); "
               "their roles are checked", "serve the agent link and admin API over TLS with this certificate")
    controller.add_argument("--handover-grace", type=_positive, default=60.0, metavar="SECONDS",
                            help="a replica moved off a draining node or an unhealthy device keeps serving until its "
                                 "replacement is ready, at most this long (default 60)")
    controller.add_argument("--replace-grace", type=_positive, default=30.0, metavar="SECONDS",
                            help="a replica its node keeps reporting failed, or does not report, is placed elsewhere "
                                 "after this long (default 30)")
    controller.add_argument("--routing-policy", choices=("p2c", "round-robin"), default="p2c",
                            help="how the router picks a replica: p2c (the better of two by calls in flight x "
                                 "latency, with outlier ejection) or round-robin (default p2c)")
    controller.add_argument("--zone", metavar="Z",
                            help="the router's zone: requests without an xpud-zone parameter prefer replicas on nodes "
                                 "of this zone, spilling over while those are saturated or gone (default: none)")
    controller.add_argument("--token-listen", type=_address, metavar="HOST:PORT",
                            help="also serve the admin API over TLS to clients with a token and no certificate "
                                 "(needs --tls-ca)")
    controller.add_argument("--inference-token-port", type=_port, metavar="P",
                            help="also serve inference over TLS to clients with a token and no certificate "
                                 "(needs --tls-ca)")
    controller.add_argument("--audit-log", metavar="FILE",
                            help="one JSON line per state-changing admin call (default: audit.log in --state)")
    controller.add_argument("--audit-log-max-bytes", type=_cache_size, default=100 << 20, metavar="SIZE",
                            help="rotate the audit log past this size, e.g. 100MiB (default 100MiB)")
    controller.add_argument("--audit-log-keep", type=_keep, default=5, metavar="N",
                            help="rotated audit logs kept: FILE.1 .. FILE.N (default 5)")
    _log_level(controller)
    controller.add_argument("--metrics-port", type=_port, default=8003, metavar="P",
                            help="Prometheus /metrics port (default 8003; 0: any free port, logged)")
    controller.add_argument("--metrics-host", default="127.0.0.1", metavar="HOST",
                            help="address for /metrics (default 127.0.0.1; 0.0.0.0 for a Prometheus elsewhere)")
    controller.add_argument("--metrics-tls", action="store_true",
                            help="serve /metrics over HTTPS with --tls-cert/--tls-key; with --tls-ca, scrapers need "
                                 "a certificate signed by it")

    up = sub.add_parser("up", help="all in one: a controller, a local agent and the demo model deployed")
    up.add_argument("--state", metavar="DIR", help="controller state directory")
    up.add_argument("--store", type=_store_url, metavar="URL", help=STORE_HELP)
    up.add_argument("--sim", type=_count, metavar="N", help=sim_help)
    up.add_argument("--listen", type=_address, default="127.0.0.1:7070", metavar="HOST:PORT",
                    help="the controller's admin and agent port (default 127.0.0.1:7070)")
    up.add_argument("--inference-port", type=_port, default=8000, metavar="P",
                    help="the router, every deployment by name (default 8000)")
    up.add_argument("--grpc-port", type=_port, default=8001, metavar="P",
                    help="the local agent's own inference endpoint (default 8001)")
    up.add_argument("--metrics-port", type=_port, default=8002, metavar="P",
                    help="the local agent's /metrics (default 8002)")
    up.add_argument("--controller-metrics-port", type=_port, default=8003, metavar="P",
                    help="the controller's /metrics port (default 8003; 0: any free port)")
    up.add_argument("--cache-dir", metavar="DIR", help="the local agent's artifact cache and state")
    up.add_argument("--insecure", action="store_true", help="listen on a non-loopback --listen address anyway")
    up.add_argument("--fresh", action="store_true", help="start with an empty state: the earlier state directory "
                    "is renamed beside it (…/controller.before-DATE), not deleted")

    def controller_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--controller", type=_address, metavar="HOST:PORT",
                       help="controller admin address (default $XPUD_CONTROLLER or 127.0.0.1:7070)")
        _tls_flags(p, "CA of the controller's certificate (default $XPUD_TLS_CA)",
                   "client certificate for a controller that requires mTLS (default $XPUD_TLS_CERT)")
        p.add_argument("--token", metavar="TOKEN", help="an API token instead of a certificate, sent over TLS to "
                       "the controller's --token-listen port (default $XPUD_TOKEN)")

    from xpud.admin_cli import add_commands
    from xpud.certs_cli import add_commands as add_certs

    add_commands(sub, Parser, controller_flag)
    add_certs(sub, Parser)
    completion = sub.add_parser("completion", help="print a shell completion script: eval \"$(xpud completion "
                                "bash)\"; zsh: xpud completion zsh > \"${fpath[1]}/_xpud\"")
    completion.add_argument("shell", choices=["bash", "zsh"], help="bash or zsh")
    from xpud.settings import COMMANDS as SETTINGS_COMMANDS
    from xpud.settings import settings

    for command in SETTINGS_COMMANDS:
        settings(parser, command)  # defaults move out of argparse: an unset flag parses as None
    return parser


def agent_config(args: argparse.Namespace) -> AgentConfig:
    """The file (as it is now), then flags and variables over it; ConfigError or ScenarioError if refused."""
    from xpud.agent.config import load_config, parse_labels
    from xpud.plugins.sim import load_scenario
    from xpud.settings import config_file

    config = load_config(config_file("agent", args.config, os.environ))
    if args.sim is not None or args.scenario is not None:
        if args.scenario is not None:
            load_scenario(args.scenario)
        config.enable_sim(args.sim, args.scenario)
    for name in ("metrics_port", "metrics_host", "interval", "node", "model_repo", "grpc_port", "grpc_host",
                 "max_message_bytes", "controller", "zone", "cache_dir", "advertise", "tls_ca", "tls_cert",
                 "tls_key", "insecure", "standalone", "log_level", "metrics_tls", "inference_token_port"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(config, name, value)
    if getattr(args, "cache_size", None):
        config.cache_max_bytes = args.cache_size
    if getattr(args, "labels", None):
        config.labels = parse_labels(args.labels)
    return config


def _config(args: argparse.Namespace) -> AgentConfig:
    from xpud.agent.config import ConfigError
    from xpud.plugins.sim import ScenarioError

    try:
        return agent_config(args)
    except (ConfigError, ScenarioError) as exc:
        usage_error(f"xpud {args.command}", str(exc))


def cmd_devices(args: argparse.Namespace) -> int:
    from xpud.agent.daemon import build_inventory
    from xpud.render import devices_json, devices_table, plugin_notes

    config = _config(args)

    async def probe() -> tuple[Inventory, dict[str, DeviceSample]]:
        inventory = build_inventory(config)
        try:
            await inventory.discover()
            await asyncio.sleep(0.25)  # utilisation is measured over an interval
            samples = {s.device_id: s for s in await inventory.sample()}
        finally:
            await inventory.close()
        return inventory, samples

    inventory, samples = asyncio.run(probe())
    devices = inventory.devices
    if args.json:
        json.dump(devices_json(devices, samples), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(devices_table(devices, samples))
        for note in plugin_notes(inventory.statuses):
            print(note, file=sys.stderr)
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    from xpud.agent.daemon import StartupError, run_standalone
    from xpud.reload import set_log_level

    if args.verbose and not args.log_level:
        args.log_level = "debug"  # -v is a flag: over the file, also on reload
    config = _config(args)
    set_log_level(config.log_level)
    if config.standalone == bool(config.controller):
        usage_error("xpud agent", "give either --standalone or --controller HOST:PORT (or controller in --config)")
    if config.controller is not None and args.model_repo:
        usage_error("xpud agent", "--model-repo is for --standalone; with --controller, deploy with `xpud deploy`")
    if config.model_repo is not None and not Path(config.model_repo).is_dir():
        usage_error("xpud agent", f"model repository {config.model_repo!r} is not a directory")
    try:
        return asyncio.run(run_standalone(config, reread=lambda: agent_config(args)))
    except StartupError as exc:
        sys.stderr.write(f"xpud agent: error: {exc}\n")
        return 1


def default_state_dir() -> Path:
    """systemd's StateDirectory when run as a unit, else ~/.local/share/xpud/controller."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(base) / "xpud" / "controller"


def cmd_controller(args: argparse.Namespace) -> int:
    from xpud.controller.audit import AuditError
    from xpud.controller.server import StartupError, run_controller
    from xpud.controller.store import StoreError
    from xpud.proto.credentials import CredentialsError, TlsFiles

    state = Path(args.state) if args.state else default_state_dir()
    tls = TlsFiles(args.tls_ca, args.tls_cert, args.tls_key)
    if tls.enabled and not (tls.cert and tls.key):
        usage_error("xpud controller", "TLS needs --tls-cert and --tls-key (with --tls-ca: client certificates too)")
    from xpud.proto.credentials import SETUP_HINT, is_loopback

    host = args.listen.rpartition(":")[0]
    if not tls.ca and not is_loopback(host) and not args.insecure:
        usage_error("xpud controller", f"refusing to listen on {host} without mTLS: anyone who reaches it could "
                    f"deploy, join as a node or call models. S{SETUP_HINT[1:]}; or listen on loopback "
                    "(--listen 127.0.0.1:7070); or pass --insecure")
    from xpud.agent.sdnotify import SystemdNotifier
    from xpud.reload import ControllerReload, set_log_level

    set_log_level(args.log_level, args.verbose)
    if args.config:
        logging.getLogger("xpud").info("configuration file %s", args.config)
    reload = ControllerReload(args.parser, args.given, args, state)
    try:
        return asyncio.run(run_controller(args.listen, args.inference_port, state, lease=args.lease, tls=tls,
                                          store_url=args.store, token_listen=args.token_listen,
                                          audit_log=Path(args.audit_log) if args.audit_log else None,
                                          audit_max_bytes=args.audit_log_max_bytes, audit_keep=args.audit_log_keep,
                                          inference_token_port=args.inference_token_port,
                                          metrics_port=args.metrics_port, metrics_host=args.metrics_host,
                                          metrics_tls=args.metrics_tls, handover_grace=args.handover_grace,
                                          replace_grace=args.replace_grace, routing_policy=args.routing_policy,
                                          zone=args.zone or "",
                                          notify=SystemdNotifier().notify, reload=reload))
    except AuditError as exc:
        usage_error("xpud controller", str(exc))
    except (StartupError, StoreError, CredentialsError) as exc:
        sys.stderr.write(f"xpud controller: error: {exc}\n")
        return 1


def cmd_up(args: argparse.Namespace) -> int:
    from xpud.up import run_up

    state = Path(args.state) if args.state else default_state_dir()
    return asyncio.run(run_up(args, state))


def cmd_admin(args: argparse.Namespace) -> int:
    from xpud.admin_cli import CliError, fail, run
    from xpud.validate import ValidationError

    try:
        return run(args)
    except ValidationError as exc:  # a bad value, found before any call
        usage_error(f"xpud {args.command}", str(exc))
    except CliError as exc:
        fail(f"xpud {args.command}", str(exc))


def cmd_certs(args: argparse.Namespace) -> int:
    from xpud.certs_cli import main as certs_main

    return certs_main(args)


def cmd_completion(args: argparse.Namespace) -> int:
    from xpud.completion import script

    sys.stdout.write(script(build_parser(), args.shell))
    return 0


COMMANDS = {"devices": cmd_devices, "agent": cmd_agent, "controller": cmd_controller, "up": cmd_up,
            "certs": cmd_certs, "completion": cmd_completion}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # argparse would report these as the top-level parser's, without the subcommand
        prog = f"xpud {args.command}"
        usage_error(prog, f"unrecognized arguments: {' '.join(extra)} (see '{prog} --help')")
    from xpud.settings import COMMANDS as SETTINGS_COMMANDS

    if args.command in SETTINGS_COMMANDS:
        from xpud.settings import SettingsError, resolve

        try:
            args.given = resolve(parser, args)  # flags > XPUD_<COMMAND>_<FLAG> > config file > defaults
        except SettingsError as exc:
            usage_error(f"xpud {args.command}", str(exc))
        args.parser = parser
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "devices" and not args.verbose:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return COMMANDS.get(args.command, cmd_admin)(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
