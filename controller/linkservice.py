"""The controller's side of xpud.v1.AgentLink: one session per node stream, and artifact downloads."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from xpud import __version__
from xpud.proto import identity, link_pb2_grpc
from xpud.proto import link_pb2 as lpb
from xpud.proto.status import NotFound

from .control import CHUNK, Controller
from .pool import NodeState

log = logging.getLogger(__name__)


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
        who = identity.current()
        if who.via == "certificate" and who.name != hello.node:  # a secured pool: the certificate names the node
            refusal = (f"a Hello from {who.actor}'s certificate claimed the node name {hello.node!r}; refused (start "
                       f"that agent with --node {who.name}, or issue a certificate for {hello.node!r} with "
                       f"`xpud certs issue --node {hello.node}`)")
            log.warning("%s", refusal)
            await controller.emit([("NodeRefused", hello.node, refusal)], who.actor)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        session = Session(hello.node)
        node = controller.connect(hello, session)
        yield lpb.ControllerMessage(welcome=lpb.Welcome(
            telemetry_interval_s=controller.interval, lease_s=controller.lease, controller_version=__version__))
        controller.welcomed(node)
        if who.via == "certificate":  # a secured link: the agent takes the pool's tokens on its OIP endpoint too
            controller.token_sessions.add(session)
            yield controller.tokens_message()
        reader = asyncio.create_task(self._read(iterator, node, session))
        try:
            await controller.node_joined(node, hello)
            while True:
                message = await session.outbox.get()
                if message is None:
                    break
                yield message
        finally:
            controller.token_sessions.discard(session)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if node.session is session:
                await controller.node_left(node)

    async def _read(self, iterator: AsyncIterator[lpb.AgentMessage], node: NodeState, session: Session) -> None:
        heard = self.controller.heard
        try:
            async for message in iterator:
                if node.session is not session:
                    break
                heard(node, message)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass
        finally:
            session.close()

    async def FetchArtifact(self, request: lpb.FetchArtifactRequest,
                            context: grpc.aio.ServicerContext) -> AsyncIterator[lpb.ArtifactChunk]:
        try:
            path = await self.controller.artifact(request.digest)
        except NotFound as exc:
            await context.abort(exc.code, str(exc))
            raise
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
