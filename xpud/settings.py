"""Every flag of `xpud agent` and `xpud controller` is also an environment variable and a config-file key.

Precedence: the flag, then ``XPUD_<COMMAND>_<FLAG>`` (``--grpc-port`` of the agent: ``XPUD_AGENT_GRPC_PORT``),
then the config file (``--config``, else ``$XPUD_CONFIG_DIR/<command>.toml``, else ``/etc/xpud/<command>.toml``
when it exists), then the built-in default. Values from the environment and the controller's file go through
the flag's own parser, so they are checked alike. The agent's file is read by `xpud.agent.config.load_config`
(it also holds plugin options); `AGENT_KEYS` says where each agent flag lives in it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_DIR = "/etc/xpud"
COMMANDS = ("agent", "controller")
NO_KEY = frozenset({"config"})  # the file itself
# Agent flags kept outside the [agent] table (the file's layout predates the flags).
AGENT_KEYS = {
    "model_repo": "serving.model_repo", "grpc_host": "serving.grpc_host", "grpc_port": "serving.grpc_port",
    "max_message_bytes": "serving.max_message_bytes", "inference_token_port": "serving.inference_token_port",
    "sim": "plugins.sim.count", "scenario": "plugins.sim.scenario",
}
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class SettingsError(ValueError):
    """A value from the environment or a config file that the flag's parser refused; says where it came from."""


@dataclass(frozen=True)
class Setting:
    command: str
    action: argparse.Action
    default: Any

    @property
    def dest(self) -> str:
        return self.action.dest

    @property
    def flag(self) -> str:
        return max(self.action.option_strings, key=len)

    @property
    def env(self) -> str:
        return f"XPUD_{self.command.upper()}_{self.dest.upper()}"

    @property
    def key(self) -> str | None:
        if self.dest in NO_KEY:
            return None
        if self.command == "agent":
            return AGENT_KEYS.get(self.dest, f"agent.{self.dest}")
        return f"{self.command}.{self.dest}"

    @property
    def switch(self) -> bool:
        """A flag without a value (store_true)."""
        return self.action.nargs == 0

    def parse(self, value: Any, where: str) -> Any:
        """A value from `where` (an environment variable or a file key) through the flag's own checks."""
        if self.switch:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in TRUE or text in FALSE:
                return text in TRUE
            raise SettingsError(f"{where}: expected true or false, got {value!r}")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise SettingsError(f"{where}: expected a string or a number, got {value!r}")
        text = str(value)
        try:
            parsed = self.action.type(text) if callable(self.action.type) else text
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise SettingsError(f"{where}: {exc}") from None
        if self.action.choices is not None and parsed not in self.action.choices:
            choices = ", ".join(map(str, self.action.choices))
            raise SettingsError(f"{where}: expected one of {choices}, got {value!r}")
        return parsed


def settings(parser: argparse.ArgumentParser, command: str) -> list[Setting]:
    """The settings of one command, in the order of its --help; each flag's default is taken out of argparse
    (left None) the first time, so that an unset flag can be told from one given on the command line."""
    sub = _subparser(parser, command)
    defaults: dict[str, Any] = sub.__dict__.setdefault("_xpud_defaults", {})
    out = []
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        if action.dest not in defaults:
            defaults[action.dest] = action.default
            action.default = None
        out.append(Setting(command, action, defaults[action.dest]))
    return out


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices[command]
    raise KeyError(command)


def config_file(command: str, given: str | None, environ: Mapping[str, str]) -> Path | None:
    """--config (or its variable), else <command>.toml in $XPUD_CONFIG_DIR or /etc/xpud when it exists."""
    if given:
        return Path(given)
    path = Path(environ.get("XPUD_CONFIG_DIR") or CONFIG_DIR) / f"{command}.toml"
    return path if path.is_file() else None


def read_file(path: Path) -> dict[str, Any]:
    from xpud.agent.config import ConfigError, read_toml  # the agent's file reader: the same messages

    try:
        return read_toml(path)
    except ConfigError as exc:
        raise SettingsError(str(exc)) from None


def from_file(found: list[Setting], command: str, path: Path) -> dict[str, Any]:
    """The values a [command] table sets (the controller's file), each checked by its flag's parser."""
    data = read_file(path)
    unknown = set(data) - {command}
    if unknown:
        raise SettingsError(f"config file {str(path)!r}: unknown section(s) {', '.join(sorted(unknown))} "
                            f"(settings go in a [{command}] table)")
    table = data.get(command, {})
    by_key = {s.dest: s for s in found if s.key is not None}
    extra = set(table) - set(by_key)
    if extra:
        raise SettingsError(f"config file {str(path)!r}: [{command}] unknown key(s) {', '.join(sorted(extra))}")
    return {dest: by_key[dest].parse(value, f"{path} [{command}] {dest}") for dest, value in table.items()}


def resolve(parser: argparse.ArgumentParser, args: argparse.Namespace,
            environ: Mapping[str, str] = os.environ) -> argparse.Namespace:
    """Fill the flags not given from the environment, then (the controller's) the config file and the defaults;
    the agent's file and defaults are `load_config`'s and `AgentConfig`'s, below the flags left None here.
    Returns the flags and variables alone (and the file's path), for a reload to apply over the file again."""
    command = args.command
    for setting in settings(parser, command):
        if getattr(args, setting.dest, None) is None and environ.get(setting.env):
            setattr(args, setting.dest, setting.parse(environ[setting.env], setting.env))
    path = config_file(command, args.config, environ)
    args.config = str(path) if path is not None else None
    given = argparse.Namespace(**vars(args))
    if command == "controller":
        _file_and_defaults(parser, args)
    return given


def _file_and_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The controller's file under what `args` has, then the built-in defaults under both."""
    found = settings(parser, args.command)
    if args.config:
        for dest, value in from_file(found, args.command, Path(args.config)).items():
            if getattr(args, dest, None) is None:
                setattr(args, dest, value)
    for setting in found:
        if getattr(args, setting.dest, None) is None:
            setattr(args, setting.dest, setting.default)


def reread(parser: argparse.ArgumentParser, given: argparse.Namespace) -> argparse.Namespace:
    """The controller's settings again, from the same flags and variables over the file as it is now."""
    args = argparse.Namespace(**vars(given))
    _file_and_defaults(parser, args)
    return args


def reference(parser: argparse.ArgumentParser) -> str:
    """The README's table: every flag of the agent and the controller with its variable and file key."""
    rows = ["| Command | Flag | Environment | File key | What |", "|---|---|---|---|---|"]
    for command in COMMANDS:
        for s in settings(parser, command):
            key = f"`{s.key}`" if s.key else "—"
            text = (s.action.help or "").replace("|", "\\|")
            rows.append(f"| {command} | `{s.flag}` | `{s.env}` | {key} | {text} |")
    return "\n".join(rows)
