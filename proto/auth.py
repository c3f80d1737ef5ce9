"""Who may call what: one server interceptor that names the caller and checks its role, on every secured port.

The caller is a bearer token (``authorization: Bearer TOKEN`` metadata, checked by the server's token verifier)
or else the peer certificate the TLS handshake verified (CN = name, OU = role, see `pki`). Each method needs a
role from a table (``RULES``): a role of `identity.ROLES` lets in that role and every one above it; `AGENT` and
`CONTROLLER` let in that role only; ``OPEN`` lets in anyone the transport let in. A method missing from the
table is refused, so a new RPC is closed until it is given a rule. The principal is set in `identity.CURRENT`
for the handler (events and the audit log name it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import grpc

from . import identity
from .decoding import WrapHandlers, stream_of
from .identity import AGENT, CONTROLLER, ROLES, Principal
from .pki import PkiError, read_identity

log = logging.getLogger(__name__)

OPEN = ""  # a rule: any caller the transport let in (health checks)
# full method name ("/xpud.v1.Admin/ListNodes") -> the role it needs, or several roles any of which will do
Rules = Mapping[str, str | tuple[str, ...]]
TokenCheck = Callable[[str], Awaitable[Principal | None]]  # None: no such token (or revoked)
# told of each refused call: (method, the caller's actor or "unauthenticated", status, message)
DeniedHook = Callable[[str, str, grpc.StatusCode, str], None]
LOG_INTERVAL = 60.0  # seconds between two log lines about one caller's refused calls to one method

NO_CREDENTIALS = ("this call needs credentials: a client certificate signed by the pool's CA (--tls-cert and "
                  "--tls-key) or a token (--token or XPUD_TOKEN; `xpud tokens create` makes one)")


class Denied(Exception):
    """A call refused: the status code and a message that says what is missing."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def short(method: str) -> str:
    """'/xpud.v1.Admin/ListNodes' -> 'Admin/ListNodes'."""
    service, _, name = method.strip("/").rpartition("/")
    return f"{service.rpartition('.')[2]}/{name}"


def allows(role: str, needed: str | tuple[str, ...]) -> bool:
    """Whether a principal of `role` may call a method that needs `needed` (any one of them, for a tuple)."""
    if isinstance(needed, tuple):
        return any(allows(role, one) for one in needed)
    if needed == OPEN:
        return True
    if needed in ROLES:
        return role in ROLES and ROLES.index(role) >= ROLES.index(needed)
    return role == needed


def _needs(needed: str | tuple[str, ...]) -> str:
    if isinstance(needed, tuple):
        return " or ".join(_needs(one) for one in needed)
    if needed in ROLES:
        higher = ROLES[ROLES.index(needed) + 1:]
        return f"the role {needed}" + (f" (or {', '.join(higher)})" if higher else "")
    return {AGENT: "an agent (node) certificate", CONTROLLER: "the controller's certificate"}.get(needed, needed)


def bearer(metadata: Any) -> str | None:
    """The token of an ``authorization: Bearer`` metadata entry; None if there is none; Denied if malformed."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Denied(grpc.StatusCode.UNAUTHENTICATED,
                             "the authorization metadata must be 'Bearer TOKEN' (xpud: --token or XPUD_TOKEN)")
            return token.strip()
    return None


class Authorize(WrapHandlers):
    """Wrap each method's handler so that it authenticates the caller and checks its role first."""

    def __init__(self, rules: Rules, tokens: TokenCheck | None = None,
                 clock: Callable[[], float] = time.monotonic, denied: DeniedHook | None = None) -> None:
        super().__init__()
        self.rules = rules
        self.tokens = tokens
        self.denied = denied
        self.clock = clock
        self._logged: dict[tuple[str, str], float] = {}
        self.refused = 0

    async def principal(self, context: grpc.aio.ServicerContext) -> Principal:
        """The caller: its bearer token if it sent one, else its verified certificate; Denied if neither."""
        token = bearer(context.invocation_metadata())
        if token is not None:
            if self.tokens is None:
                raise Denied(grpc.StatusCode.UNAUTHENTICATED, "this server takes no tokens: use a client certificate")
            found = await self.tokens(token)
            if found is None:
                raise Denied(grpc.StatusCode.UNAUTHENTICATED, "the token is not valid: it was revoked or mistyped "
                             "(`xpud tokens list` shows the live ones; `xpud tokens create` makes a new one)")
            return found
        pems = context.auth_context().get("x509_pem_cert")
        if not pems:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, NO_CREDENTIALS)
        try:
            name, role = read_identity(pems[0])
        except PkiError as exc:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None
        return Principal(name, role, "certificate")

    async def check(self, method: str, context: grpc.aio.ServicerContext) -> Principal:
        """The caller, if it may call `method`; else the call is aborted with the reason."""
        who: Principal | None = None
        try:
            who = await self.principal(context)
            needed = self.rules.get(method)
            if needed is None:
                raise Denied(grpc.StatusCode.PERMISSION_DENIED, f"{short(method)} is not open to any caller")
            if not allows(who.role, needed):
                what = "an agent certificate, which may use the agent link only" if who.role == AGENT else \
                    f"the role {who.role}"
                raise Denied(grpc.StatusCode.PERMISSION_DENIED,
                             f"{who.actor} has {what}; {short(method)} needs {_needs(needed)}")
        except Denied as exc:
            self._note(method, str(exc))
            if self.denied is not None:
                self.denied(method, who.actor if who is not None else "unauthenticated", exc.code, str(exc))
            await context.abort(exc.code, str(exc))
            raise AssertionError("abort returned") from None  # abort raises; this line keeps type checkers sure
        return who

    def _note(self, method: str, message: str) -> None:
        """Log a refused call: one line per method and reason per LOG_INTERVAL (refusals must not flood)."""
        self.refused += 1
        key, now = (method, message), self.clock()
        last = self._logged.get(key)
        if last is None or now - last >= LOG_INTERVAL:
            if len(self._logged) > 10_000:
                self._logged.clear()
            self._logged[key] = now
            log.warning("refused a call to %s: %s", short(method), message)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        kwargs = {"request_deserializer": handler.request_deserializer,
                  "response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(method, handler.unary_unary), **kwargs)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._unary(method, handler.stream_unary), **kwargs)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._stream(method, handler.unary_stream), **kwargs)
        return grpc.stream_stream_rpc_method_handler(self._stream(method, handler.stream_stream), **kwargs)

    def _unary(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = identity.CURRENT.set(await self.check(method, context))
            try:
                return await behavior(request, context)
            finally:
                identity.CURRENT.reset(token)

        return call

    def _stream(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            # each call runs in a task of its own, so the principal set here is that call's alone
            identity.CURRENT.set(await self.check(method, context))
            async for item in stream_of(behavior(request, context)):
                yield item

        return call
