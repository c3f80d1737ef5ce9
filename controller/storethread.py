"""The store's one thread: every `StateStore` call runs there (a commit fsyncs: never on the event loop)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
COMMIT_BLOCK = 0.02  # seconds the loop waits blocked for a store call before it awaits the rest (`soon`)
Wrap = Callable[[Callable[[], Any]], Any]  # how each call runs on the thread (`Tuning.store_call`)


def _plain(call: Callable[[], T]) -> T:
    return call()


class StoreThread:
    def __init__(self, wrap: Wrap = _plain) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._wrap = wrap

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        return self._executor.submit(self._wrap, functools.partial(fn, *args, **kwargs))

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call on the thread and await it."""
        return await asyncio.wrap_future(self.submit(fn, *args, **kwargs))

    async def soon(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`run` for what an admin call waits on: the loop waits for it blocked up to COMMIT_BLOCK, then awaits the
        rest. A busy loop would get round to the thread's result only several ms after it is ready."""
        done = self.submit(fn, *args, **kwargs)
        with contextlib.suppress(TimeoutError):
            return done.result(timeout=COMMIT_BLOCK)
        return await asyncio.wrap_future(done)

    async def through(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, bool]:
        """`soon`, awaited to its end even if the task is cancelled meanwhile (an admin client that goes away):
        a pass's transaction then finishes, so memory and the agents follow what was written. Returns the result
        and whether a cancellation came in (the caller raises it once it is whole)."""
        done = self.submit(fn, *args, **kwargs)  # at once: a task would start a loop turn later
        with contextlib.suppress(TimeoutError):
            return done.result(timeout=COMMIT_BLOCK), False
        written = asyncio.wrap_future(done)
        cancelled = False
        while True:
            try:
                return await asyncio.shield(written), cancelled
            except asyncio.CancelledError:
                if written.cancelled():
                    raise
                cancelled = True

    def close(self) -> None:
        self._executor.shutdown(wait=True)
