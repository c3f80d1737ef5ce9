"""API tokens: an alternative to client certificates, sent as ``authorization: Bearer TOKEN``.

A token reads ``xpud_<id>_<secret>``: the id (public) finds its row, the secret (256 random bits) is kept only as
a salted scrypt hash. The first use of a token pays for one scrypt (in a worker thread); a verified token is then
remembered in memory by its SHA-256 until it is revoked, so later calls cost a dictionary lookup.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from xpud.proto.identity import ROLES, Principal, name_problem
from xpud.proto.status import InvalidArgument, NotFound

from .events import EventLog
from .store import StateStore, TokenRecord
from .storethread import StoreThread

PREFIX = "xpud"
# scrypt cost: 16 MiB and some tens of milliseconds per check (RFC 7914's interactive parameters)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def _hash(secret: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(secret.encode())


def check_name(name: str) -> None:
    if problem := name_problem(name, "token name"):
        raise InvalidArgument(problem)


def check_role(role: str) -> None:
    if role not in ROLES:
        raise InvalidArgument(f"token role {role!r} is not one of {', '.join(ROLES)}")


class Tokens:
    """The live tokens, held in memory (loaded at start) and written through the store."""

    def __init__(self, store: StateStore, thread: StoreThread, events: EventLog) -> None:
        self.store, self.thread, self.events = store, thread, events
        self.records: dict[str, TokenRecord] = {}  # by id
        self._verified: dict[bytes, TokenRecord] = {}  # sha256 of a token checked once -> its record

    async def load(self) -> None:
        self.records = {r.id: r for r in await self.thread.run(self.store.tokens)}

    def list(self) -> list[TokenRecord]:
        return sorted(self.records.values(), key=lambda r: r.name)

    async def create(self, name: str, role: str, creator: str) -> tuple[TokenRecord, str]:
        """A new token: its record and the token itself (shown once, never stored)."""
        check_name(name)
        check_role(role)
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        digest = await asyncio.to_thread(_hash, secret, salt)
        record = TokenRecord(name, token_id, role, salt, digest, time.time(), creator)
        written = await self.thread.run(self.store.add_token, record,
                                        ("TokenCreated", name, f"role {role}"), time.time())
        self.records[token_id] = record
        self.events.notify(written)
        return record, f"{PREFIX}_{token_id}_{secret}"

    async def revoke(self, name: str, actor: str) -> TokenRecord:
        found = next((r for r in self.records.values() if r.name == name), None)
        if found is None:
            known = ", ".join(r.name for r in self.list()) or "none"
            raise NotFound(f"no token named {name!r} (tokens: {known})")
        written = await self.thread.run(self.store.delete_token, name, ("TokenRevoked", name, f"role {found.role}"),
                                        time.time(), actor)
        self.records.pop(found.id, None)
        self._verified = {k: r for k, r in self._verified.items() if r.id != found.id}
        self.events.notify(written or [])
        return found

    async def verify(self, token: str) -> Principal | None:
        """The principal of a live token; None for a malformed, unknown or revoked one."""
        key = hashlib.sha256(token.encode()).digest()
        record = self._verified.get(key)
        if record is None:
            prefix, _, rest = token.partition("_")
            token_id, _, secret = rest.partition("_")
            record = self.records.get(token_id) if prefix == PREFIX and secret else None
            if record is None:
                return None
            digest = await asyncio.to_thread(_hash, secret, record.salt)
            if not hmac.compare_digest(digest, record.hash) or self.records.get(token_id) is not record:
                return None  # a wrong secret, or revoked while it was being checked
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[key] = record
        return Principal(record.name, record.role, "token")
