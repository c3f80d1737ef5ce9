"""SIGHUP for `xpud controller`: read the settings again (same flags and variables, the file as it is now), apply
what can change while serving and name what needs a restart. A file that is refused changes nothing."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from xpud.settings import SettingsError, reread, settings

if TYPE_CHECKING:
    from xpud.controller.server import Live, RunningController

log = logging.getLogger("xpud.reload")
CONTROLLER_LIVE = frozenset({"log_level", "tls_ca", "tls_cert", "tls_key", "lease", "audit_log",
                             "audit_log_max_bytes", "audit_log_keep", "config"})


def set_log_level(level: str | None, verbose: bool = False) -> None:
    """-v wins; else the configured level (None: info)."""
    logging.getLogger().setLevel(logging.DEBUG if verbose else getattr(logging, (level or "info").upper()))


def controller_live(args: argparse.Namespace, state: Path) -> Live:
    from xpud.controller.server import AUDIT_NAME, Live
    from xpud.proto.credentials import TlsFiles

    return Live(TlsFiles(args.tls_ca, args.tls_cert, args.tls_key) if args.tls_ca or args.tls_cert else None,
                args.lease, Path(args.audit_log) if args.audit_log else state / AUDIT_NAME,
                args.audit_log_max_bytes, args.audit_log_keep)


class ControllerReload:
    """Called on SIGHUP with the running controller; `current` follows what was applied."""

    def __init__(self, parser: argparse.ArgumentParser, given: argparse.Namespace, current: argparse.Namespace,
                 state: Path) -> None:
        self.parser, self.given, self.current, self.state = parser, given, current, state

    def __call__(self, running: RunningController) -> None:
        from xpud.controller.audit import AuditError
        from xpud.proto.credentials import CredentialsError

        where = self.current.config or "flags and environment (no config file)"
        try:
            new = reread(self.parser, self.given)
            changed = running.reload(controller_live(new, self.state))
        except (SettingsError, CredentialsError, AuditError) as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            return
        if new.log_level != self.current.log_level:
            set_log_level(new.log_level, self.current.verbose)
            changed.append(f"log level {new.log_level or 'info'}")
        restart = [s.flag for s in settings(self.parser, "controller")
                   if s.dest not in CONTROLLER_LIVE and getattr(new, s.dest) != getattr(self.current, s.dest)]
        for dest in CONTROLLER_LIVE:
            setattr(self.current, dest, getattr(new, dest))
        log.info("configuration reloaded from %s: %s", where, ", ".join(changed) or "nothing changed")
        if restart:
            log.warning("%s changed: restart the controller to apply (systemctl restart xpud-controller)",
                        ", ".join(restart))
