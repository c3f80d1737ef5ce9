"""The controller's side of xpud.v1.AgentLink: one session per node stream, and artifact downloads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from xpud import __version__
from xpud.proto import link_pb2 as lpb
from xpud.proto import link_pb2_grpc

from .control import Controller
from .core import NODE_READY

log = logging.getLogger(__name__)
CHUNK = 1 << 20


class Session:
    """One node's stream: an outbox the controller pushes desired states into."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.outbox: asyncio.Queue[lpb.ControllerMessage | None] = asyncio.Queue()

    def push(self, message: lpb.ControllerMessage) -> None:
        self.outbox.put_nowait(message)

    def close(self) -> None:
        self.outbox.put_nowait(None)


class AgentLinkService(link_pb2_grpc.AgentLinkServicer):
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    async def Connect(self, request_iterator: AsyncIterator[lpb.AgentMessage],
                      context: grpc.aio.ServicerContext) -> AsyncIterator[lpb.ControllerMessage]:
        controller = self.controller
        iterator = request_iterator.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            return
        if first.WhichOneof("kind") != "hello" or not first.hello.node:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message on the link must be a Hello "
                                "naming the node")
        hello = first.hello
        node = controller.pool.node(hello.node)
        if node.session is not None:
            node.session.close()  # a newer stream of the same node replaces the old one
        session = Session(hello.node)
        node.session = session
        controller.pool.hello(node, hello, time.time())
        yield lpb.ControllerMessage(welcome=lpb.Welcome(
            telemetry_interval_s=controller.interval, lease_s=controller.lease, controller_version=__version__))
        # read (and so hear the heartbeat) before the join is written: a slow store must not make it look silent
        node.state = NODE_READY
        controller.routes.node(node)  # what it serves (its Hello's instances) is routable now
        reader = asyncio.create_task(self._read(iterator, node, session))
        try:
            await controller.node_joined(node, hello)
            while True:
                message = await session.outbox.get()
                if message is None:
                    break
                yield message
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if node.session is session:
                await controller.node_left(node)

    async def _read(self, iterator: AsyncIterator[lpb.AgentMessage], node: Any, session: Session) -> None:
        pool = self.controller.pool
        try:
            async for message in iterator:
                if node.session is not session:
                    break
                pool.seen(node, time.time())
                if node.state != NODE_READY:  # a Suspect (or Lost) node that speaks again is back
                    self.controller.node_back(node)
                kind = message.WhichOneof("kind")
                if kind == "telemetry":
                    if pool.telemetry(node, message.telemetry):  # a device's health changed
                        self.controller.changed()
                elif kind == "status":
                    before = {k: v.state for k, v in node.instances.items()}
                    pool.status(node, message.status)
                    self.controller.routes.node(node)  # a replica READY is routed to at once
                    if before != {k: v.state for k, v in node.instances.items()}:
                        self.controller.changed()
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            session.close()

    async def FetchArtifact(self, request: lpb.FetchArtifactRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[lpb.ArtifactChunk]:
        path = await self.controller.db(self.controller.store.artifact_path, request.digest)
        if path is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no artifact with digest {request.digest[:16]}")
        assert path is not None
        size = path.stat().st_size
        if request.offset > size:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset {request.offset} is past the artifact's "
                                f"{size} bytes")
        loop = asyncio.get_running_loop()
        with path.open("rb") as f:
            f.seek(request.offset)
            offset = request.offset
            while True:
                data = await loop.run_in_executor(None, f.read, CHUNK)
                if not data:
                    break
                yield lpb.ArtifactChunk(data=data, offset=offset, total_size=size)
                offset += len(data)
