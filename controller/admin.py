"""xpud.v1.Admin: the operator's API. Each method: proto -> core types -> a `Controller` command -> proto."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from xpud.proto import admin_pb2 as apb
from xpud.proto import admin_pb2_grpc
from xpud.proto.status import InvalidArgument, StatusTable, grpc_status

from .control import Controller
from .core import DeploymentSpec
from .store import Conflict, StoreError
from .views import deployment_list, deployment_status, event_proto, model_info, node_info, node_list, pool_view

log = logging.getLogger(__name__)
ERRORS: StatusTable = (
    (Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (StoreError, grpc.StatusCode.FAILED_PRECONDITION),
)
errors = grpc_status(ERRORS, log)


def spec_of(d: apb.Deployment) -> DeploymentSpec:
    return DeploymentSpec(name=d.name, model=d.model, version=d.version, replicas=d.replicas or 1,
                          memory_bytes=d.memory_bytes, device=d.device or "any", priority=d.priority,
                          labels=dict(d.labels), zone=d.zone, strategy=d.strategy or "binpack",
                          max_batch_size=d.max_batch_size)


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, controller: Controller) -> None:
        self.c = controller

    # -- nodes and pool -------------------------------------------------------------------------
    @errors
    async def ListNodes(self, request: Any, context: Any) -> apb.ListNodesResponse:
        return node_list(self.c.state)

    @errors
    async def GetPool(self, request: Any, context: Any) -> apb.GetPoolResponse:
        return pool_view(self.c.state)

    @errors
    async def SetCordon(self, request: apb.SetCordonRequest, context: Any) -> apb.NodeInfo:
        node = await self.c.set_cordon(request.node, request.cordoned, request.drain)
        return node_info(self.c.state, node)

    # -- models ---------------------------------------------------------------------------------
    @errors
    async def PushModel(self, request_iterator: AsyncIterator[apb.PushModelChunk], context: Any) -> apb.ModelInfo:
        chunks = request_iterator.__aiter__()
        try:
            first = await chunks.__anext__()
        except StopAsyncIteration:
            raise InvalidArgument("no model bytes were sent") from None

        async def data() -> AsyncIterator[bytes]:
            yield first.data
            async for chunk in chunks:
                yield chunk.data

        return model_info(await self.c.push_model(first.name, first.version, first.filename, data()))

    @errors
    async def ListModels(self, request: Any, context: Any) -> apb.ListModelsResponse:
        return apb.ListModelsResponse(models=[model_info(m) for m in await self.c.list_models()])

    # -- deployments ----------------------------------------------------------------------------
    @errors
    async def CreateDeployment(self, request: apb.Deployment, context: Any) -> apb.DeploymentStatus:
        spec = spec_of(request)
        await self.c.apply_deployment(spec, create=True)
        return deployment_status(self.c.state, spec.name)

    @errors
    async def ApplyDeployment(self, request: apb.Deployment, context: Any) -> apb.DeploymentStatus:
        spec = spec_of(request)
        await self.c.apply_deployment(spec)
        return deployment_status(self.c.state, spec.name)

    @errors
    async def ListDeployments(self, request: Any, context: Any) -> apb.ListDeploymentsResponse:
        return deployment_list(self.c.state)

    @errors
    async def DeleteDeployment(self, request: apb.DeleteDeploymentRequest, context: Any) -> Any:
        await self.c.delete_deployment(request.name)
        return apb.DeleteDeploymentResponse()

    # -- events ---------------------------------------------------------------------------------
    @errors
    async def ListEvents(self, request: apb.ListEventsRequest, context: Any) -> apb.ListEventsResponse:
        records = await self.c.list_events(request.after_seq, request.limit)
        return apb.ListEventsResponse(events=[event_proto(e) for e in records])

    async def WatchEvents(self, request: apb.ListEventsRequest, context: Any) -> AsyncIterator[apb.Event]:
        async for e in self.c.watch_events(request.after_seq, request.limit):
            yield event_proto(e)
