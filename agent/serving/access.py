"""Which caller may call what on a secured agent's OIP endpoint (checked by `xpud.proto.auth.Authorize`).

Inference and reads: a client with the role inference (or any role above), or the controller (its router).
Loading and unloading: in a pool, the controller alone (the pool's desired state decides what runs, so a client
unloading a model would only make it drift); a standalone agent, an admin.
"""

from __future__ import annotations

from xpud.proto import oip
from xpud.proto.auth import OPEN, Rules
from xpud.proto.identity import CONTROLLER

REPOSITORY_CHANGES = ("RepositoryModelLoad", "RepositoryModelUnload")


def rules(linked: bool) -> Rules:
    service = oip.pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    changes = (CONTROLLER,) if linked else ("admin",)
    table: dict[str, str | tuple[str, ...]] = {
        f"/{service.full_name}/{m.name}": changes if m.name in REPOSITORY_CHANGES else ("inference", CONTROLLER)
        for m in service.methods}
    table["/grpc.health.v1.Health/Check"] = OPEN
    table["/grpc.health.v1.Health/Watch"] = OPEN
    return table
