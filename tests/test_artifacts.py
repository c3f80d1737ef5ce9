"""The agent's artifact cache: resumable download, digest check, LRU eviction."""

from __future__ import annotations

import hashlib
import os

import pytest

from xpud.agent.link.artifacts import ArtifactCache, ArtifactError

DATA = os.urandom(300_000)
DIGEST = hashlib.sha256(DATA).hexdigest()


def source(data: bytes, break_at: int | None = None, chunk: int = 65536):  # type: ignore[no-untyped-def]
    calls: list[int] = []

    async def fetch(digest: str, offset: int):  # type: ignore[no-untyped-def]
        calls.append(offset)
        pos = offset
        while pos < len(data):
            if break_at is not None and len(calls) == 1 and pos >= break_at:
                raise ConnectionError("stream reset")
            yield data[pos:pos + chunk]
            pos += chunk

    return fetch, calls


async def test_download_resumes_where_it_broke(tmp_path):
    cache = ArtifactCache(tmp_path)
    fetch, calls = source(DATA, break_at=131072)
    path = await cache.ensure(DIGEST, len(DATA), fetch)
    assert path.read_bytes() == DATA
    assert calls == [0, 131072]  # the second request asked only for the rest
    assert not list((tmp_path / ".partial").iterdir())
    again, calls2 = source(DATA)
    assert await cache.ensure(DIGEST, len(DATA), again) == path and calls2 == []  # cached: no download


async def test_wrong_bytes_are_discarded(tmp_path):
    cache = ArtifactCache(tmp_path)
    fetch, _ = source(DATA[:-1] + bytes([DATA[-1] ^ 1]))  # the last byte differs, whatever it was
    with pytest.raises(ArtifactError, match="arrived with sha256"):
        await cache.ensure(DIGEST, len(DATA), fetch)
    assert cache.path(DIGEST) is None and not list((tmp_path / ".partial").iterdir())
    with pytest.raises(ArtifactError, match="not a sha256"):
        await cache.ensure("../../etc/passwd", 1, fetch)


async def test_lru_eviction_keeps_what_is_in_use(tmp_path):
    cache = ArtifactCache(tmp_path, max_bytes=250_000)
    blobs = [os.urandom(100_000) for _ in range(3)]
    digests = [hashlib.sha256(b).hexdigest() for b in blobs]
    for i, blob in enumerate(blobs[:2]):
        fetch, _ = source(blob)
        await cache.ensure(digests[i], len(blob), fetch)
        os.utime(tmp_path / digests[i], (1000 + i, 1000 + i))
    fetch, _ = source(blobs[2])
    await cache.ensure(digests[2], len(blobs[2]), fetch, in_use=[digests[0]])
    assert cache.path(digests[0]) is not None  # oldest, but in use
    assert cache.path(digests[1]) is None  # evicted
    assert cache.path(digests[2]) is not None

