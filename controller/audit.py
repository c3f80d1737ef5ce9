"""The audit log: one JSON line per state-changing admin call (and per refused attempt at one), append-only.

Each line: time (RFC 3339, UTC), actor (``user:alice``, ``token:ci``, ``anonymous``), rpc, target, args (the
request's fields, secrets dropped), code (the gRPC status name) and message. A line is written and flushed
before the call answers; when the file would pass ``max_bytes`` it is rotated (FILE -> FILE.1 -> ... FILE.keep).
A write that fails is logged (once a minute) and never fails the call; a file that cannot be opened at start
stops the controller (`AuditError`).
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from xpud.proto import identity
from xpud.proto.status import StatusTable, status_of

log = logging.getLogger(__name__)
MAX_BYTES = 100 << 20
KEEP = 5
SECRET_FIELDS = ("token", "secret", "password", "key", "data")  # never written (data: model bytes)
ERROR_LOG_INTERVAL = 60.0


class AuditError(RuntimeError):
    """The audit log cannot be opened; the message names the file."""


def _stamp(when: float) -> str:
    return datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def summary(request: Message) -> dict[str, Any]:
    """A request message's fields as JSON-able values, with secret fields dropped."""
    fields = MessageToDict(request, preserving_proto_field_name=True)
    return {k: v for k, v in fields.items() if not any(s in k.lower() for s in SECRET_FIELDS)}


class AuditLog:
    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, keep: int = KEEP,
                 clock: Callable[[], float] = time.time) -> None:
        self.path, self.max_bytes, self.keep, self.clock = Path(path), max_bytes, max(keep, 0), clock
        self._lock = threading.Lock()
        self._last_error = float("-inf")
        self.failures = 0
        self._fd = self._first_open(self.path)
        self._size = os.fstat(self._fd).st_size

    @staticmethod
    def _first_open(path: Path) -> int:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return AuditLog._open(path)
        except OSError as exc:
            raise AuditError(f"cannot open the audit log {str(path)!r}: {exc.strerror} (choose another with "
                             "--audit-log FILE)") from None

    @staticmethod
    def _open(path: Path) -> int:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def reopen(self, path: Path, max_bytes: int, keep: int) -> None:
        """Write to `path` (opened afresh: after a SIGHUP, or a rotation by logrotate) with these limits from now
        on; AuditError, and the old file stays, when it cannot be opened."""
        fd = self._first_open(Path(path))
        with self._lock:
            old, self._fd = self._fd, fd
            self.path, self.max_bytes, self.keep = Path(path), max_bytes, max(keep, 0)
            self._size = os.fstat(fd).st_size
        if old >= 0:
            os.close(old)

    def record(self, rpc: str, target: str, args: Mapping[str, Any], code: str, message: str = "",
               actor: str | None = None) -> None:
        entry = {"time": _stamp(self.clock()), "actor": actor or identity.actor(), "rpc": rpc, "target": target,
                 "args": args, "code": code, "message": message}
        line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            try:
                if self._size and self._size + len(line) > self.max_bytes:
                    self._rotate()
                os.write(self._fd, line)  # one write of a whole line, O_APPEND: lines never interleave
                self._size += len(line)
            except OSError as exc:
                self.failures += 1
                now = time.monotonic()
                if now - self._last_error >= ERROR_LOG_INTERVAL:
                    self._last_error = now
                    log.error("cannot write the audit log %s: %s (%d record(s) lost so far)", self.path,
                              exc.strerror, self.failures)

    def _rotate(self) -> None:
        os.close(self._fd)
        self._fd = -1
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.keep - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._fd = self._open(self.path)
        self._size = 0

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class _Peek:
    """A request stream passed through, remembering the first message's summary and the bytes of `data`."""

    def __init__(self, stream: AsyncIterator[Any]) -> None:
        self.stream = stream.__aiter__()
        self.first: dict[str, Any] | None = None
        self.size = 0

    def __aiter__(self) -> _Peek:
        return self

    async def __anext__(self) -> Any:
        item = await self.stream.__anext__()
        if self.first is None:
            self.first = summary(item)
        self.size += len(getattr(item, "data", b""))
        return item


Describe = Callable[[Any], str]  # request -> the target named in the record


def audited(table: StatusTable, target: Describe) -> Callable[[Callable[..., Awaitable[Any]]],
                                                              Callable[..., Awaitable[Any]]]:
    """Record each call of an admin method (put under `grpc_status`, which maps what it raises) in the
    servicer's ``audit`` log, if it has one."""

    def decorate(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            audit: AuditLog | None = getattr(self, "audit", None)
            if audit is None:
                return await method(self, request, context)
            streamed = not isinstance(request, Message)
            if streamed:
                request = _Peek(request)
            code, message = "OK", ""
            try:
                return await method(self, request, context)
            except asyncio.CancelledError:
                code, message = "CANCELLED", "the client went away"
                raise
            except BaseException as exc:
                code = status_of(exc, table).name if not isinstance(exc, grpc.aio.AbortError) else "ABORTED"
                message = str(exc)
                raise
            finally:
                if streamed:
                    args = {**(request.first or {}), "bytes": request.size}
                    what = args.get("name", "")
                else:
                    args, what = summary(request), target(request)
                audit.record(method.__name__, what, args, code, message)

        return wrapper

    return decorate
