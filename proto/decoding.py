"""Requests that do not decode end with INVALID_ARGUMENT and a rate-limited log line, on every xpud gRPC server.

grpc decodes a request before the servicer runs; a message that fails to parse ends the call with UNKNOWN and a
traceback in the log, once per request. `DecodeRequests`, installed as a server interceptor, hands grpc a handler
that takes raw bytes and decodes them itself: a bad message gets INVALID_ARGUMENT naming the method and the error,
and each method logs at most one line per interval with the count of bad requests since its last line.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

log = logging.getLogger(__name__)

LOG_INTERVAL = 10.0  # seconds between two log lines about one method's bad requests

Deserializer = Callable[[bytes], Any]


class BadRequestLog:
    """Counts undecodable requests per method; logs the first at once, then at most one line per interval."""

    def __init__(self, interval: float = LOG_INTERVAL, clock: Callable[[], float] = time.monotonic,
                 logger: logging.Logger | None = None) -> None:
        self.interval = interval
        self.clock = clock
        self.log = logger or log
        self._count: dict[str, int] = {}  # bad requests since the method's last line
        self._last: dict[str, float] = {}  # when the method's last line was written
        self.total = 0

    def note(self, method: str, error: str) -> None:
        self.total += 1
        count = self._count.get(method, 0) + 1
        now = self.clock()
        last = self._last.get(method)
        if last is not None and now - last < self.interval:
            self._count[method] = count
            return
        self._count[method] = 0
        self._last[method] = now
        since = f"in the last {now - last:.0f} s" if last is not None else "(the first)"
        self.log.warning("%d undecodable request(s) to %s %s; latest: %s", count, method, since, error)


def _message(method: str, deserializer: Deserializer, exc: BaseException) -> str:
    owner = getattr(deserializer, "__self__", None)  # Message.FromString is bound to the message class
    kind = getattr(owner, "__name__", None) or "message"
    return f"request to {method} is not a valid {kind}: {type(exc).__name__}: {exc}"


async def stream_of(result: Any) -> AsyncIterator[Any]:
    """What a streaming behaviour yields: an async generator's items, or nothing for one that writes with
    context.write (a coroutine)."""
    if inspect.isasyncgen(result):
        async for item in result:
            yield item
    else:
        await result


class WrapHandlers(grpc.aio.ServerInterceptor):
    """An interceptor that replaces each method's handler with `wrap(method, handler)`, once per method
    (handlers are fixed once a server starts)."""

    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler | None] = {}

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        raise NotImplementedError

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        try:
            return self._handlers[method]
        except KeyError:
            pass
        handler = await continuation(handler_call_details)
        wrapped = self.wrap(method, handler) if handler is not None else None
        self._handlers[method] = wrapped
        return wrapped


class DecodeRequests(WrapHandlers):
    """Wrap every method's handler so that it decodes its own requests (see the module's docstring)."""

    def __init__(self, bad: BadRequestLog | None = None) -> None:
        super().__init__()
        self.bad = bad or BadRequestLog()

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """An equivalent handler that receives raw bytes (no request_deserializer) and decodes them itself."""
        decode = handler.request_deserializer
        if decode is None:
            return handler
        serialize = handler.response_serializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary_unary(method, decode, handler.unary_unary),
                                                       response_serializer=serialize)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._unary_stream(method, decode, handler.unary_stream),
                                                        response_serializer=serialize)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._stream_unary(method, decode, handler.stream_unary),
                                                        response_serializer=serialize)
        return grpc.stream_stream_rpc_method_handler(self._stream_stream(method, decode, handler.stream_stream),
                                                     response_serializer=serialize)

    async def _reject(self, method: str, decode: Deserializer, exc: Exception,
                      context: grpc.aio.ServicerContext) -> None:
        message = _message(method, decode, exc)
        self.bad.note(method, message)
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

    def _decoded(self, method: str, decode: Deserializer, raw: AsyncIterator[bytes],
                 context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        """The request stream, each message decoded as it is read; a bad one ends the call (AbortError)."""

        async def messages() -> AsyncIterator[Any]:
            async for data in raw:
                try:
                    request = decode(data)
                except Exception as exc:
                    await self._reject(method, decode, exc, context)
                yield request

        return messages()

    def _unary_unary(self, method: str, decode: Deserializer, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def call(data: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                request = decode(data)
            except Exception as exc:
                await self._reject(method, decode, exc, context)
            return await behavior(request, context)

        return call

    def _unary_stream(self, method: str, decode: Deserializer, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def call(data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                request = decode(data)
            except Exception as exc:
                await self._reject(method, decode, exc, context)
            async for item in stream_of(behavior(request, context)):
                yield item

        return call

    def _stream_unary(self, method: str, decode: Deserializer, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def call(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
            return await behavior(self._decoded(method, decode, raw, context), context)

        return call

    def _stream_stream(self, method: str, decode: Deserializer, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def call(raw: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for item in stream_of(behavior(self._decoded(method, decode, raw, context), context)):
                yield item

        return call


def interceptors() -> list[grpc.aio.ServerInterceptor]:
    """What every xpud gRPC server installs: `grpc.aio.server(interceptors=interceptors(), ...)`."""
    return [DecodeRequests()]
