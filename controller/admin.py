"""xpud.v1.Admin: the operator's API. Validates, writes the store, then answers (nothing is lost on a crash)."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc

from xpud.proto import admin_pb2 as apb
from xpud.proto import admin_pb2_grpc

from .control import Controller
from .core import DEVICE_KINDS, STRATEGIES, DeploymentSpec
from .store import Conflict, EventRecord, StoreError

NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
T = TypeVar("T")


class AdminError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def _errors(method: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await method(self, request, context)
        except AdminError as exc:
            await context.abort(exc.code, str(exc))
        except Conflict as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except StoreError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        raise AssertionError("unreachable")

    return wrapper


def check_name(kind: str, name: str) -> None:
    if not NAME.match(name):
        raise AdminError(grpc.StatusCode.INVALID_ARGUMENT,
                         f"{kind} name {name!r} is not valid: use 1-63 lowercase letters, digits, '-', '_', '.', "
                         "starting and ending with a letter or digit")


def event_proto(e: EventRecord) -> apb.Event:
    return apb.Event(seq=e.seq, time=e.when, kind=e.kind, subject=e.subject, message=e.message)


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, controller: Controller) -> None:
        self.c = controller

    # -- nodes and pool -------------------------------------------------------------------------
    def _node_info(self, n: Any) -> apb.NodeInfo:
        return apb.NodeInfo(name=n.name, state=n.state, cordoned=n.cordoned, labels=n.labels, zone=n.zone,
                            agent_version=n.agent_version, inference_endpoint=n.endpoint,
                            generation_desired=self.c.generations.get(n.name, 0),
                            generation_observed=n.generation_observed, last_seen=n.last_seen_wall,
                            devices=len(n.devices), execution_providers=n.providers)

    @_errors
    async def ListNodes(self, request: Any, context: Any) -> apb.ListNodesResponse:
        return apb.ListNodesResponse(nodes=[self._node_info(n) for n in sorted(self.c.pool.nodes.values(),
                                                                               key=lambda n: n.name)])

    @_errors
    async def GetPool(self, request: Any, context: Any) -> apb.GetPoolResponse:
        out = apb.GetPoolResponse()
        placed: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for name, replicas in self.c.placement.items():
            for r in replicas:
                placed.setdefault((r.node, r.device), []).append((name, r.memory))
        for n in sorted(self.c.pool.nodes.values(), key=lambda n: n.name):
            for d in n.devices.values():
                here = placed.get((n.name, d.id), [])
                item = out.devices.add(node=n.name, device=d, memory_allocated=sum(m for _, m in here),
                                       replicas=sorted(name for name, _ in here), node_state=n.state)
                if d.id in n.samples:
                    item.sample.CopyFrom(n.samples[d.id])
        return out

    @_errors
    async def SetCordon(self, request: apb.SetCordonRequest, context: Any) -> apb.NodeInfo:
        node = self.c.pool.nodes.get(request.node)
        if node is None:
            known = ", ".join(sorted(self.c.pool.nodes)) or "none"
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"unknown node {request.node!r}; nodes: {known}")
        await self.c.db(self.c.store.set_cordon, node.name, request.cordoned)
        node.cordoned = request.cordoned
        if request.cordoned and request.drain:
            self.c.draining.add(node.name)
        elif not request.cordoned:
            self.c.draining.discard(node.name)
        what = "drained" if request.cordoned and request.drain else "cordoned" if request.cordoned else "uncordoned"
        await self.c.reconcile_now([(what.capitalize(), node.name, f"node {what} by an operator")])
        return self._node_info(node)

    # -- models ---------------------------------------------------------------------------------
    @_errors
    async def PushModel(self, request_iterator: AsyncIterator[apb.PushModelChunk], context: Any) -> apb.ModelInfo:
        first: apb.PushModelChunk | None = None
        size = 0
        # beside the artifacts, named like the store's own temp files: a crash leaves nothing the store keeps
        fd, tmp_name = tempfile.mkstemp(prefix=".tmp-push-", dir=self.c.store.artifacts_dir)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                async for chunk in request_iterator:
                    if first is None:
                        first = chunk
                        check_name("model", chunk.name)
                        if chunk.version and not re.fullmatch(r"[0-9]{1,9}", chunk.version):
                            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT,
                                             f"model version {chunk.version!r} must be a whole number (e.g. 1, 2)")
                    f.write(chunk.data)
                    size += len(chunk.data)
            if first is None or size == 0:
                raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, "no model bytes were sent")
            with tmp.open("rb") as src:
                head = src.read(1)
            if head != b"\x08":  # an ONNX ModelProto starts with its ir_version field
                raise AdminError(grpc.StatusCode.INVALID_ARGUMENT,
                                 f"{first.filename or 'the file'} is not an ONNX model (.onnx) file")

            def store_it() -> Any:
                with tmp.open("rb") as data:
                    digest, length = self.c.store.put_artifact(iter(lambda: data.read(1 << 20), b""))
                return self.c.store.add_model(first.name, first.version or None, digest, length,
                                              first.filename or "model.onnx")

            record = await self.c.db(store_it)
            self.c.models_changed()
        finally:
            tmp.unlink(missing_ok=True)
        await self.c.event("ModelPushed", record.name, f"version {record.version}, {record.size} bytes, "
                           f"sha256 {record.digest[:12]}")
        self.c.changed()
        return apb.ModelInfo(name=record.name, version=record.version, digest=record.digest,
                             size_bytes=record.size, created=record.created)

    @_errors
    async def ListModels(self, request: Any, context: Any) -> apb.ListModelsResponse:
        return apb.ListModelsResponse(models=[
            apb.ModelInfo(name=m.name, version=m.version, digest=m.digest, size_bytes=m.size, created=m.created)
            for m in await self.c.db(self.c.store.models)
        ])

    # -- deployments ----------------------------------------------------------------------------
    async def _spec(self, d: apb.Deployment) -> DeploymentSpec:
        check_name("deployment", d.name)
        if not d.model:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, "a deployment needs a model (--model NAME[:VERSION])")
        model = (await self.c.catalog((d.model, d.version))).find(d.model, d.version)  # read again before a no
        if model is None:
            known = sorted({f"{m.name}:{m.version}" for m in await self.c.db(self.c.store.models)})
            what = f"{d.model}:{d.version}" if d.version else d.model
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"unknown model {what!r}; push it first with `xpud models "
                             f"push FILE --name {d.model}` (models: {', '.join(known) or 'none'})")
        device = d.device or "any"
        if device not in DEVICE_KINDS:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, f"device {device!r} must be one of gpu, cpu, any")
        strategy = d.strategy or "binpack"
        if strategy not in STRATEGIES:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, f"strategy {strategy!r} must be binpack or spread")
        if d.replicas > 1000:
            raise AdminError(grpc.StatusCode.INVALID_ARGUMENT, f"replicas {d.replicas} is more than 1000")
        return DeploymentSpec(name=d.name, model=d.model, version=d.version, replicas=d.replicas or 1,
                              memory_bytes=d.memory_bytes, device=device, priority=d.priority,
                              labels=dict(d.labels), zone=d.zone, strategy=strategy, max_batch_size=d.max_batch_size)

    @_errors
    async def CreateDeployment(self, request: apb.Deployment, context: Any) -> apb.DeploymentStatus:
        return await self._applied(await self._spec(request), "DeploymentCreated", create=True)

    @_errors
    async def ApplyDeployment(self, request: apb.Deployment, context: Any) -> apb.DeploymentStatus:
        return await self._applied(await self._spec(request), "DeploymentApplied")

    async def _applied(self, spec: DeploymentSpec, kind: str, create: bool = False) -> apb.DeploymentStatus:
        """Written in the scheduling pass's transaction, with its placement: one fsync before the answer."""
        what = f"model {spec.model}{':' + spec.version if spec.version else ''}, {spec.replicas} replica(s) on " \
               f"{spec.device}"
        await self.c.reconcile_now([(kind, spec.name, what)], apply=spec, create=create)
        return self.c.status(spec.name)

    @_errors
    async def ListDeployments(self, request: Any, context: Any) -> apb.ListDeploymentsResponse:
        return apb.ListDeploymentsResponse(deployments=[self.c.status(n) for n in sorted(self.c.specs)])

    @_errors
    async def DeleteDeployment(self, request: apb.DeleteDeploymentRequest, context: Any) -> Any:
        if request.name not in self.c.specs:
            raise AdminError(grpc.StatusCode.NOT_FOUND, f"unknown deployment {request.name!r}; deployments: "
                             f"{', '.join(sorted(self.c.specs)) or 'none'}")
        await self.c.db(self.c.store.delete_deployment, request.name)
        del self.c.specs[request.name]
        await self.c.reconcile_now([("DeploymentDeleted", request.name, "removed by an operator")])
        return apb.DeleteDeploymentResponse()

    # -- events ---------------------------------------------------------------------------------
    @_errors
    async def ListEvents(self, request: apb.ListEventsRequest, context: Any) -> apb.ListEventsResponse:
        records = await self.c.db(self.c.store.events, request.after_seq, request.limit or 1000)
        return apb.ListEventsResponse(events=[event_proto(e) for e in records])

    async def WatchEvents(self, request: apb.ListEventsRequest, context: Any) -> AsyncIterator[apb.Event]:
        queue: asyncio.Queue[EventRecord] = asyncio.Queue()
        self.c.event_listeners.add(queue)
        try:
            last = request.after_seq
            for e in await self.c.db(self.c.store.events, request.after_seq, request.limit or 1000):
                last = e.seq
                yield event_proto(e)
            while True:
                e = await queue.get()
                if e.seq > last:
                    last = e.seq
                    yield event_proto(e)
        finally:
            self.c.event_listeners.discard(queue)
