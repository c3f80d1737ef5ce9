"""Domain errors to gRPC status, in one place for every servicer (agent OIP, router, admin, link).

A core raises `StatusError` (or a subclass) when it knows the status a client should get, or its own exception
types, which a servicer maps with a table passed to `grpc_status`. Anything unmapped is a bug of ours: INTERNAL,
logged once with its traceback, and the client gets the exception's type and message.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc

T = TypeVar("T")
StatusTable = Sequence[tuple[type[BaseException], grpc.StatusCode]]


class StatusError(Exception):
    """An outcome to hand back to the client as is: a gRPC status code and a message that says what to fix."""

    code = grpc.StatusCode.UNKNOWN

    def __init__(self, code: grpc.StatusCode | None, message: str) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message


class InvalidArgument(StatusError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class NotFound(StatusError):
    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


class FailedPrecondition(StatusError):
    """The request is well formed but the state it acts on does not allow it (say what to do first)."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


def status_of(exc: BaseException, table: StatusTable = ()) -> grpc.StatusCode:
    """The status for an exception: its own (`StatusError`), else the first matching row of `table`, else
    INTERNAL."""
    if isinstance(exc, StatusError):
        return exc.code
    for kind, code in table:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def unmapped(exc: BaseException, table: StatusTable = ()) -> bool:
    """A bug of ours: no status of its own and no row of `table` (an INTERNAL the table names, such as a model
    run failing on its device, is an outcome, not a bug: no traceback)."""
    return not isinstance(exc, StatusError) and not any(isinstance(exc, kind) for kind, _ in table)


def grpc_status(table: StatusTable = (), logger: logging.Logger | None = None
                ) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Decorate a unary (or stream-unary) servicer method: an exception it raises ends the call with
    `status_of(exc, table)` and the exception's message."""
    log = logger or logging.getLogger(__name__)

    def decorate(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(method)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
            try:
                return await method(self, request, context)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):  # context.abort was called inside: already answered
                    raise
                code = status_of(exc, table)
                if unmapped(exc, table):
                    log.exception("%s failed", method.__name__)
                await context.abort(code, str(exc) or type(exc).__name__)
                raise  # unreachable: abort raises

        return wrapper

    return decorate
