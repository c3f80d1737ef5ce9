"""An exclusive flock on a file holding the pid of its holder: one controller per state."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from .base import StoreError


class StateLock:
    def __init__(self, path: Path, what: str) -> None:
        """Take the lock at `path` for `what` (named in the error when another process holds it)."""
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(f"{what} is in use by another controller (pid {holder}); "
                             "stop it or give this controller another state directory") from None
        except OSError as e:
            os.close(fd)
            raise StoreError(f"cannot lock {path}: {e}") from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
