"""The agent's model-artifact cache: files named by sha256, fetched from the controller in resumable chunks.

A download goes to ``.partial/<digest>`` and resumes from its size after a broken
stream; the file is verified against its digest before it is renamed into place,
so a file in the cache is always whole and right. The cache keeps at most
``max_bytes``, evicting the least recently used artifacts that nothing uses.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

HEX = frozenset("0123456789abcdef")
Fetch = Callable[[str, int], AsyncIterator[bytes]]  # (digest, offset) -> chunks from that offset


class ArtifactError(Exception):
    """An artifact that cannot be had or does not match its digest."""


def valid_digest(digest: str) -> bool:
    return len(digest) == 64 and set(digest) <= HEX


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class ArtifactCache:
    def __init__(self, root: Path, max_bytes: int = 20 << 30) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.partial = root / ".partial"
        self.partial.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path | None:
        path = self.root / digest
        if path.is_file():
            os.utime(path)  # recently used
            return path
        return None

    async def ensure(self, digest: str, size: int, fetch: Fetch, in_use: Iterable[str] = ()) -> Path:
        """The artifact's path, downloading (or resuming) it first when it is not cached."""
        if not valid_digest(digest):
            raise ArtifactError(f"artifact digest {digest!r} is not a sha256 hex string")
        cached = self.path(digest)
        if cached is not None:
            return cached
        partial = self.partial / digest
        for attempt in (1, 2):
            offset = partial.stat().st_size if partial.exists() else 0
            if offset > size:
                partial.unlink()
                offset = 0
            try:
                with partial.open("ab") as f:
                    async for chunk in fetch(digest, offset):
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
            except ArtifactError:
                raise
            except Exception as exc:  # a broken stream: keep what arrived, the next try resumes
                if attempt == 2:
                    raise ArtifactError(f"download of artifact {digest[:12]} failed at byte "
                                        f"{partial.stat().st_size if partial.exists() else 0}: {exc}") from exc
                log.warning("artifact %s: download broke (%s); resuming", digest[:12], exc)
                continue
            break
        got = sha256_file(partial)
        if got != digest:
            partial.unlink(missing_ok=True)
            raise ArtifactError(f"artifact {digest[:12]} arrived with sha256 {got[:12]}: discarded")
        final = self.root / digest
        os.replace(partial, final)
        self.evict(keep={digest, *in_use})
        return final

    def evict(self, keep: Iterable[str] = ()) -> list[str]:
        """Drop least-recently-used artifacts until the cache fits ``max_bytes``; never those in ``keep``."""
        keep = set(keep)
        files = sorted((p for p in self.root.iterdir() if p.is_file() and valid_digest(p.name)),
                       key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        removed = []
        for p in files:
            if total <= self.max_bytes:
                break
            if p.name in keep:
                continue
            total -= p.stat().st_size
            p.unlink()
            removed.append(p.name)
            log.info("artifact cache: evicted %s", p.name[:12])
        return removed
