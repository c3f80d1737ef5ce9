"""The controller process: AgentLink + Admin (+ health) on --listen, the inference router on --inference-port."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from xpud.proto import admin_pb2_grpc, link_pb2_grpc
from xpud.proto.auth import Authorize
from xpud.proto.credentials import ServerCertificates, TlsFiles, channel_credentials
from xpud.proto.decoding import interceptors

from .access import ROUTER_RULES, RULES
from .admin import AUDITED, AdminService
from .audit import KEEP, MAX_BYTES, AuditLog
from .control import Controller
from .drift import GRACE as REPLACE_GRACE
from .handover import GRACE as HANDOVER_GRACE
from .linkservice import AgentLinkService
from .metrics import ControllerMetrics
from .policy import P2CEwma, RoundRobin
from .pool import LiveLoad
from .router import Router, add_router
from .routes import ReplicaEndpoint
from .store import ArtifactStore, SqliteStore, StateStore, open_store
from .tuning import ProcessTuning

log = logging.getLogger(__name__)
MAX_MESSAGE = 64 << 20
ARTIFACTS_DIR = "artifacts"  # in the state directory: model files by sha256
AUDIT_NAME = "audit.log"  # in the state directory, unless --audit-log says otherwise
OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.so_reuseport", 0),
    # No BDP probing (it answers each burst of telemetry with a PING); a fixed 8 MiB receive window instead keeps
    # uploads over a long round trip fast (benchmarks/link_window.py).
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", 8 << 20),
]


class StartupError(RuntimeError):
    """The controller cannot start; the message says why."""


@dataclass(frozen=True)
class Live:
    """What a SIGHUP can change on a running controller (everything else needs a restart)."""

    tls: TlsFiles | None
    lease: float
    audit_log: Path
    audit_max_bytes: int
    audit_keep: int


@dataclass
class RunningController:
    controller: Controller
    server: grpc.aio.Server
    router_server: grpc.aio.Server
    router: Router
    port: int
    inference_port: int
    token_port: int | None = None  # the admin API for token clients (no client certificate), if asked for
    audit: AuditLog | None = None
    inference_token_port: int | None = None
    metrics: ControllerMetrics | None = None
    metrics_port: int | None = None  # where /metrics is served, if it is
    certificates: list[ServerCertificates] = field(default_factory=list)  # each TLS port's, replaced on reload

    def reload(self, live: Live) -> list[str]:
        """Apply what SIGHUP can change while serving; returns what changed. CredentialsError or AuditError (and
        nothing of that part changes) when the new files cannot be used."""
        changed = []
        tls, replacements = live.tls, []
        if tls is not None and self.certificates:  # read again even when named alike: renewed in place
            with_ca, without = TlsFiles(tls.ca, tls.cert, tls.key), TlsFiles(None, tls.cert, tls.key)
            replacements = [(c, with_ca if c.tls.ca else without) for c in self.certificates]
            for _, files in replacements:
                ServerCertificates.configuration(files)  # every file usable before anything changes
        if self.audit is not None:  # reopened even when unchanged: a SIGHUP after logrotate moved it
            self.audit.reopen(live.audit_log, live.audit_max_bytes, live.audit_keep)
        if replacements and tls is not None:
            for certificates, files in replacements:
                certificates.replace(files)
            if self.router.credentials is not None:
                self.router.renew(channel_credentials(tls))
            changed.append("TLS certificates")
        if live.lease != self.controller.lease:
            self.controller.lease = self.controller.nodes.lease = live.lease
            changed.append("lease")
        return changed

    async def stop(self, grace: float = 2.0) -> None:
        if self.metrics is not None:
            self.metrics.close()
        await self.router_server.stop(grace)
        await self.server.stop(grace)
        await self.router.close()
        await self.controller.close()
        self.controller.store.close()
        if self.audit is not None:
            self.audit.close()


def _bind(server: grpc.aio.Server, address: str, what: str, creds: grpc.ServerCredentials | None = None) -> int:
    try:
        port = server.add_secure_port(address, creds) if creds is not None else server.add_insecure_port(address)
    except RuntimeError as exc:
        raise StartupError(f"cannot listen on {address} for {what}: {exc}") from None
    if port == 0:
        raise StartupError(f"cannot listen on {address} for {what}: address in use or not available")
    return port


async def start_controller(listen: str, inference_port: int, state_dir: Path, *, inference_host: str | None = None,
                           interval: float = 1.0, lease: float = 3.0, tls: TlsFiles | None = None,
                           store_url: str | None = None, token_listen: str | None = None,
                           audit_log: Path | None = None, audit_max_bytes: int = MAX_BYTES,
                           audit_keep: int = KEEP, inference_token_port: int | None = None,
                           metrics_port: int | None = None, metrics_host: str = "127.0.0.1",
                           handover_grace: float = HANDOVER_GRACE, replace_grace: float = REPLACE_GRACE,
                           metrics_tls: bool = False, routing_policy: str = "p2c",
                           zone: str = "") -> RunningController:
    """Serve a controller whose state is in `store_url` (None: SQLite in `state_dir`), model files in `state_dir`'s
    artifacts/ folder either way; with this process's tuning installed (`tuning.ProcessTuning`).

    With a CA in `tls` the pool is secured: every call is authenticated (client certificate, or a bearer token)
    and checked against `access.RULES`. gRPC either requires a client certificate at the handshake or does not
    ask for one, so clients with a token and no certificate use a second port, `token_listen` (TLS only). The
    router is secured alike: mTLS on `inference_port` (role inference or above), tokens on `inference_token_port`,
    and it reaches agents that take mTLS with the controller's certificate.
    State-changing admin calls are recorded in `audit_log` (default: audit.log in `state_dir`). Prometheus
    /metrics (`metrics.ControllerMetrics`) is served on `metrics_host`:`metrics_port` when a port is given, over
    HTTPS with `metrics_tls` (the controller's certificate; with a CA, clients need a certificate signed by it).
    `routing_policy`: "p2c" (`policy.P2CEwma`) or "round-robin"; `zone`: the router's zone, whose replicas a
    request without an ``xpud-zone`` parameter prefers ("": none)."""
    if metrics_tls and not (tls is not None and tls.cert and tls.key):
        raise StartupError("--metrics-tls serves /metrics with the controller's certificate: give --tls-cert and "
                           "--tls-key")
    certificates: list[ServerCertificates] = []

    def serving(files: TlsFiles) -> grpc.ServerCredentials:  # CredentialsError: bad files
        certificates.append(ServerCertificates(files))
        return certificates[-1].credentials

    creds = serving(tls) if tls is not None and tls.enabled else None
    secured = tls is not None and bool(tls.ca) and creds is not None
    if (token_listen or inference_token_port is not None) and not secured:
        raise StartupError("--token-listen and --inference-token-port need a secured controller: --tls-ca, "
                           "--tls-cert and --tls-key")
    to_agents = channel_credentials(tls) if secured and tls else None
    # StoreError (in use, corrupt), StoreURLError before anything listens
    store: StateStore = open_store(store_url) if store_url else SqliteStore(state_dir)
    try:
        artifacts = ArtifactStore(state_dir / ARTIFACTS_DIR)
        audit = AuditLog(audit_log or state_dir / AUDIT_NAME, audit_max_bytes, audit_keep)  # AuditError
    except BaseException:
        store.close()
        raise
    controller = Controller(store, artifacts, interval=interval, lease=lease,
                            tuning=ProcessTuning(time.monotonic),
                            handover_grace=handover_grace, replace_grace=replace_grace)

    def refused(method: str, actor: str, code: grpc.StatusCode, message: str) -> None:
        name = method.rpartition("/")[2]
        if method.startswith("/xpud.v1.Admin/") and name in AUDITED:
            audit.record(name, "", {}, code.name, message, actor=actor)

    checks = [Authorize(RULES, controller.tokens.verify, denied=refused)] if secured else []
    server = grpc.aio.server(options=OPTIONS, interceptors=[*checks, *interceptors()])
    link_pb2_grpc.add_AgentLinkServicer_to_server(AgentLinkService(controller), server)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminService(controller, audit), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    metrics = ControllerMetrics(controller, asyncio.get_running_loop())
    emitting: set[asyncio.Task[None]] = set()  # the router's events being written (held: tasks are weak)

    async def write_event(kind: str, subject: str, message: str) -> None:
        try:
            await controller.emit([(kind, subject, message)])
        except Exception as exc:  # the store's trouble: the routing decision stands, the event is logged only
            log.warning("event %s %s not stored (%s): %s", kind, subject, exc, message)

    def router_event(kind: str, subject: str, message: str) -> None:  # on the loop, from the routing policy
        task = asyncio.get_running_loop().create_task(write_event(kind, subject, message))
        emitting.add(task)
        task.add_done_callback(emitting.discard)

    utilization = LiveLoad(controller.pool.nodes)

    def load(replica: ReplicaEndpoint) -> float | None:  # p2c's tie-break: the busiest of its devices
        known = [u for d in replica.devices if (u := utilization.get((replica.node, d))) is not None]
        return max(known) if known else None

    policy = RoundRobin(zone=zone) if routing_policy == "round-robin" else \
        P2CEwma(emit=router_event, load=load, zone=zone)
    router = Router(max_message_bytes=MAX_MESSAGE, credentials=to_agents, metrics=metrics.router, policy=policy,
                    stats=controller.stats, profiles=controller.state.profiles)
    controller.routes.subscribe(router.update)  # the endpoint table, pushed as it changes
    router_checks = [Authorize(ROUTER_RULES, controller.tokens.verify)] if secured else []
    router_server = grpc.aio.server(options=OPTIONS, interceptors=[*router_checks, *interceptors()])
    add_router(router_server, router)
    host = inference_host or listen.rpartition(":")[0] or "0.0.0.0"
    try:
        port = _bind(server, listen, "the agent link and admin API", creds)
        token_port = _bind(server, token_listen, "the admin API for tokens",
                           serving(TlsFiles(None, tls.cert, tls.key))) if token_listen and tls else None
        inference = _bind(router_server, f"{host}:{inference_port}", "inference",  # TLS whenever it has a cert
                          serving(tls) if creds is not None and tls else None)
        inference_tokens = _bind(router_server, f"{host}:{inference_token_port}", "inference for tokens",
                                 serving(TlsFiles(None, tls.cert, tls.key))) \
            if inference_token_port is not None and tls else None
        served = _serve_metrics(metrics, metrics_host, metrics_port, tls if metrics_tls else None) \
            if metrics_port is not None else None
    except StartupError:
        controller.tuning.close()
        audit.close()
        store.close()
        raise
    await controller.start()
    await server.start()
    await router_server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    security = "mTLS, roles checked" if secured else "TLS" if creds is not None else "plaintext"
    tokens = f", admin for tokens at {(token_listen or '').rpartition(':')[0]}:{token_port} (TLS)" if token_port \
        else ""
    if inference_tokens is not None:
        tokens += f", inference for tokens at {host}:{inference_tokens} (TLS)"
    if served is not None:
        tokens += f", metrics at http{'s' if metrics_tls else ''}://{metrics_host}:{served}/metrics"
    log.info("xpud controller: agents and admin at %s:%d (%s)%s, inference at %s:%d (%s), state in %s",
             listen.rpartition(":")[0], port, security, tokens, host, inference,
             "mTLS" if secured else "TLS" if creds is not None else "plaintext",
             store_url or state_dir)
    return RunningController(controller, server, router_server, router, port, inference, token_port, audit,
                             inference_tokens, metrics, served,
                             certificates=certificates)


def _serve_metrics(metrics: ControllerMetrics, host: str, port: int, tls: TlsFiles | None) -> int:
    try:
        return metrics.serve(port, host, tls)
    except OSError as exc:
        raise StartupError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc} (is another controller "
                           "running? choose another --metrics-port)") from None


async def run_controller(listen: str, inference_port: int, state_dir: Path, stop: asyncio.Event | None = None,
                         notify: Callable[..., Any] | None = None,
                         reload: Callable[[RunningController], None] | None = None, **kwargs: Any) -> int:
    """Serve until SIGTERM/SIGINT (or ``stop``); ``notify`` gets systemd's READY=1 / STOPPING=1 (and RELOADING=1
    around a SIGHUP's ``reload``)."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running: RunningController | None = None
    pending = False  # a SIGHUP during start-up: applied once serving

    def hangup() -> None:
        nonlocal pending
        if running is None or reload is None:
            pending = True
            return
        if notify is not None:
            notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            reload(running)
        finally:
            if notify is not None:
                notify("READY=1")

    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, hangup)
    running = await start_controller(listen, inference_port, state_dir, **kwargs)
    if pending:
        hangup()
    if notify is not None:
        notify("READY=1", f"STATUS=agents and admin on port {running.port}, inference on {running.inference_port}")
    try:
        await stop.wait()
    finally:
        if notify is not None:
            notify("STOPPING=1")
        log.info("xpud controller stopping")
        await running.stop()
    return 0
