"""The agent's side of xpud.v1.AgentLink: hello, telemetry deltas, status, desired state; reconnect forever.

One stream per node. On (re)connect the agent says what it runs and which
desired-state generation it applied, so a controller adopts running models
instead of restarting them. Telemetry goes out every interval as deltas against
what was sent before on this stream (a new stream starts from full samples) and
doubles as the heartbeat. Desired states are applied by the reconciler; the
newest one wins when several arrive during an apply.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc

from xpud import __version__
from xpud.plugins.base import DeviceSample
from xpud.proto import link_pb2 as lpb
from xpud.proto import link_pb2_grpc
from xpud.proto.tokens import TokenKey

from ..telemetry.sampling import Telemetry
from ..telemetry.wire import device_info_to_proto, encode_sample
from . import CHANNEL_OPTIONS
from .assignment import Assignment
from .reconcile import Reconciler

log = logging.getLogger(__name__)


class LinkClient:
    def __init__(
        self,
        target: str,
        *,
        node: str,
        labels: Mapping[str, str],
        zone: str,
        endpoint: str,
        telemetry: Telemetry,
        reconciler: Reconciler,
        providers: Callable[[], list[str]],
        backoff_initial: float = 0.25,
        backoff_max: float = 10.0,
        rng: Callable[[], float] = random.random,
        credentials: grpc.ChannelCredentials | None = None,
        inference_tls: bool = False,
        on_tokens: Callable[[list[TokenKey]], None] | None = None,
    ) -> None:
        self.credentials = credentials
        self.on_tokens = on_tokens  # the pool's live tokens, when the controller sends them (a secured link)
        self.inference_tls = inference_tls
        self.target = target
        self.node, self.labels, self.zone, self.endpoint = node, dict(labels), zone, endpoint
        self.telemetry = telemetry
        self.reconciler = reconciler
        self.providers = providers
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self._rng = rng
        self.incarnation = secrets.token_hex(8)
        self.connected = asyncio.Event()
        self.sessions = 0
        self._status_dirty = asyncio.Event()
        self._pending: tuple[int, list[Assignment]] | None = None
        self._desired_last: tuple[int, list[Assignment]] | None = None  # what `_heal` applies again
        self._applier: asyncio.Task[None] | None = None
        self._stub: Any = None
        self._rejoin = asyncio.Event()
        reconciler.on_change = self._status_dirty.set

    async def run(self, stop: asyncio.Event) -> None:
        delay = self.backoff_initial
        last_error = ""
        while not stop.is_set():
            welcomed = False
            try:
                welcomed = await self._session(stop)
            except (grpc.aio.AioRpcError, ConnectionError) as exc:
                detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
                refused = code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
                message = f"controller {self.target} {'refused this agent' if refused else 'unreachable'}: {detail}"
                if message != last_error:
                    if refused:  # a retry soon would be refused again: only a fixed name or certificate helps
                        log.error("%s; retrying every %.0f s (models keep serving)", message, self.backoff_max)
                    else:
                        log.warning("%s; retrying with backoff (models keep serving)", message)
                    last_error = message
                if refused:
                    delay = self.backoff_max
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("controller link failed")
            finally:
                self.connected.clear()
            if welcomed:
                delay, last_error = self.backoff_initial, ""
            if stop.is_set():
                break
            pause = delay * (0.5 + self._rng())  # full jitter around the current step
            delay = min(delay * 2, self.backoff_max)
            try:
                await asyncio.wait_for(stop.wait(), pause)
            except TimeoutError:
                pass
        if self._applier is not None:  # stopping: don't wait out a retry back-off
            self._applier.cancel()
            await asyncio.gather(self._applier, return_exceptions=True)

    def rejoin(self, labels: Mapping[str, str], zone: str) -> None:
        """Say Hello again with these labels and zone (a reload changed them): the current stream ends and the
        next one starts at once; models keep serving."""
        self.labels, self.zone = dict(labels), zone
        self._rejoin.set()

    def _hello(self, providers: list[str]) -> lpb.AgentMessage:
        inventory = self.telemetry.inventory
        hello = lpb.Hello(
            node=self.node, labels=self.labels, zone=self.zone, agent_version=__version__,
            generation=self.reconciler.applied.generation, inference_endpoint=self.endpoint,
            incarnation=self.incarnation, execution_providers=providers, inference_tls=self.inference_tls,
        )
        hello.devices.extend(device_info_to_proto(d) for d in inventory.devices)
        hello.instances.extend(self._instances())
        return lpb.AgentMessage(hello=hello)

    def _instances(self) -> list[lpb.InstanceStatus]:
        return [
            lpb.InstanceStatus(deployment=r.deployment, model=r.model, version=r.version, digest=r.digest,
                               state=r.state, reason=r.reason, devices=list(r.devices),
                               execution_provider=r.execution_provider, memory_bytes=r.memory_bytes)
            for r in self.reconciler.statuses()
        ]

    async def _session(self, stop: asyncio.Event) -> bool:
        providers = await asyncio.to_thread(self.providers)  # the first call may wait for the provider probe
        if self.credentials is not None:
            channel = grpc.aio.secure_channel(self.target, self.credentials, options=CHANNEL_OPTIONS)
        else:
            channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        async with channel:
            self._stub = link_pb2_grpc.AgentLinkStub(channel)
            call = self._stub.Connect()
            await call.write(self._hello(providers))
            first = await call.read()
            if first is grpc.aio.EOF or first.WhichOneof("kind") != "welcome":
                raise ConnectionError("controller closed the link before its welcome")
            interval = first.welcome.telemetry_interval_s or 1.0
            self.sessions += 1
            self.connected.set()
            log.info("joined controller %s as node %s (interval %.1fs, lease %.1fs)", self.target, self.node,
                     interval, first.welcome.lease_s)
            sender = asyncio.create_task(self._send_loop(call, interval, stop))
            self._rejoin.clear()
            try:
                while not stop.is_set():
                    read = asyncio.create_task(call.read())
                    stopped = asyncio.create_task(stop.wait())
                    rejoin = asyncio.create_task(self._rejoin.wait())
                    done, _ = await asyncio.wait({read, stopped, sender, rejoin}, return_when=asyncio.FIRST_COMPLETED)
                    stopped.cancel()
                    rejoin.cancel()
                    if read not in done:
                        read.cancel()
                        if sender in done:
                            sender.result()  # raises the sender's error
                        break
                    message = read.result()
                    if message is grpc.aio.EOF:
                        raise ConnectionError("controller ended the link")
                    kind = message.WhichOneof("kind")
                    if kind == "desired":
                        self._desired(message.desired)
                    elif kind == "tokens" and self.on_tokens is not None:
                        self.on_tokens([TokenKey(t.id, t.name, t.role, t.salt, t.hash) for t in message.tokens.tokens])
            finally:
                sender.cancel()
                await asyncio.gather(sender, return_exceptions=True)
                call.cancel()
            return True

    def _desired(self, desired: lpb.DesiredState) -> None:
        assignments = [
            Assignment(a.deployment, a.model, a.version, a.digest, a.size_bytes, tuple(a.devices), a.max_batch_size,
                       a.priority)
            for a in desired.assignments
        ]
        self._desired_last = self._pending = (desired.generation, assignments)
        self._start_applier()

    def _start_applier(self) -> None:
        if self._applier is None or self._applier.done():
            self._applier = asyncio.create_task(self._apply_pending())

    def _heal(self) -> None:
        """A model this node should serve but does not (unloaded by hand, a session gone): apply the last desired
        state again. The applier only ends with nothing FAILED, so a FAILED report while it is idle is drift,
        whichever report found it; while it runs, its own backoff retries."""
        self.reconciler.drift()
        idle = self._applier is None or self._applier.done()
        if idle and self._desired_last is not None and self._pending is None \
                and any(r.state == "FAILED" for r in self.reconciler.reports.values()):
            self._pending = self._desired_last
            self._start_applier()

    async def _apply_pending(self) -> None:
        retry = 2.0
        while self._pending is not None:
            generation, assignments = self._pending
            self._pending = None
            await self.reconciler.apply(generation, assignments, self._fetch)
            failed = [r.deployment for r in self.reconciler.statuses() if r.state == "FAILED"]
            if failed and self._pending is None:  # try failed assignments again, backing off, until a newer state
                log.info("retrying %s in %.0f s", ", ".join(failed), retry)
                await asyncio.sleep(retry)
                retry = min(retry * 2, 60.0)
                if self._pending is None:
                    self._pending = (generation, assignments)

    async def _fetch(self, digest: str, offset: int) -> AsyncIterator[bytes]:
        if self._stub is None:
            raise ConnectionError("no controller link")
        async for chunk in self._stub.FetchArtifact(lpb.FetchArtifactRequest(digest=digest, offset=offset)):
            yield chunk.data

    async def _send_loop(self, call: Any, interval: float, stop: asyncio.Event) -> None:
        sent: dict[str, DeviceSample] = {}
        seq = 0
        self._status_dirty.set()
        while not stop.is_set():
            self._heal()
            if self._status_dirty.is_set():
                self._status_dirty.clear()
                status = lpb.StatusReport(generation=self.reconciler.applied.generation)
                status.instances.extend(self._instances())
                await call.write(lpb.AgentMessage(status=status))
            seq += 1
            batch = lpb.Telemetry(seq=seq)
            for device_id, sample in self.telemetry.snapshot.samples.items():
                message = encode_sample(sample, sent.get(device_id))
                if message is not None:
                    batch.samples.append(message)
                    sent[device_id] = sample
            await call.write(lpb.AgentMessage(telemetry=batch))
            try:
                await asyncio.wait_for(self._status_dirty.wait(), interval)
            except TimeoutError:
                pass
