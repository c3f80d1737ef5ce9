"""Model files by sha256 in one folder (0700): written to a temp name, fsync'd and renamed; stored once."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .base import StoreError

_DIGEST = re.compile(r"^[0-9a-f]{64}$")
TMP_PREFIX = ".tmp-"  # temp files of a write in progress; those left by a crash are removed on open


class ArtifactStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            for tmp in self.directory.glob(TMP_PREFIX + "*"):  # left by a controller killed mid-write
                tmp.unlink(missing_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create artifact directory {self.directory}: {e}") from e

    def temp_file(self, prefix: str = TMP_PREFIX) -> tuple[int, Path]:
        """A new temp file in the folder (removed on the next open if left behind): (fd, path)."""
        fd, name = tempfile.mkstemp(prefix=prefix if prefix.startswith(TMP_PREFIX) else TMP_PREFIX + prefix,
                                    dir=self.directory)
        return fd, Path(name)

    def put(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        """Stream bytes in; returns (sha256 hex, size). The same bytes are stored once."""
        fd, tmp = self.temp_file()
        try:
            sha, size = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    sha.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
            digest = sha.hexdigest()
            final = self.directory / digest
            if final.exists() and final.stat().st_size == size:
                tmp.unlink()
            else:
                os.replace(tmp, final)
                _fsync_dir(self.directory)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        return digest, size

    def path(self, digest: str) -> Path | None:
        """The file of an artifact held, None if there is none (or `digest` is not a sha256 hex)."""
        path = self.directory / digest
        return path if _DIGEST.match(digest) and path.is_file() else None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
