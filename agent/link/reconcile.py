"""Desired model assignments -> models loaded on this node. Level-triggered and safe to run again.

Each assignment is loaded straight from the artifact cache with a configuration built from it in memory
(see ``assignment``), higher priorities first. The last desired state is kept in ``desired.json`` so a node
restarted while the controller is away serves what it served before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..serving.manager import ModelManager, ModelState
from .artifacts import ArtifactCache, Fetch
from .assignment import Assignment, model_source

log = logging.getLogger(__name__)


@dataclass
class InstanceReport:
    deployment: str
    model: str
    version: str
    digest: str
    state: str  # LOADING, READY, FAILED
    reason: str = ""
    devices: tuple[str, ...] = ()
    execution_provider: str = ""
    memory_bytes: int = 0


@dataclass
class Applied:
    generation: int = 0
    assignments: dict[str, Assignment] = field(default_factory=dict)


class Reconciler:
    def __init__(self, manager: ModelManager, cache: ArtifactCache, state_file: Path) -> None:
        self.manager = manager
        self.cache = cache
        self.state_file = state_file
        self.applied = Applied()
        self.reports: dict[str, InstanceReport] = {}
        self._lock = asyncio.Lock()
        self.on_change: Callable[[], None] | None = None

    def saved(self) -> tuple[int, list[Assignment]]:
        """The desired state last applied on this node (survives restarts)."""
        try:
            data = json.loads(self.state_file.read_text())
            return int(data["generation"]), [Assignment.from_dict(a) for a in data["assignments"]]
        except (OSError, ValueError, KeyError, TypeError):
            return 0, []

    def _save(self, generation: int, assignments: Sequence[Assignment]) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"generation": generation, "saved": time.time(),
                                   "assignments": [asdict(a) for a in assignments]}))
        os.replace(tmp, self.state_file)

    async def apply(self, generation: int, assignments: Sequence[Assignment], fetch: Fetch | None) -> None:
        async with self._lock:
            desired = {a.deployment: a for a in assignments}
            current = self.applied.assignments
            for name in sorted(set(current) - set(desired)):
                await self._remove(name)
            keep = {a.digest for a in (*current.values(), *desired.values())}  # the cache evicts none of these
            for a in sorted(desired.values(), key=lambda a: (-a.priority, a.deployment)):  # higher priority first
                if current.get(a.deployment) == a and self._ready(a.deployment):
                    continue
                await self._install(a, fetch, keep)
            # a failed assignment is not "applied": the next apply tries it again
            self.applied = Applied(generation, {n: a for n, a in desired.items() if self._ready(n)})
            self._save(generation, assignments)
            self._changed()

    def _ready(self, name: str) -> bool:
        report = self.reports.get(name)
        return report is not None and report.state == "READY"

    async def _install(self, a: Assignment, fetch: Fetch | None, keep: set[str]) -> None:
        report = InstanceReport(a.deployment, a.model, a.version, a.digest, "LOADING", devices=a.devices)
        if not self._ready(a.deployment):
            self.reports[a.deployment] = report
            self._changed()
        # else the loaded model serves (and is reported READY) until the new one replaces it: a move to
        # other devices here (off an unhealthy one) makes before it breaks
        try:
            if fetch is None:
                path = self.cache.path(a.digest)
                if path is None:
                    raise FileNotFoundError(f"artifact {a.digest[:12]} is not cached and no controller is connected")
            else:
                path = await self.cache.ensure(a.digest, a.size_bytes, fetch, keep)
            versions = await self.manager.load(a.deployment, model_source(a, path))
            self.reports[a.deployment] = report
            report.state = "READY"
            report.execution_provider = versions[0].provider if versions else ""
            report.memory_bytes = sum(v.memory_bytes for v in versions)
            log.info("deployment %s: model %s:%s READY on %s (priority %d)", a.deployment, a.model, a.version,
                     ", ".join(a.devices), a.priority)
        except Exception as exc:
            self.reports[a.deployment] = report
            report.state, report.reason = "FAILED", str(exc)
            log.error("deployment %s: %s", a.deployment, exc)

    async def _remove(self, name: str) -> None:
        try:
            await self.manager.unload(name, forget=True)
        except LookupError:
            pass
        self.reports.pop(name, None)
        log.info("deployment %s removed from this node", name)

    def drift(self) -> None:
        """Deployments reported READY whose model is no longer loaded (unloaded through the repository API, its
        session gone): marked FAILED, reported at once, and left for the next apply to load again."""
        drifted = []
        for name, report in sorted(self.reports.items()):
            versions = self.manager.models.get(name)
            if report.state == "READY" and not (versions and any(v.state is ModelState.READY
                                                                  for v in versions.values())):
                report.state, report.reason = "FAILED", "model is no longer loaded (unloaded outside the controller)"
                drifted.append(name)
        if drifted:
            log.warning("deployment(s) %s: no longer loaded here; loading again", ", ".join(drifted))
            self._changed()

    def statuses(self) -> list[InstanceReport]:
        self.drift()
        return [report for _, report in sorted(self.reports.items())]

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
