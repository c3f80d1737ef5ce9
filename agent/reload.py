"""SIGHUP on the agent: the configuration read again and what can change while serving applied (log level,
labels and zone, telemetry interval, the model repository, TLS certificates, health thresholds); what needs a
restart is named.
A configuration that is refused (bad file, unusable certificate, missing repository) changes nothing."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from xpud.proto.credentials import ServerCertificates, TlsFiles, channel_credentials

from .config import AgentConfig

if TYPE_CHECKING:
    from .daemon import RunningAgent

log = logging.getLogger(__name__)
LIVE = frozenset({"log_level", "labels", "zone", "interval", "model_repo", "tls_ca", "tls_cert", "tls_key",
                  "health"})


class ReloadRefused(ValueError):
    """The new configuration cannot be applied; the running one stays."""


def _check(running: AgentConfig, new: AgentConfig, agent: RunningAgent) -> None:
    """Everything that could refuse the reload, before anything changes."""
    if new.model_repo is not None and agent.manager is not None and agent.manager.repo is not None \
            and not Path(new.model_repo).is_dir():
        raise ReloadRefused(f"model repository {new.model_repo!r} is not a directory")
    if running.secured and new.secured:
        ServerCertificates.configuration(_tls(new))  # CredentialsError names the file
    if _tls(new).enabled and agent.link is not None:
        channel_credentials(_tls(new))


def _tls(config: AgentConfig) -> TlsFiles:
    return TlsFiles(config.tls_ca, config.tls_cert, config.tls_key)


async def apply(agent: RunningAgent, running: AgentConfig, new: AgentConfig) -> tuple[list[str], list[str]]:
    """Apply `new` over the `running` configuration (updated in place); returns (what changed live, the keys
    that need a restart). ReloadRefused or CredentialsError: nothing changed."""
    _check(running, new, agent)
    names = [f.name for f in dataclasses.fields(AgentConfig)]
    restart = [n for n in names if n not in LIVE and getattr(new, n) != getattr(running, n)]
    done = []
    if running.secured != new.secured:
        restart.append("tls_ca/tls_cert/tls_key (TLS turned on or off)")
    elif _tls(new).enabled:  # read again even under the same names: renewed files are usually written in place
        if agent.certificates is not None:
            agent.certificates.replace(_tls(new))
        if agent.token_certificates is not None:
            agent.token_certificates.replace(TlsFiles(None, new.tls_cert, new.tls_key))
        if agent.link is not None:
            agent.link.credentials = channel_credentials(_tls(new))  # from the next connection on
        done.append("TLS certificates")
        running.tls_ca, running.tls_cert, running.tls_key = new.tls_ca, new.tls_cert, new.tls_key
    if new.log_level != running.log_level:
        logging.getLogger().setLevel(getattr(logging, (new.log_level or "info").upper()))
        done.append(f"log level {new.log_level or 'info'}")
    if new.interval != running.interval:
        agent.telemetry.interval = new.interval
        done.append(f"interval {new.interval:g} s")
    if new.health != running.health:  # the thresholds; each device keeps its state and history
        book = agent.telemetry.health
        book.policy = new.health
        for device in book.devices.values():
            device.policy = new.health
        done.append("health thresholds")
    if (new.labels, new.zone) != (running.labels, running.zone):
        if agent.link is not None:
            agent.link.rejoin(new.labels, new.zone)
        done.append("labels and zone")
    if agent.manager is not None and agent.manager.repo is not None and new.model_repo is not None:
        loaded, unloaded = await agent.manager.rescan(Path(new.model_repo))  # even unchanged: new models in it
        done.append(f"model repository {new.model_repo} ({len(loaded)} loaded, {len(unloaded)} unloaded)")
    elif new.model_repo != running.model_repo:
        restart.append("model_repo")
    for name in ("log_level", "interval", "labels", "zone", "model_repo", "health"):
        setattr(running, name, getattr(new, name))
    return done, restart
