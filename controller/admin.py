"""xpud.v1.Admin: the operator's API. Each method: proto -> core types -> a `Controller` command -> proto."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from xpud.proto import admin_pb2 as apb
from xpud.proto import admin_pb2_grpc, identity
from xpud.proto.status import InvalidArgument, StatusTable, grpc_status

from .audit import AuditLog
from .audit import audited as audit_call
from .control import Controller
from .core import DeploymentSpec
from .store import Conflict, StoreError, TokenRecord
from .views import (
    add_version_stats,
    deployment_list,
    deployment_status,
    event_proto,
    model_info,
    node_info,
    node_list,
    pool_view,
)

log = logging.getLogger(__name__)
ERRORS: StatusTable = (
    (Conflict, grpc.StatusCode.ALREADY_EXISTS),
    (StoreError, grpc.StatusCode.FAILED_PRECONDITION),
)
errors = grpc_status(ERRORS, log)
# the state-changing methods, each with what its record names as the target
AUDITED: dict[str, Callable[[Any], str]] = {
    "SetCordon": lambda r: r.node,
    "PushModel": lambda r: "",  # a stream: the first chunk's name (see audit.audited)
    "CreateDeployment": lambda r: r.name,
    "ApplyDeployment": lambda r: r.name,
    "DeleteDeployment": lambda r: r.name,
    "CreateToken": lambda r: r.name,
    "RevokeToken": lambda r: r.name,
    "SetTraffic": lambda r: r.name,
    "Rollback": lambda r: r.name,
}


def audited(method: Callable[..., Any]) -> Callable[..., Any]:
    return audit_call(ERRORS, AUDITED[method.__name__])(method)


def spec_of(d: apb.Deployment) -> DeploymentSpec:
    if d.HasField("max_unavailable") and d.max_unavailable < 0:
        raise InvalidArgument(f"max_unavailable {d.max_unavailable} must be >= 0 (replicas a rolling update may take "
                              "down at once; leave it unset for the default)")
    replicas = d.replicas if d.HasField("replicas") else 1  # 0, given: kept with no replica running
    return DeploymentSpec(name=d.name, model=d.model, version=d.version, replicas=replicas,
                          memory_bytes=d.memory_bytes, device=d.device or "any", priority=d.priority,
                          labels=dict(d.labels), zone=d.zone, strategy=d.strategy or "binpack",
                          max_batch_size=d.max_batch_size, traffic=tuple((t.version, t.weight) for t in d.traffic),
                          max_inflight=d.max_inflight, auto_rollback_error_rate=d.auto_rollback_error_rate,
                          max_unavailable=d.max_unavailable if d.HasField("max_unavailable") else -1)


def token_info(r: TokenRecord) -> apb.TokenInfo:
    return apb.TokenInfo(name=r.name, role=r.role, created=r.created, creator=r.creator, id=r.id)


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, controller: Controller, audit: AuditLog | None = None) -> None:
        self.c = controller
        self.audit = audit  # None: no audit log (tests of the core alone)

    def _status(self, name: str) -> apb.DeploymentStatus:
        """A deployment's status with the router's live figures per version."""
        return add_version_stats(deployment_status(self.c.state, name), self.c.stats)

    # -- nodes and pool -------------------------------------------------------------------------
    @errors
    async def ListNodes(self, request: Any, context: Any) -> apb.ListNodesResponse:
        return node_list(self.c.state)

    @errors
    async def GetPool(self, request: Any, context: Any) -> apb.GetPoolResponse:
        return pool_view(self.c.state)

    @errors
    @audited
    async def SetCordon(self, request: apb.SetCordonRequest, context: Any) -> apb.NodeInfo:
        node = await self.c.set_cordon(request.node, request.cordoned, request.drain)
        return node_info(self.c.state, node)

    # -- models ---------------------------------------------------------------------------------
    @errors
    @audited
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
        profiles = self.c.state.profiles
        return apb.ListModelsResponse(models=[model_info(m, profiles) for m in await self.c.list_models()])

    # -- deployments ----------------------------------------------------------------------------
    @errors
    @audited
    async def CreateDeployment(self, request: apb.Deployment, context: Any) -> apb.DeploymentStatus:
        spec = spec_of(request)
        await self.c.apply_deployment(spec, create=True)
        return self._status(spec.name)

    @errors
    @audited
    async def ApplyDeployment(self, request: apb.Deployment, context: Any) -> apb.DeploymentStatus:
        spec = spec_of(request)
        await self.c.apply_deployment(spec)
        return self._status(spec.name)

    @errors
    @audited
    async def SetTraffic(self, request: apb.SetTrafficRequest, context: Any) -> apb.DeploymentStatus:
        await self.c.set_traffic(request.name, [(w.version, w.weight) for w in request.weights],
                                 request.auto_rollback_error_rate)
        return self._status(request.name)

    @errors
    @audited
    async def Rollback(self, request: apb.RollbackRequest, context: Any) -> apb.DeploymentStatus:
        await self.c.rollback(request.name)
        return self._status(request.name)

    @errors
    async def ListDeployments(self, request: Any, context: Any) -> apb.ListDeploymentsResponse:
        out = deployment_list(self.c.state)
        for status in out.deployments:
            add_version_stats(status, self.c.stats)
        return out

    @errors
    @audited
    async def DeleteDeployment(self, request: apb.DeleteDeploymentRequest, context: Any) -> Any:
        await self.c.delete_deployment(request.name)
        return apb.DeleteDeploymentResponse()

    # -- events ---------------------------------------------------------------------------------
    @errors
    async def ListEvents(self, request: apb.ListEventsRequest, context: Any) -> apb.ListEventsResponse:
        records = await self.c.list_events(request.after_seq, request.limit, request.since, request.newest)
        return apb.ListEventsResponse(events=[event_proto(e) for e in records])

    # -- tokens ---------------------------------------------------------------------------------
    @errors
    @audited
    async def CreateToken(self, request: apb.CreateTokenRequest, context: Any) -> apb.CreateTokenResponse:
        record, token = await self.c.tokens.create(request.name, request.role, identity.actor())
        return apb.CreateTokenResponse(info=token_info(record), token=token)

    @errors
    @audited
    async def RevokeToken(self, request: apb.RevokeTokenRequest, context: Any) -> apb.TokenInfo:
        return token_info(await self.c.tokens.revoke(request.name, identity.actor()))

    @errors
    async def ListTokens(self, request: Any, context: Any) -> apb.ListTokensResponse:
        return apb.ListTokensResponse(tokens=[token_info(r) for r in self.c.tokens.list()])

    async def WatchEvents(self, request: apb.ListEventsRequest, context: Any) -> AsyncIterator[apb.Event]:
        async for e in self.c.watch_events(request.after_seq, request.limit, request.since, request.newest):
            yield event_proto(e)
