"""The controller's inference router: Triton's GRPCInferenceService in front of every deployment's replicas.

A client's OIP ``model_name`` is a deployment's name, and every agent serves that deployment under the same name,
so requests are forwarded unchanged to one replica that the routing policy picks (`policy.P2CEwma` unless told
otherwise: load and latency aware, with outlier ejection). An agent that answers UNAVAILABLE (or cannot be
reached) gets its request retried once on another replica; any other error is passed through with the agent's
status code and message. The controller pushes the endpoint table (`routes.RouteTable`) through `Router.update`:
a request costs a dict lookup and the policy's pick.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from xpud.proto.oip import pb, pb_grpc
from xpud.proto.oip_service import UnsupportedExtensions, stream_each, stream_error
from xpud.proto.status import NotFound, StatusError, grpc_status

from .admission import Admission
from .metrics import RouterMetrics
from .policy import Emit, P2CEwma, RouteRequest, RoutingPolicy
from .profiles import Profiles
from .routes import READY, DeploymentRoutes, ReplicaEndpoint, RouteUpdate, for_request
from .stats import VersionStats

log = logging.getLogger(__name__)

SERVER_NAME = "xpud-router"
try:
    VERSION = importlib.metadata.version("xpud")
except importlib.metadata.PackageNotFoundError:  # a source tree that is not installed
    VERSION = "0"
_DURATION = pb.StatisticDuration.DESCRIPTOR
_aborts = grpc_status(logger=log)  # StatusError (the router's own, or an agent's passed through) -> the client
QUEUE_PER_SLOT = 8  # a deployment with a bound queues at most this many requests per slot before shedding


def _add_durations(dst: Any, src: Any) -> None:
    """Add every StatisticDuration field of ``src`` (InferStatistics, InferBatchStatistics, ...) into ``dst``."""
    for field in src.DESCRIPTOR.fields:
        if field.message_type is _DURATION:
            into, add = getattr(dst, field.name), getattr(src, field.name)
            into.count += add.count
            into.ns += add.ns


def merge_statistics(into: pb.ModelStatistics, add: pb.ModelStatistics) -> None:
    """Sum one replica's statistics of a model version into ``into`` (last_inference: the latest)."""
    into.last_inference = max(into.last_inference, add.last_inference)
    into.inference_count += add.inference_count
    into.execution_count += add.execution_count
    _add_durations(into.inference_stats, add.inference_stats)
    batches = {b.batch_size: b for b in into.batch_stats}
    for b in add.batch_stats:
        if b.batch_size not in batches:
            batches[b.batch_size] = into.batch_stats.add(batch_size=b.batch_size)
        _add_durations(batches[b.batch_size], b)
    for key, response in add.response_stats.items():
        _add_durations(into.response_stats[key], response)
    memory = {(m.type, m.id): m for m in into.memory_usage}
    for m in add.memory_usage:
        if (m.type, m.id) in memory:
            memory[(m.type, m.id)].byte_size += m.byte_size
        else:
            memory[(m.type, m.id)] = into.memory_usage.add(type=m.type, id=m.id, byte_size=m.byte_size)


SERVICE = "inference.GRPCInferenceService"
INFER = f"/{SERVICE}/ModelInfer"


class Forwarded:
    """A ModelInfer request as it came: its bytes, forwarded to the agent unchanged (and the agent's reply passed
    back unparsed), and the message parsed once from them for what the router reads (model name, parameters);
    its attributes are the message's."""

    __slots__ = ("data", "message")

    def __init__(self, data: bytes, message: pb.ModelInferRequest) -> None:
        self.data, self.message = data, message

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)


class _DecodeForwarded:
    __name__ = "ModelInferRequest"  # what a bad request's INVALID_ARGUMENT names (proto.decoding)

    def FromString(self, data: bytes) -> Forwarded:  # a message class's name for it
        return Forwarded(data, pb.ModelInferRequest.FromString(data))


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


MODEL_VERSION_TAG = b"\x12"  # ModelInferRequest.model_version: field 2, length-delimited


def pinned(request: Any, version: str) -> Any:
    """`request` naming model version `version`, for a replica whose node serves several versions of the deployment
    (the agent answers an unpinned request with its highest one); a request that names a version itself is left
    as it is. A `Forwarded` request gets the field appended to its bytes: the last value of a field wins."""
    if isinstance(request, Forwarded):
        if request.message.model_version:
            return request
        data = version.encode()
        return Forwarded(request.data + MODEL_VERSION_TAG + _varint(len(data)) + data, request.message)
    field = "model_version" if isinstance(request, pb.ModelInferRequest) else "version"
    if not hasattr(request, field) or getattr(request, field):
        return request
    copy = type(request)()
    copy.CopyFrom(request)
    setattr(copy, field, version)
    return copy


def priority_of(request: pb.ModelInferRequest) -> int:
    """The OIP ``priority`` parameter (1 is the highest; 0 or absent: the deployment's default)."""
    if "priority" not in request.parameters:
        return 0
    p = request.parameters["priority"]
    kind = p.WhichOneof("parameter_choice")
    value = p.int64_param if kind == "int64_param" else p.uint64_param if kind == "uint64_param" else 0
    return max(int(value), 0)


class Router(UnsupportedExtensions, pb_grpc.GRPCInferenceServiceServicer):
    """Serves every deployment under its name by forwarding to the agents that hold a ready replica."""

    product = "the xpud router"
    logs_hint = "use --verbose or the controller's configuration"

    SWEEP_INTERVAL_S = 10.0  # how often channels of endpoints no deployment lists any more are looked for

    def __init__(self, *, policy: RoutingPolicy | None = None, max_message_bytes: int = 64 << 20,
                 forward_timeout_s: float = 30.0, credentials: grpc.ChannelCredentials | None = None,
                 metrics: RouterMetrics | None = None, emit: Emit | None = None,
                 stats: VersionStats | None = None, profiles: Profiles | None = None) -> None:
        """`emit`: where the default policy tells replica ejections and returns (the controller's events);
        `stats`: where each inference answer is counted per deployment version (the controller's live figures);
        `profiles`: told of every ModelInfer forward (the placement profiles)."""
        self.metrics = metrics
        self.stats = stats
        self.profiles = profiles
        self.policy: RoutingPolicy = policy if policy is not None else P2CEwma(emit=emit)
        self.forward_timeout_s = forward_timeout_s
        self.channel_options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self.routes: dict[str, DeploymentRoutes] = {}  # per deployment, as pushed through `update`
        self.credentials = credentials  # the controller's certificate, for agents that take mTLS
        self._tls: dict[str, str] = {}  # endpoints that take mTLS -> the node name their certificate carries
        self._channels: dict[str, tuple[grpc.aio.Channel, pb_grpc.GRPCInferenceServiceStub]] = {}
        self._raw: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}  # per endpoint: ModelInfer, bytes in and out
        self._missing: set[str] = set()  # endpoints unlisted at the last sweep: closed if still unlisted at the next
        self._next_sweep = time.monotonic() + self.SWEEP_INTERVAL_S
        self._closing: dict[asyncio.Task[None], grpc.aio.Channel] = {}  # dropped channels, closing with grace
        self._admission: dict[str, Admission] = {}  # deployments with --max-inflight: their queues

    def update(self, changed: RouteUpdate) -> None:
        """Take the controller's changes to the endpoint table (None: the deployment is gone)."""
        for name, routes in changed.items():
            if routes is None:
                self.routes.pop(name, None)
                self._admit(name, None)
                if self.metrics is not None:
                    self.metrics.forget(name)
            else:
                self.routes[name] = routes
                for r in routes.replicas:
                    wanted = r.node if r.tls else None
                    if self._tls.get(r.address) != wanted:  # new, or it turned TLS on or off: a fresh channel
                        self._drop(r.address)
                        if wanted is not None:
                            self._tls[r.address] = wanted
            self._admit(name, routes)
        self.policy.update(changed)

    def _admit(self, name: str, routes: DeploymentRoutes | None) -> None:
        """Keep the deployment's admission queue in step with its bound and its ready replicas."""
        admission = self._admission.get(name)
        if routes is None or not routes.max_inflight:
            if admission is not None:  # no bound any more: its waiters go on at once
                admission.resize(0)
                del self._admission[name]
            return
        limit = routes.max_inflight * max(len(routes.replicas), 1)
        if admission is None:
            self._admission[name] = Admission(name, limit, QUEUE_PER_SLOT * limit)
        else:
            admission.resize(limit, QUEUE_PER_SLOT * limit)

    def renew(self, credentials: grpc.ChannelCredentials) -> None:
        """Present `credentials` to agents from now on (a reload renewed the controller's certificate): TLS
        channels are made again; calls in flight finish on the old ones."""
        self.credentials = credentials
        for endpoint in [e for e in self._channels if e in self._tls]:
            node = self._tls[endpoint]
            self._drop(endpoint)
            self._tls[endpoint] = node

    # -- channels ---------------------------------------------------------------------------
    def _stub(self, endpoint: str) -> pb_grpc.GRPCInferenceServiceStub:
        entry = self._channels.get(endpoint)
        if entry is None:
            node = self._tls.get(endpoint)
            if node is None:
                channel = grpc.aio.insecure_channel(endpoint, options=self.channel_options)
            elif self.credentials is None:
                raise StatusError(grpc.StatusCode.UNAVAILABLE, f"agent {endpoint} ({node}) takes mTLS only and this "
                                  "controller has no certificate to present: start it with --tls-ca, --tls-cert "
                                  "and --tls-key")
            else:  # the agent's certificate names its node, whatever address it is reached at
                channel = grpc.aio.secure_channel(endpoint, self.credentials, options=[
                    *self.channel_options, ("grpc.ssl_target_name_override", node)])
            entry = self._channels[endpoint] = (channel, pb_grpc.GRPCInferenceServiceStub(channel))
        return entry[1]

    def _raw_infer(self, endpoint: str) -> grpc.aio.UnaryUnaryMultiCallable:
        call = self._raw.get(endpoint)
        if call is None:
            self._stub(endpoint)
            call = self._raw[endpoint] = self._channels[endpoint][0].unary_unary(INFER)
        return call

    def _listed(self) -> set[str]:
        return {r.address for routes in self.routes.values() for r in routes.replicas}

    def _drop(self, endpoint: str) -> None:
        entry = self._channels.pop(endpoint, None)
        self._raw.pop(endpoint, None)
        self._tls.pop(endpoint, None)
        if entry is not None:  # in-flight calls get their forward timeout to finish
            task = asyncio.get_running_loop().create_task(entry[0].close(grace=self.forward_timeout_s))
            self._closing[task] = entry[0]
            task.add_done_callback(lambda done: self._closing.pop(done, None))

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.SWEEP_INTERVAL_S
        listed = self._listed()
        for endpoint in [e for e in self._channels if e not in listed]:
            if endpoint in self._missing:  # gone for two sweeps in a row: gone for good
                self._drop(endpoint)
        self._missing = {e for e in self._channels if e not in listed}

    async def prune(self) -> None:
        """Close the channels of endpoints no deployment lists now (the periodic sweep waits for two sweeps)."""
        listed = self._listed()
        for endpoint in [e for e in self._channels if e not in listed]:
            self._drop(endpoint)
        self._missing.clear()
        await asyncio.sleep(0)

    async def close(self) -> None:
        """Close every cached channel."""
        channels = [channel for channel, _ in self._channels.values()]
        self._channels.clear()
        self._raw.clear()
        for task, channel in list(self._closing.items()):  # no more grace: close them now
            task.cancel()
            channels.append(channel)
        await asyncio.gather(*self._closing, return_exceptions=True)
        await asyncio.gather(*(channel.close() for channel in channels), return_exceptions=True)

    # -- routing ----------------------------------------------------------------------------
    def _ready(self, deployment: str) -> DeploymentRoutes:
        """The routes of ``deployment``, with a ready replica; NOT_FOUND when it is unknown, else UNAVAILABLE."""
        if not deployment:
            raise NotFound("a model name is needed: set the request's model name to a deployment's name "
                           "(RepositoryIndex lists them)")
        self._maybe_sweep()
        routes = self.routes.get(deployment)
        if routes is not None and routes.replicas:
            return routes
        if routes is None:
            names = ", ".join(sorted(self.routes)) or "none"
            raise NotFound(f"unknown deployment {deployment!r}; deployments: {names}")
        reason = routes.reason or "no replica is ready yet"
        raise StatusError(grpc.StatusCode.UNAVAILABLE, f"deployment {deployment!r} has no ready replica ({reason})")

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        if remaining is None:
            return self.forward_timeout_s
        return max(0.0, min(remaining, self.forward_timeout_s))

    async def _call(self, endpoint: str, method: str, request: Any, timeout: float) -> Any:
        """One RPC to one agent; a connection that fails (or was closed under us) reads as UNAVAILABLE. A
        `Forwarded` request goes as its bytes, and its reply comes back as bytes."""
        try:
            if isinstance(request, Forwarded):
                return await self._raw_infer(endpoint)(request.data, timeout=timeout)
            return await getattr(self._stub(endpoint), method)(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            raise StatusError(exc.code(), exc.details() or exc.code().name) from None
        except grpc.aio.UsageError as exc:
            raise StatusError(grpc.StatusCode.UNAVAILABLE, f"agent {endpoint}: {exc}") from None

    async def _attempt(self, route: RouteRequest, replica: ReplicaEndpoint, context: grpc.aio.ServicerContext,
                       served: list[ReplicaEndpoint] | None = None, pin: bool = False) -> Any:
        """One forward to ``replica``, its outcome told to the policy (and the replica to ``served``); `pin`: the
        request names the replica's version (a split deployment's node may have loaded another before its report
        reached the router)."""
        if served is not None:
            served.append(replica)
        profiles = self.profiles if route.method == "ModelInfer" else None
        if profiles is not None:
            profiles.begin(replica)
        started, code = time.perf_counter(), grpc.StatusCode.CANCELLED  # unless it ends with an answer
        try:
            message = pinned(route.message, replica.version) if replica.pinned or pin else route.message
            reply = await self._call(replica.address, route.method, message, self._timeout(context))
            code = grpc.StatusCode.OK
            return reply
        except StatusError as exc:
            code = exc.code
            raise
        finally:
            elapsed = time.perf_counter() - started
            self.policy.done(route, replica, code, elapsed)
            if profiles is not None:
                profiles.end(replica, code, elapsed)

    async def _forward(self, deployment: str, method: str, request: Any, context: grpc.aio.ServicerContext,
                       served: list[ReplicaEndpoint] | None = None) -> Any:
        """Forward to the replica the policy picks; on UNAVAILABLE retry once on the one it picks next, if any."""
        ready = self._ready(deployment)
        routes = for_request(ready, request)  # a deployment split across versions: one of them
        route = RouteRequest(deployment, method, request)
        pin = ready.split is not None and method == "ModelInfer"
        first = self.policy.choose(route, routes)
        if first is None:  # a policy that found none fit among the ready ones
            raise StatusError(grpc.StatusCode.UNAVAILABLE, f"deployment {deployment!r} has no replica to take "
                              f"this request ({len(routes.replicas)} ready)")
        try:
            return await self._attempt(route, first, context, served, pin)
        except StatusError as exc:
            if exc.code is not grpc.StatusCode.UNAVAILABLE:
                raise
            second = self.policy.choose(route, routes, (first,))
            if second is None:
                raise
            log.info("%s of %r: agent %s unavailable (%s); retrying on another replica",
                     method, deployment, first.address, exc.message)
        return await self._attempt(route, second, context, served, pin)

    async def _statistics(
        self, deployment: str, version: str, context: grpc.aio.ServicerContext
    ) -> list[pb.ModelStatistics]:
        """Every ready replica's statistics of ``deployment``, summed per version; unreachable replicas skipped."""
        # once per agent: one serving several versions lists a replica per version, and answers for all of them
        endpoints = list(dict.fromkeys(r.address for r in self._ready(deployment).replicas))
        request = pb.ModelStatisticsRequest(name=deployment, version=version)
        timeout = self._timeout(context)
        results = await asyncio.gather(
            *(self._call(e, "ModelStatistics", request, timeout) for e in endpoints), return_exceptions=True
        )
        merged: dict[tuple[str, str], pb.ModelStatistics] = {}
        failures: list[StatusError] = []
        for endpoint, result in zip(endpoints, results, strict=True):
            if isinstance(result, StatusError):
                if result.code is not grpc.StatusCode.UNAVAILABLE:
                    raise result
                log.info("statistics of %r: agent %s unavailable (%s)", deployment, endpoint, result.message)
                failures.append(result)
                continue
            if isinstance(result, BaseException):
                raise result
            for stats in result.model_stats:
                key = (stats.name, stats.version)
                if key not in merged:
                    merged[key] = pb.ModelStatistics(name=stats.name, version=stats.version)
                merge_statistics(merged[key], stats)
        if failures and len(failures) == len(endpoints):
            raise failures[0]
        return [merged[key] for key in sorted(merged)]

    # -- server ---------------------------------------------------------------------------
    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=VERSION, extensions=["model_repository", "statistics", "binary_tensor_data"]
        )

    # -- models ---------------------------------------------------------------------------
    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        routes = self.routes.get(request.name)
        return pb.ModelReadyResponse(ready=routes is not None and bool(routes.replicas))

    @_aborts
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._forward(request.name, "ModelMetadata", request, context)

    @_aborts
    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._forward(request.name, "ModelConfig", request, context)

    @_aborts
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext) -> Any:
        if request.name:
            stats = await self._statistics(request.name, request.version, context)
            return pb.ModelStatisticsResponse(model_stats=stats)
        names = sorted(name for name, routes in self.routes.items() if routes.replicas)
        per = await asyncio.gather(*(self._statistics(name, "", context) for name in names), return_exceptions=True)
        out = pb.ModelStatisticsResponse()
        for name, result in zip(names, per, strict=True):
            if isinstance(result, BaseException):  # one deployment's trouble does not hide the others
                log.info("statistics of %r skipped: %s", name, result)
                continue
            out.model_stats.extend(result)
        return out

    @_aborts
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext) -> Any:
        out = pb.RepositoryIndexResponse()
        for name in sorted(self.routes):
            routes = self.routes[name]
            if not request.ready or routes.state == READY:
                out.models.add(name=name, state=routes.state, reason=routes.reason)
        return out

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "models are not loaded through the router: "
                            f"use `xpud deploy` to deploy {request.model_name or 'a model'}")

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "models are not unloaded through the router: "
                            f"use `xpud undeploy` to remove {request.model_name or 'a deployment'}")

    # -- inference --------------------------------------------------------------------------
    async def _admitted(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext,
                        served: list[ReplicaEndpoint] | None = None) -> Any:
        """ModelInfer forwarded through the deployment's admission queue when it has a bound (--max-inflight):
        beyond it the request waits by its priority until its deadline, or is shed."""
        admission = self._admission.get(request.model_name)
        if admission is None:
            return await self._forward(request.model_name, "ModelInfer", request, context, served)
        await admission.acquire(priority_of(request), context.time_remaining())
        try:
            return await self._forward(request.model_name, "ModelInfer", request, context, served)
        finally:
            admission.release()

    async def _infer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        """Forward one inference request, counted in ``metrics`` with the status code the client gets."""
        if self.metrics is None and self.stats is None:
            return await self._admitted(request, context)
        started, code = time.perf_counter(), grpc.StatusCode.INTERNAL  # unless it ends otherwise
        served: list[ReplicaEndpoint] = []  # each replica tried: the last one answered
        try:
            reply = await self._admitted(request, context, served)
            code = grpc.StatusCode.OK
            return reply
        except StatusError as exc:
            code = exc.code
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            # a name no deployment has is counted as "": clients cannot grow the label set at will
            model = request.model_name if request.model_name in self.routes else ""
            seconds, last = time.perf_counter() - started, served[-1] if served and model else None
            version = last.version if last is not None else ""
            if self.metrics is not None:
                self.metrics.done(model, code, seconds, version, last.model if last is not None else
                                  self._model_name(model))
            self._record(model, version, code, seconds)

    def _model_name(self, deployment: str) -> str:
        """The model a deployment's replicas serve, for an answer no replica gave ("" with none ready)."""
        routes = self.routes.get(deployment)
        return routes.replicas[0].model if routes is not None and routes.replicas else ""

    def _record(self, deployment: str, version: str, code: grpc.StatusCode, seconds: float) -> None:
        """Count an answer in the version's live figures; one no replica gave (no version) is not a version's."""
        if self.stats is not None and version:
            self.stats.record(deployment, version, code is grpc.StatusCode.OK, seconds)

    @_aborts
    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        return await self._infer(request, context)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request is forwarded as a ModelInfer, concurrently; answers (or errors) go out as they complete."""

        async def answer(req: pb.ModelInferRequest) -> Any:
            try:
                reply = await self._infer(req, context)
                return pb.ModelStreamInferResponse(infer_response=reply)
            except StatusError as exc:
                return stream_error(req, exc.code.name, exc.message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug of ours: answer this request, keep the stream going
                log.exception("stream inference of %r failed", req.model_name)
                return stream_error(req, "INTERNAL", f"{type(exc).__name__}: {exc}")

        async for item in stream_each(request_iterator, answer):
            yield item


class _Handlers:
    """Stands for a server to the generated registration: keeps the handlers it is given, by method name."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers.update(handlers)


def add_router(server: grpc.aio.Server, router: Router) -> None:
    """Register the router as the server's inference.GRPCInferenceService; ModelInfer as `Forwarded` requests
    and bytes replies (parsed once, never serialized again)."""
    kept = _Handlers()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(router, kept)
    handlers = {**kept.handlers, "ModelInfer": grpc.unary_unary_rpc_method_handler(
        router.ModelInfer, request_deserializer=_DecodeForwarded().FromString)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
