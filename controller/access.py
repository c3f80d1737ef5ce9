"""Which role each RPC of the controller needs (checked by `xpud.proto.auth.Authorize` on a secured controller).

viewer: read and watch; operator: change deployments and nodes; admin: models and tokens; agent: the link and
artifact downloads only; the router (`ROUTER_RULES`): inference. A method not in this table is refused
(tests/test_auth.py checks every one has a rule).
"""

from __future__ import annotations

from xpud.proto import oip
from xpud.proto.auth import OPEN, Rules
from xpud.proto.identity import AGENT

_ADMIN = "/xpud.v1.Admin/"
_LINK = "/xpud.v1.AgentLink/"
ROLE_OF = {
    "viewer": ("ListNodes", "GetPool", "ListModels", "ListDeployments", "ListEvents", "WatchEvents"),
    "operator": ("CreateDeployment", "ApplyDeployment", "DeleteDeployment", "SetCordon",
                 "SetTraffic", "Rollback"),
    "admin": ("PushModel", "CreateToken", "RevokeToken", "ListTokens"),
}
RULES: Rules = {
    **{_ADMIN + method: role for role, methods in ROLE_OF.items() for method in methods},
    _LINK + "Connect": AGENT,
    _LINK + "FetchArtifact": AGENT,
    "/grpc.health.v1.Health/Check": OPEN,
    "/grpc.health.v1.Health/Watch": OPEN,
}

_OIP = oip.pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# the router: inference and reads for the role inference and above (loads and unloads it refuses anyway)
ROUTER_RULES: Rules = {f"/{_OIP.full_name}/{m.name}": "operator" if m.name.startswith("RepositoryModel") else
                       "inference" for m in _OIP.methods}
