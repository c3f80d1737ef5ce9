"""The pool's token hashes on disk (the cache directory, 0600): an agent restarted without its controller still
takes the tokens it was last told of."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from xpud.proto.tokens import TokenKey

log = logging.getLogger(__name__)


def load_tokens(path: Path) -> list[TokenKey]:
    try:
        rows = json.loads(path.read_text())
        return [TokenKey(r["id"], r["name"], r["role"], bytes.fromhex(r["salt"]), bytes.fromhex(r["hash"]))
                for r in rows]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, KeyError, TypeError) as exc:  # unreadable: the controller sends them again
        log.warning("ignoring the saved tokens %s (%s); waiting for the controller's", path, exc)
        return []


def save_tokens(path: Path, keys: list[TokenKey]) -> None:
    rows = [{"id": k.id, "name": k.name, "role": k.role, "salt": k.salt.hex(), "hash": k.hash.hex()} for k in keys]
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(rows, f)
        os.replace(tmp, path)
    except OSError as exc:  # the tokens still work in memory; only a restart without the controller loses them
        log.warning("cannot save the pool's tokens to %s: %s", path, exc.strerror)
