"""Events: written to the store, then fanned out to the watchers (`xpud events --follow`) and the log."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from .store import Event, EventRecord, StateStore
from .storethread import StoreThread

log = logging.getLogger(__name__)
LOG_EACH = 10  # events of one kind in one transaction logged one line each below this many, else in one line


class EventLog:
    def __init__(self, store: StateStore, thread: StoreThread) -> None:
        self.store, self.thread = store, thread
        self.listeners: set[asyncio.Queue[EventRecord]] = set()
        self.counts: dict[str, int] = {}  # events told by kind since this process started (/metrics)

    async def emit(self, events: Sequence[Event], actor: str = "") -> None:
        """Write several events (caused by `actor`, "" for the controller itself) in one transaction, then tell the
        watchers."""
        if events:
            self.notify(await self.thread.run(self.store.commit, events=events, when=time.time(), actor=actor))

    def notify(self, records: Sequence[EventRecord]) -> None:
        """Tell the watchers every event; log each, or one line for a kind that came LOG_EACH times or more in one
        transaction (a join storm)."""
        kinds: dict[str, list[EventRecord]] = {}
        for record in records:
            kinds.setdefault(record.kind, []).append(record)
            for queue in list(self.listeners):
                queue.put_nowait(record)
        for kind, group in kinds.items():
            self.counts[kind] = self.counts.get(kind, 0) + len(group)
            if len(group) < LOG_EACH:
                for record in group:
                    log.info("event %s %s: %s", kind, record.subject, record.message)
            else:
                log.info("event %s x %d: %s, ... (%s; each one in `xpud events`)", kind, len(group),
                         ", ".join(r.subject for r in group[:3]), group[0].message)
