"""The controller's persistent state: a `StateStore` chosen by URL, and the `ArtifactStore` for model files.

A store URL names its implementation by scheme: ``sqlite:///DIR/state.db`` today. A new implementation is one
module and one entry in `OPENERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

from .artifacts import ArtifactStore
from .base import (
    Conflict,
    Event,
    EventRecord,
    ModelRecord,
    NodeRecord,
    ProfileRecord,
    StateStore,
    StoreError,
    TensorSpec,
    TokenRecord,
)
from .sqlite import DB_NAME, MIGRATIONS, SqliteStore

__all__ = ["DB_NAME", "MIGRATIONS", "OPENERS", "ArtifactStore", "Conflict", "Event", "EventRecord", "ModelRecord",
           "NodeRecord", "ProfileRecord", "SqliteStore", "StateStore", "StoreError", "StoreURLError", "TensorSpec",
           "TokenRecord", "check_url", "open_store"]


class StoreURLError(ValueError):
    """A --store URL that names no known store, or that its store cannot read."""


def _sqlite(url: SplitResult) -> StateStore:
    path = Path(unquote(url.path))
    return SqliteStore(path.parent, path.name)


def _sqlite_check(url: SplitResult) -> None:
    if url.netloc or not url.path.startswith("/") or url.path.endswith("/") or url.query or url.fragment:
        raise StoreURLError(f"expected sqlite:///PATH/TO/FILE.db (an absolute path), got {url.geturl()!r}")


# scheme -> (check the URL's form, open the store it names)
OPENERS: dict[str, tuple[Callable[[SplitResult], None], Callable[[SplitResult], StateStore]]] = {
    "sqlite": (_sqlite_check, _sqlite),
}


def check_url(text: str) -> SplitResult:
    """The parsed URL if its scheme is known and its form right; else `StoreURLError` saying what is expected."""
    url = urlsplit(text)
    if url.scheme not in OPENERS:
        known = ", ".join(f"{scheme}://" for scheme in sorted(OPENERS))
        raise StoreURLError(f"unknown store {text!r}: expected a URL starting with {known}")
    OPENERS[url.scheme][0](url)
    return url


def open_store(text: str) -> StateStore:
    """Open the state store a URL names (`StoreURLError` for a bad URL, `StoreError` if it cannot be opened)."""
    url = check_url(text)
    return OPENERS[url.scheme][1](url)
