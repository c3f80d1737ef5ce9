"""The agent's Open Inference Protocol endpoint: Triton's GRPCInferenceService over grpc.aio, plus gRPC health.

Thin servicer: each RPC converts, calls the model manager or the inference
handler, and converts back. Domain errors become gRPC status codes in one place
(``CODES``, through proto.status), each with a message that says what to fix.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from xpud import __version__
from xpud.proto.auth import Authorize, Rules, TokenCheck
from xpud.proto.decoding import interceptors
from xpud.proto.oip import SERVICE_NAME, TensorError, config_to_triton, pb, pb_grpc
from xpud.proto.oip_service import UnsupportedExtensions, stream_each, stream_error
from xpud.proto.status import StatusTable, grpc_status, status_of, unmapped

from .batcher import BatcherClosed, QueueFull, QueueTimeout
from .inference import InvalidRequest, infer
from .manager import ModelManager, ModelNotFound, ModelState, ModelUnavailable
from .repository import ModelConfigError
from .runtime import RunFailed, SessionError

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE = 64 * 1024 * 1024  # a 1x3x1024x1024 FP32 tensor is 12 MiB
EXTENSIONS = ["model_repository", "schedule_policy", "model_configuration", "statistics", "binary_tensor_data"]

# The serving core's errors -> gRPC status (proto.status maps them, once, for every RPC)
CODES: StatusTable = (
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (ModelUnavailable, grpc.StatusCode.UNAVAILABLE),
    (RunFailed, grpc.StatusCode.INTERNAL),  # the device failed the run (as Triton answers): logged by the manager
    (BatcherClosed, grpc.StatusCode.UNAVAILABLE),
    (QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (QueueTimeout, grpc.StatusCode.DEADLINE_EXCEEDED),
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (TensorError, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (SessionError, grpc.StatusCode.INVALID_ARGUMENT),
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),  # e.g. a priority level out of range
)
_status = grpc_status(CODES, log)


def _named(name: str) -> str:
    """A per-model RPC needs a model name: an empty one is NOT_FOUND, with what to send."""
    if not name:
        raise ModelNotFound("a model name is needed: set the request's model name (RepositoryIndex lists them)")
    return name


class InferenceServicer(UnsupportedExtensions, pb_grpc.GRPCInferenceServiceServicer):
    logs_hint = "use --verbose or the agent's configuration"

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        self.ready = False

    # -- server -------------------------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.ready)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name="xpud", version=__version__, extensions=EXTENSIONS)

    # -- models -------------------------------------------------------------------------
    @_status
    async def ModelReady(self, request: Any, context: Any) -> Any:
        try:
            self.manager.get(request.name, request.version)
        except (ModelUnavailable, ModelNotFound):  # as Triton and the router: not ready, not an error
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=True)

    @_status
    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        mv = self.manager.get(_named(request.name), request.version)
        config = mv.config
        lead = [-1] if config.max_batch_size > 0 else []

        def meta(t: Any) -> Any:
            return pb.ModelMetadataResponse.TensorMetadata(
                name=t.name, datatype=config_to_triton(t.data_type), shape=[*lead, *t.dims]
            )

        return pb.ModelMetadataResponse(
            name=mv.name,
            versions=[str(v) for v in sorted(self.manager.models.get(mv.name, {}))],
            platform=config.platform,
            inputs=[meta(t) for t in config.input],
            outputs=[meta(t) for t in config.output],
        )

    @_status
    async def ModelConfig(self, request: Any, context: Any) -> Any:
        return pb.ModelConfigResponse(config=self.manager.get(_named(request.name), request.version).config)

    @_status
    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        if request.name:
            if request.name not in self.manager.models:
                self.manager.get(request.name, request.version)  # raises the right error
            versions = self.manager.models[request.name]
            if request.version:
                chosen = [self.manager.get(request.name, request.version)]
            else:
                chosen = [versions[v] for v in sorted(versions)]
        else:
            chosen = [mv for name in sorted(self.manager.models) for _, mv in sorted(self.manager.models[name].items())]
        return pb.ModelStatisticsResponse(model_stats=[mv.stats.proto() for mv in chosen])

    @_status
    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        out = pb.RepositoryIndexResponse()
        for name in self.manager.names():
            versions = self.manager.models.get(name)
            if versions:
                for v, mv in sorted(versions.items()):
                    if not request.ready or mv.state is ModelState.READY:
                        out.models.add(name=name, version=str(v), state=mv.state.value)
            elif not request.ready:
                reason = self.manager.failures.get(name, "")
                out.models.add(name=name, state=ModelState.UNAVAILABLE.value, reason=reason or "not loaded")
        return out

    @_status
    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        if request.parameters:
            raise InvalidRequest("RepositoryModelLoad parameters (config/file overrides) are not supported; "
                                 "edit the model repository instead")
        await self.manager.load(_named(request.model_name))
        return pb.RepositoryModelLoadResponse()

    @_status
    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        await self.manager.unload(_named(request.model_name))
        return pb.RepositoryModelUnloadResponse()

    # -- inference ----------------------------------------------------------------------
    @_status
    async def ModelInfer(self, request: Any, context: Any) -> Any:
        _named(request.model_name)
        return await infer(self.manager, request)

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
        """Requests are served concurrently; each answer (or error) is sent as it completes."""

        async def answer(req: Any) -> Any:
            try:
                _named(req.model_name)
                return pb.ModelStreamInferResponse(infer_response=await infer(self.manager, req))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                code = status_of(exc, CODES)
                if unmapped(exc, CODES):
                    log.exception("stream inference failed")
                return stream_error(req, code.name, str(exc))

        async for item in stream_each(request_iterator, answer):
            yield item


class InferenceServer:
    """The grpc.aio server: OIP + health on one port."""

    def __init__(self, manager: ModelManager, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE,
                 credentials: grpc.ServerCredentials | None = None, rules: Rules | None = None,
                 tokens: TokenCheck | None = None) -> None:
        """With `credentials` (mTLS) and `rules` the endpoint checks each caller's certificate (or bearer token,
        with `tokens`) and role."""
        self.manager = manager
        self.credentials = credentials
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        checks = [Authorize(rules, tokens)] if rules is not None else []
        self.server = grpc.aio.server(options=options, interceptors=[*checks, *interceptors()])
        self.servicer = InferenceServicer(manager)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, self.server)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        try:
            address = f"{host}:{port}"
            self.port = self.server.add_secure_port(address, self.credentials) if self.credentials is not None \
                else self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {host}:{port}: {exc}") from None
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port}: address in use or not available")
        await self.server.start()
        return self.port

    def add_token_port(self, host: str, port: int, credentials: grpc.ServerCredentials) -> int:
        """A second, TLS-only port for clients with a token and no certificate (before `start`)."""
        try:
            bound = self.server.add_secure_port(f"{host}:{port}", credentials)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {host}:{port} for tokens: {exc}") from None
        if bound == 0:
            raise OSError(f"cannot listen on {host}:{port} for tokens: address in use or not available")
        return bound

    async def set_ready(self, ready: bool) -> None:
        self.servicer.ready = ready
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):
            result = self.health.set(service, status)
            if asyncio.iscoroutine(result):
                await result

    async def stop(self, grace: float = 5.0) -> None:
        await self.set_ready(False)
        await self.server.stop(grace)
