"""Pieces every xpud OIP servicer shares (the agent's endpoint and the controller's router).

Wire-level only: the stream fan-out of ModelStreamInfer, and polite UNIMPLEMENTED
answers for the Triton extensions xpud does not offer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from .oip import pb

Answer = Callable[[Any], Awaitable[Any]]  # one ModelInferRequest -> its ModelStreamInferResponse, never raises


def stream_error(req: Any, code: str, message: str) -> Any:
    """The stream's way to fail one request: an error_message naming the status, the stream goes on."""
    return pb.ModelStreamInferResponse(error_message=f"{code}: {message}",
                                       infer_response=pb.ModelInferResponse(model_name=req.model_name, id=req.id))


async def stream_each(request_iterator: AsyncIterator[Any], answer: Answer) -> AsyncIterator[Any]:
    """Serve a ModelStreamInfer: requests run concurrently and each answer goes out as it completes."""
    queue: asyncio.Queue[Any] = asyncio.Queue()
    pending: set[asyncio.Task[None]] = set()

    async def one(req: Any) -> None:
        await queue.put(await answer(req))

    async def reader() -> None:
        try:
            async for req in request_iterator:
                task = asyncio.create_task(one(req))
                pending.add(task)
                task.add_done_callback(pending.discard)
            while pending:
                await asyncio.gather(*list(pending))
        finally:  # a request stream that fails (e.g. an undecodable message) ends the call: `await read` raises
            await queue.put(None)

    read = asyncio.create_task(reader())
    try:
        while (item := await queue.get()) is not None:
            yield item
        await read
    finally:
        read.cancel()
        for task in list(pending):
            task.cancel()


class UnsupportedExtensions:
    """Shared-memory, trace and log RPCs answer UNIMPLEMENTED with what to do instead."""

    product = "xpud"
    logs_hint = "use --verbose or the configuration"

    async def _unimplemented(self, what: str, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{what} is not supported by {self.product}: "
                            "send tensors in the request (raw_input_contents)")

    async def SystemSharedMemoryStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unimplemented("system shared memory", context)

    async def SystemSharedMemoryRegister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unimplemented("system shared memory", context)

    async def SystemSharedMemoryUnregister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unimplemented("system shared memory", context)

    async def CudaSharedMemoryStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unimplemented("CUDA shared memory", context)

    async def CudaSharedMemoryRegister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unimplemented("CUDA shared memory", context)

    async def CudaSharedMemoryUnregister(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._unimplemented("CUDA shared memory", context)

    async def TraceSetting(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"trace settings are not supported by {self.product}; "
                            "use /metrics and the logs")

    async def LogSettings(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"log settings are not supported by {self.product}; "
                            f"{self.logs_hint}")
