"""API tokens: an alternative to client certificates, sent as ``authorization: Bearer TOKEN``.

A token reads ``xpud_<id>_<secret>``: the id (public) finds its row, the secret (256 random bits) is kept only as
a salted scrypt hash (proto/tokens.py checks it). Agents of a secured pool are told the live set over the link, so
they take the same tokens.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable

from xpud.proto.identity import ROLES, Principal, name_problem
from xpud.proto.status import InvalidArgument, NotFound
from xpud.proto.tokens import PREFIX, TokenKey, TokenVerifier, hash_secret

from .events import EventLog
from .store import StateStore, TokenRecord
from .storethread import StoreThread


def key_of(record: TokenRecord) -> TokenKey:
    return TokenKey(record.id, record.name, record.role, record.salt, record.hash)


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
        self.verifier = TokenVerifier()
        self.changed: Callable[[], None] = lambda: None  # the live set changed (the link tells the agents)

    async def load(self) -> None:
        self.records = {r.id: r for r in await self.thread.run(self.store.tokens)}
        self.verifier.replace(key_of(r) for r in self.records.values())

    def keys(self) -> list[TokenKey]:
        return [key_of(r) for r in self.list()]

    def list(self) -> list[TokenRecord]:
        return sorted(self.records.values(), key=lambda r: r.name)

    async def create(self, name: str, role: str, creator: str) -> tuple[TokenRecord, str]:
        """A new token: its record and the token itself (shown once, never stored)."""
        check_name(name)
        check_role(role)
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        digest = await asyncio.to_thread(hash_secret, secret, salt)
        record = TokenRecord(name, token_id, role, salt, digest, time.time(), creator)
        written = await self.thread.run(self.store.add_token, record,
                                        ("TokenCreated", name, f"role {role}"), time.time())
        self.records[token_id] = record
        self.verifier.add(key_of(record))
        self.events.notify(written)
        self.changed()
        return record, f"{PREFIX}_{token_id}_{secret}"

    async def revoke(self, name: str, actor: str) -> TokenRecord:
        found = next((r for r in self.records.values() if r.name == name), None)
        if found is None:
            known = ", ".join(r.name for r in self.list()) or "none"
            raise NotFound(f"no token named {name!r} (tokens: {known})")
        written = await self.thread.run(self.store.delete_token, name, ("TokenRevoked", name, f"role {found.role}"),
                                        time.time(), actor)
        self.records.pop(found.id, None)
        self.verifier.remove(found.id)
        self.events.notify(written or [])
        self.changed()
        return found

    async def verify(self, token: str) -> Principal | None:
        """The principal of a live token; None for a malformed, unknown or revoked one."""
        return await self.verifier.verify(token)
