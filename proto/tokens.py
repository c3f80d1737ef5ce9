"""Checking API tokens (``xpud_<id>_<secret>``) against their salted scrypt hashes: the controller, which keeps
them, and agents, which the controller tells of them over the link, check them alike.

A token's first use pays for one scrypt (in a worker thread); a verified token is then remembered by its SHA-256
until it is revoked, so later calls cost a dictionary lookup."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .identity import Principal

PREFIX = "xpud"
# scrypt cost: 16 MiB and some tens of milliseconds per check (RFC 7914's interactive parameters)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
CACHE_MAX = 10_000


def hash_secret(secret: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P).derive(secret.encode())


@dataclass(frozen=True)
class TokenKey:
    """What checking one token needs: never the token itself."""

    id: str
    name: str
    role: str
    salt: bytes
    hash: bytes


class TokenVerifier:
    def __init__(self, keys: Iterable[TokenKey] = ()) -> None:
        self.keys: dict[str, TokenKey] = {k.id: k for k in keys}
        self._verified: dict[bytes, TokenKey] = {}  # sha256 of a token checked once -> its key

    def replace(self, keys: Iterable[TokenKey]) -> None:
        """The live set is `keys`: a token no longer in it (revoked) is refused from now on."""
        self.keys = {k.id: k for k in keys}
        self._verified = {h: k for h, k in self._verified.items() if self.keys.get(k.id) == k}

    def add(self, key: TokenKey) -> None:
        self.keys[key.id] = key

    def remove(self, token_id: str) -> None:
        self.keys.pop(token_id, None)
        self._verified = {h: k for h, k in self._verified.items() if k.id != token_id}

    async def verify(self, token: str) -> Principal | None:
        """The principal of a live token; None for a malformed, unknown or revoked one."""
        digest = hashlib.sha256(token.encode()).digest()
        key = self._verified.get(digest)
        if key is None:
            prefix, _, rest = token.partition("_")
            token_id, _, secret = rest.partition("_")
            key = self.keys.get(token_id) if prefix == PREFIX and secret else None
            if key is None:
                return None
            derived = await asyncio.to_thread(hash_secret, secret, key.salt)
            if not hmac.compare_digest(derived, key.hash) or self.keys.get(token_id) != key:
                return None  # a wrong secret, or revoked while it was being checked
            if len(self._verified) > CACHE_MAX:
                self._verified.clear()
            self._verified[digest] = key
        return Principal(key.name, key.role, "token")
