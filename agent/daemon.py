"""The agent process: wires telemetry, serving and the controller link, and runs them until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xpud.proto.devices import GPU_VENDORS

from .config import AgentConfig
from .sdnotify import SystemdNotifier
from .telemetry.health import HealthBook
from .telemetry.inventory import Inventory, available_plugins, plugin_slots
from .telemetry.metrics import AgentMetrics
from .telemetry.sampling import Snapshot, Telemetry

if TYPE_CHECKING:

    from xpud.proto.auth import Rules
    from xpud.proto.credentials import ServerCertificates
    from xpud.proto.tokens import TokenKey, TokenVerifier

    from .link.client import LinkClient
    from .serving.manager import ModelManager
    from .serving.providers import Probe
    from .serving.servicer import InferenceServer

log = logging.getLogger(__name__)
# what the gpu extra's wheels hold (the driver's libcuda is not among them)
CUDA_WHEEL_LIBRARIES = ("libcublas", "libcublasLt", "libcudart", "libcudnn", "libcufft", "libcurand", "libnvrtc")
TOKENS_FILE = "tokens.json"  # in the cache directory: the pool's token hashes, as the controller last sent them


class StartupError(RuntimeError):
    """The agent cannot start (port in use, ...); the message says why."""


@dataclass
class RunningAgent:
    """Handles of a started agent, for the CLI and for in-process tests."""

    inventory: Inventory
    telemetry: Telemetry
    metrics: AgentMetrics
    metrics_port: int
    server: InferenceServer | None = None
    manager: ModelManager | None = None
    grpc_port: int | None = None
    link: LinkClient | None = None
    certificates: ServerCertificates | None = None  # the OIP endpoint's, replaced on reload
    token_certificates: ServerCertificates | None = None  # the OIP token port's (TLS, no client certificate)
    tokens: TokenVerifier | None = None  # the pool's live tokens, as the controller last sent them
    token_port: int | None = None

    async def close(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self.manager is not None:
            await self.manager.close()
        self.metrics.close()
        await self.inventory.close()


def build_inventory(config: AgentConfig) -> Inventory:
    slots = plugin_slots(config.plugins(available_plugins()), config.plugin_options)
    return Inventory(slots, sample_budget_s=config.sample_budget)


async def start_agent(config: AgentConfig) -> RunningAgent:
    if config.controller is not None or config.model_repo is not None:
        from .serving import providers

        providers.start()  # in a child process, while the plugins and /metrics start: the Hello waits for it
    inventory = build_inventory(config)
    await inventory.discover()
    telemetry = Telemetry(inventory, config.interval, health=HealthBook(config.health))
    await telemetry.tick()  # /metrics never answers empty
    metrics = AgentMetrics(
        devices=lambda: inventory.devices,
        snapshot=lambda: telemetry.snapshot,
        plugin_statuses=lambda: inventory.statuses,
        node=config.node,
        health=telemetry.health,
    )
    from xpud.proto.credentials import CredentialsError, TlsFiles

    try:
        if config.metrics_tls and not (config.tls_cert and config.tls_key):
            raise CredentialsError("--metrics-tls serves /metrics with this agent's certificate: give --tls-cert "
                                   "and --tls-key")
        port = metrics.serve(config.metrics_port, config.metrics_host,
                             TlsFiles(config.tls_ca, config.tls_cert, config.tls_key) if config.metrics_tls else None)
    except CredentialsError as exc:
        metrics.close()
        await inventory.close()
        raise StartupError(str(exc)) from None
    except OSError as exc:
        metrics.close()
        await inventory.close()
        raise StartupError(
            f"cannot serve metrics on {config.metrics_host}:{config.metrics_port}: {exc.strerror or exc}"
            " (is another agent running? choose another --metrics-port)"
        ) from None
    agent = RunningAgent(inventory, telemetry, metrics, port)
    if config.controller is not None:
        await _start_linked(agent, config)
    elif config.model_repo is not None:
        await _start_serving(agent, config, Path(config.model_repo))
    return agent


async def _start_linked(agent: RunningAgent, config: AgentConfig) -> None:
    """Serve what the controller assigns (models loaded from the artifact cache), keep the link."""
    from xpud.proto.credentials import CredentialsError, TlsFiles, channel_credentials

    from .link.artifacts import ArtifactCache
    from .link.client import LinkClient
    from .link.reconcile import Reconciler
    from .serving.runtime import available_providers

    cache = config.cache_path()
    try:
        artifacts = ArtifactCache(cache / "artifacts", config.cache_max_bytes)
    except OSError as exc:
        await agent.close()
        raise StartupError(f"cannot use cache directory {str(cache)!r}: {exc.strerror} (set --cache-dir)") from None
    shutil.rmtree(cache / "repo", ignore_errors=True)  # hard links into the artifacts, made by older agents
    tokens_file = cache / TOKENS_FILE
    if config.secured:  # the pool's tokens, as last heard: they work before (and without) the controller
        from xpud.proto.tokens import TokenVerifier

        from .link.tokenfile import load_tokens

        agent.tokens = TokenVerifier(load_tokens(tokens_file))
    await _start_serving(agent, config, None)
    assert agent.manager is not None and agent.grpc_port is not None
    reconciler = Reconciler(agent.manager, artifacts, cache / "desired.json")
    generation, saved = reconciler.saved()
    if saved:  # the data plane comes back before (and without) the controller
        log.info("serving the last desired state (generation %d) until the controller answers", generation)
        await reconciler.apply(generation, saved, None)
    tls = TlsFiles(config.tls_ca, config.tls_cert, config.tls_key)
    try:
        credentials = channel_credentials(tls) if tls.enabled else None
    except CredentialsError as exc:
        await agent.close()
        raise StartupError(str(exc)) from None
    agent.link = LinkClient(
        config.controller or "", node=config.node, labels=config.labels, zone=config.zone,
        endpoint=config.endpoint(agent.grpc_port), telemetry=agent.telemetry, reconciler=reconciler,
        providers=available_providers, credentials=credentials,
        inference_tls=config.secured,  # as _serving_security decided
        on_tokens=(lambda keys: _tokens_heard(agent, tokens_file, keys)) if agent.tokens is not None else None,
    )


def _tokens_heard(agent: RunningAgent, path: Path, keys: list[TokenKey]) -> None:
    from .link.tokenfile import save_tokens

    assert agent.tokens is not None
    agent.tokens.replace(keys)
    save_tokens(path, keys)


def gpu_devices(inventory: Inventory) -> dict[int, str]:
    """The node's device id ("nvidia:0") of each GPU index the execution providers can use: whole NVIDIA/AMD
    GPUs (not MIG slices, not simulated)."""
    return {d.index: d.id for d in inventory.devices
            if d.plugin in GPU_VENDORS and d.kind == "gpu" and d.partition is None and d.index is not None}


def warn_unusable_gpus(inventory: Inventory, probe: Probe) -> None:
    """Say so when this node has GPUs that none of their vendor's execution providers can run on."""
    for vendor, eps in GPU_VENDORS.items():
        ids = [d.id for d in inventory.devices if d.plugin == vendor and d.kind == "gpu" and d.partition is None]
        if ids and not any(ep in probe.usable for ep in eps):
            why = "; ".join(f"{ep}: {probe.refused.get(ep) or probe.refused.get('*') or 'not in this onnxruntime'}"
                            for ep in eps)
            missing_cuda = any(f"{lib}.so" in why for lib in CUDA_WHEEL_LIBRARIES)
            hint = " (pip install 'xpud[gpu]' brings the CUDA and cuDNN libraries)" if missing_cuda else ""
            log.warning("%s cannot run models: %s%s", ", ".join(ids), why, hint)


def inference_checks(inventory: Inventory) -> dict[str, Callable[[], None]]:
    """Per device id, what its plugin wants called before each model run on it: the simulator's injected
    inference faults (``inference_check``, an optional plugin method); real devices fail on their own."""
    checks = {}
    for slot in inventory.slots:
        hook: Callable[[str], Callable[[], None] | None] | None = getattr(slot.plugin, "inference_check", None)
        if hook is None:
            continue
        for d in slot.devices:
            if (check := hook(d.id)) is not None:
                checks[d.id] = check
    return checks


async def _start_serving(agent: RunningAgent, config: AgentConfig, repo: Path | None) -> None:
    """The OIP endpoint over a model manager: of the repository ``repo``, or (None) of what is assigned."""
    from .serving import providers
    from .serving.gpumemory import GpuMemory
    from .serving.manager import ModelManager  # numpy and the serving stack: only for an agent that serves
    from .serving.servicer import InferenceServer
    from .serving.stats import InferenceMetrics

    if repo is not None and not repo.is_dir():
        await agent.close()
        raise StartupError(f"model repository {str(repo)!r} is not a directory (check --model-repo)")
    by_index = gpu_devices(agent.inventory)
    providers.start(lambda probe: warn_unusable_gpus(agent.inventory, probe))  # when the probe is done
    gpus = sorted(by_index)
    nvidia = any(d.plugin == "nvidia" and d.index in gpus for d in agent.inventory.devices)
    # each run's outcome counts against the devices it ran on, for their health (agent.telemetry.health)
    agent.manager = ModelManager(repo, gpus=gpus,
                                 metrics=InferenceMetrics(agent.metrics.registry),
                                 default_max_batch_size=config.default_max_batch_size,
                                 gpu_memory=GpuMemory() if nvidia else None,
                                 gpu_devices=by_index, outcomes=agent.telemetry.inference,
                                 device_checks=inference_checks(agent.inventory))
    try:
        agent.certificates, rules = _serving_security(config)
    except StartupError:
        await agent.close()
        raise
    credentials = agent.certificates.credentials if agent.certificates is not None else None
    agent.server = InferenceServer(agent.manager, max_message_bytes=config.max_message_bytes,
                                   credentials=credentials, rules=rules,
                                   tokens=agent.tokens.verify if agent.tokens is not None else None)
    try:
        if config.inference_token_port is not None:
            agent.token_port = _token_port(agent, config)
        agent.grpc_port = await agent.server.start(config.serving_host(), config.grpc_port)
    except StartupError:
        agent.server = None
        await agent.close()
        raise
    except OSError as exc:
        agent.server = None
        await agent.close()
        raise StartupError(f"{exc} (is another server on that port? choose another --grpc-port)") from None
    tokens = f", tokens at {config.serving_host()}:{agent.token_port} (TLS)" if agent.token_port else ""
    log.info("inference endpoint (OIP gRPC) at %s:%d (%s)%s; loading models from %s", config.serving_host(),
             agent.grpc_port, "mTLS, roles checked" if credentials is not None else "plaintext", tokens,
             repo or "the controller's assignments")
    if repo is not None:
        await agent.manager.load_all()
    await agent.server.set_ready(True)
    log.info("models ready: %s", ", ".join(sorted(agent.manager.models)) or "none")


def _token_port(agent: RunningAgent, config: AgentConfig) -> int:
    """The OIP token port: TLS with this agent's certificate, callers named by the pool's tokens."""
    from xpud.proto.credentials import CredentialsError, ServerCertificates, TlsFiles

    assert agent.server is not None and config.inference_token_port is not None
    if agent.tokens is None:
        raise StartupError("--inference-token-port takes the pool's tokens: it needs --controller, --tls-ca, "
                           "--tls-cert and --tls-key")
    try:
        agent.token_certificates = ServerCertificates(TlsFiles(None, config.tls_cert, config.tls_key))
    except CredentialsError as exc:
        raise StartupError(str(exc)) from None
    return agent.server.add_token_port(config.serving_host(), config.inference_token_port,
                                       agent.token_certificates.credentials)


def _serving_security(config: AgentConfig) -> tuple[ServerCertificates | None, Rules | None]:
    """mTLS and role checks for the OIP endpoint when the agent has a CA, a certificate and a key (a secured
    pool, or a standalone agent given all three); else plaintext."""
    from xpud.proto.credentials import SETUP_HINT, CredentialsError, ServerCertificates, TlsFiles, is_loopback

    from .serving.access import rules

    host = config.serving_host()
    if not config.secured:
        if not is_loopback(host) and not config.insecure:
            raise StartupError(f"refusing to serve inference on {host} without TLS: anyone who reaches it could "
                               f"call it. S{SETUP_HINT[1:]}; or serve on loopback (--grpc-host 127.0.0.1); or "
                               "pass --insecure")
        if config.controller and not is_loopback(config.controller.rpartition(":")[0]) and is_loopback(
                config.advertise or host):
            log.warning("the inference endpoint listens on %s only: a router on another machine cannot reach it "
                        "(set TLS up, or --grpc-host with --insecure)", host)
        return None, None
    try:
        return ServerCertificates(TlsFiles(config.tls_ca, config.tls_cert, config.tls_key)), \
            rules(linked=config.controller is not None)
    except CredentialsError as exc:
        raise StartupError(str(exc)) from None


async def _watchdog(notifier: SystemdNotifier, telemetry: Telemetry, stop: asyncio.Event, stale_after: float) -> None:
    """Ping systemd's watchdog while telemetry is alive; a stuck loop stops the pings and systemd restarts us."""
    assert notifier.watchdog_interval is not None
    while not stop.is_set():
        if time.time() - telemetry.snapshot.timestamp < stale_after:
            notifier.notify("WATCHDOG=1")
        try:
            await asyncio.wait_for(stop.wait(), notifier.watchdog_interval)
        except TimeoutError:
            pass


async def run_standalone(config: AgentConfig, stop: asyncio.Event | None = None,
                         reread: Callable[[], AgentConfig] | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop``); on SIGHUP apply ``reread()``'s configuration. Returns the process
    exit code."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    hangups = asyncio.Event()  # set by SIGHUP, from the start: one during start-up is applied once serving
    if reread is not None:
        loop.add_signal_handler(signal.SIGHUP, hangups.set)
    agent = await start_agent(config)
    return await serve_agent(agent, config, stop, reread, hangups)


async def _reload(agent: RunningAgent, config: AgentConfig, reread: Callable[[], AgentConfig],
                  notifier: SystemdNotifier) -> None:
    from xpud.proto.credentials import CredentialsError

    from .reload import ReloadRefused, apply

    notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
    try:
        new = reread()
        done, restart = await apply(agent, config, new)
    except (ValueError, CredentialsError, ReloadRefused) as exc:  # ConfigError, ScenarioError are ValueErrors
        log.error("reload refused, the running configuration stays: %s", exc)
        return
    finally:
        notifier.notify("READY=1")
    log.info("configuration reloaded: %s", ", ".join(done) or "nothing changed")
    if restart:
        log.warning("%s changed: restart the agent to apply (systemctl restart xpud-agent)", ", ".join(restart))


async def serve_agent(agent: RunningAgent, config: AgentConfig, stop: asyncio.Event,
                      reread: Callable[[], AgentConfig] | None = None, hangups: asyncio.Event | None = None) -> int:
    """Tick telemetry, keep the controller link, reload on SIGHUP and talk to systemd until ``stop``; then close
    everything."""
    notifier = SystemdNotifier()
    devices = agent.inventory.devices
    log.info(
        "xpud agent on node %s: %d device(s) [%s]; metrics at http%s://%s:%d/metrics",
        config.node,
        len(devices),
        ", ".join(d.id for d in devices),
        "s" if config.metrics_tls else "",
        config.metrics_host,
        agent.metrics_port,
    )

    def status_line(snapshot: Snapshot) -> None:
        notifier.notify(f"STATUS={len(snapshot.samples)} device(s), tick {snapshot.tick}")

    notifier.notify("READY=1", f"STATUS={len(devices)} device(s), metrics on port {agent.metrics_port}")
    tasks = []
    if notifier.watchdog_interval is not None:
        stale_after = 3 * config.interval + config.sample_budget + 1
        tasks.append(asyncio.create_task(_watchdog(notifier, agent.telemetry, stop, stale_after)))
    if notifier.enabled:
        agent.telemetry.on_tick = status_line
    if agent.link is not None:
        tasks.append(asyncio.create_task(agent.link.run(stop)))
    if reread is not None and hangups is not None:
        async def reloads() -> None:
            while True:  # one reload at a time; signals during one fold into the next
                await hangups.wait()
                hangups.clear()
                await _reload(agent, config, reread, notifier)

        tasks.append(asyncio.create_task(reloads()))
    try:
        await agent.telemetry.run(stop)
    finally:
        notifier.notify("STOPPING=1")
        log.info("xpud agent stopping")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await agent.close()
    return 0
