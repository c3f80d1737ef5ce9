"""Who is calling: the principal of the current gRPC call, shared by the auth interceptor, the audit log and events.

The auth interceptor (which reads the peer certificate or the bearer token) sets ``CURRENT`` around each handler,
so anything the handler calls can name the actor without the context being passed down. Without an interceptor
(a plaintext pool) the actor is ``anonymous``.
"""

from __future__ import annotations

import re
from contextvars import ContextVar
from dataclasses import dataclass

# Roles in increasing power; each one may do what the ones before it may do. `agent` is apart: the link only.
ROLES = ("inference", "viewer", "operator", "admin")
AGENT = "agent"
CONTROLLER = "controller"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # a node, user or token name


def name_problem(name: str, what: str) -> str | None:
    """Why `name` cannot name a principal (`what`: "token name", "node name", ...); None if it can."""
    if NAME.fullmatch(name):
        return None
    return f"{what} {name!r} must be 1..63 letters, digits, '.', '_' or '-', starting with a letter or digit"


@dataclass(frozen=True)
class Principal:
    name: str  # node or user name, or token name
    role: str  # one of ROLES, AGENT or CONTROLLER
    via: str  # "certificate", "token" or "none"

    @property
    def actor(self) -> str:
        """How audit records and events name this caller: ``user:alice``, ``node:gpu-07``, ``token:ci``."""
        kind = "token" if self.via == "token" else "node" if self.role == AGENT else \
            "controller" if self.role == CONTROLLER else "user" if self.via == "certificate" else "anonymous"
        return kind if kind == "anonymous" else f"{kind}:{self.name}"


ANONYMOUS = Principal("anonymous", "admin", "none")
CURRENT: ContextVar[Principal] = ContextVar("xpud_principal", default=ANONYMOUS)


def current() -> Principal:
    return CURRENT.get()


def actor() -> str:
    return CURRENT.get().actor
