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
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..serving.manager import ModelManager, ModelState
from .artifacts import ArtifactCache, Fetch
from .assignment import Assignment, model_source, version_number

log = logging.getLogger(__name__)


@dataclass
class InstanceReport:
    deployment: str
    model: str
    version: str
    digest: str
    state: str  # LOADING, READY, FAILED, UNLOADING
    reason: str = ""
    devices: tuple[str, ...] = ()
    execution_provider: str = ""
    memory_bytes: int = 0


Key = tuple[str, str]  # (deployment, version): a deployment may be assigned here in several versions


@dataclass
class Applied:
    generation: int = 0
    assignments: dict[Key, Assignment] = field(default_factory=dict)


def _key(a: Assignment) -> Key:
    return a.deployment, a.version


class Reconciler:
    """A deployment assigned here in one version is loaded as one model, replaced make-before-break when its
    version or devices change (a rollout); one assigned in several versions (a traffic split with several of its
    replicas here) has each version loaded beside the others, and a version no longer assigned unloaded alone once
    the assigned ones serve. Either way it is served under its name, OIP ``model_version`` choosing the version."""

    def __init__(self, manager: ModelManager, cache: ArtifactCache, state_file: Path) -> None:
        self.manager = manager
        self.cache = cache
        self.state_file = state_file
        self.applied = Applied()
        self.reports: dict[Key, InstanceReport] = {}
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
            desired = {_key(a): a for a in assignments}
            per_name = Counter(name for name, _ in desired)  # versions assigned per deployment
            current = self.applied.assignments
            # reported in several versions now: a version goes beside the others, not in their place, even when one
            # alone is assigned (each version unloads drained, reported UNLOADING first, so requests named for it
            # stop coming before it is gone)
            reported = Counter(name for name, _ in self.reports)
            for name in sorted({n for n, _ in current} - set(per_name)):
                await self._remove(name)
            keep = {a.digest for a in (*current.values(), *desired.values())}  # the cache evicts none of these
            for a in sorted(desired.values(), key=lambda a: (-a.priority, a.deployment, a.version)):  # priority first
                if current.get(_key(a)) == a and self._ready(_key(a)):
                    continue
                await self._install(a, fetch, keep, alone=per_name[a.deployment] == 1 and reported[a.deployment] <= 1)
            # a version no longer assigned is unloaded once every version assigned serves (make before break)
            for name, version in sorted({*current, *self.reports} - desired.keys()):
                if name in per_name and all(self._ready(k) for k in desired if k[0] == name):
                    await self._remove_version(name, version)
            # a failed assignment is not "applied": the next apply tries it again
            self.applied = Applied(generation, {k: a for k, a in desired.items() if self._ready(k)})
            self._save(generation, assignments)
            self._changed()

    def _ready(self, key: Key) -> bool:
        report = self.reports.get(key)
        return report is not None and report.state == "READY"

    def _of(self, name: str) -> list[Key]:
        return [k for k in self.reports if k[0] == name]

    def _report(self, a: Assignment, report: InstanceReport, alone: bool) -> None:
        """Set an assignment's report; one loaded alone is the deployment's only report (its other versions were
        replaced by it)."""
        if alone:
            for k in self._of(a.deployment):
                del self.reports[k]
        self.reports[_key(a)] = report

    async def _install(self, a: Assignment, fetch: Fetch | None, keep: set[str], alone: bool = True) -> None:
        report = InstanceReport(a.deployment, a.model, a.version, a.digest, "LOADING", devices=a.devices)
        if not (any(self._ready(k) for k in self._of(a.deployment)) if alone else self._ready(_key(a))):
            self._report(a, report, alone)
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
            source = model_source(a, path)
            versions = await self.manager.load(a.deployment, source) if alone else \
                [await self.manager.load_version(a.deployment, source)]
            self._report(a, report, alone)
            report.state = "READY"
            report.execution_provider = versions[0].provider if versions else ""
            report.memory_bytes = sum(v.memory_bytes for v in versions)
            log.info("deployment %s: model %s:%s READY on %s (priority %d)", a.deployment, a.model, a.version,
                     ", ".join(a.devices), a.priority)
        except Exception as exc:
            self._report(a, report, alone)
            report.state, report.reason = "FAILED", str(exc)
            log.error("deployment %s: %s", a.deployment, exc)

    async def _remove(self, name: str) -> None:
        try:
            await self.manager.unload(name, forget=True)
        except LookupError:
            pass
        for k in self._of(name):
            del self.reports[k]
        log.info("deployment %s removed from this node", name)

    async def _remove_version(self, name: str, version: str) -> None:
        """One version of a deployment served here in several (or once in several) no longer assigned: unloaded
        alone, drained, its other versions serving on."""
        report = self.reports.get((name, version))
        if report is not None:  # no new request is routed to it from now on
            report.state, report.reason = "UNLOADING", "no longer assigned here"
            self._changed()
        number = version_number(version)
        # two versions that are no numbers are both served as 1 (`Assignment.version_number`): keep the other's
        if not any(version_number(v) == number for n, v in self.reports if n == name and v != version):
            try:
                await self.manager.unload_version(name, number)
            except LookupError:
                pass  # replaced already by the version loaded alone
        self.reports.pop((name, version), None)
        log.info("deployment %s: version %s removed from this node", name, version)

    def drift(self) -> None:
        """Deployments reported READY whose model is no longer loaded (unloaded through the repository API, its
        session gone): marked FAILED, reported at once, and left for the next apply to load again. A deployment
        reported in several versions: each version's own model."""
        drifted = []
        counts = Counter(name for name, _ in self.reports)
        for (name, version), report in sorted(self.reports.items()):
            versions = self.manager.models.get(name) or {}
            if counts[name] > 1:
                mv = versions.get(version_number(version))
                serving = mv is not None and mv.state is ModelState.READY
            else:
                serving = any(v.state is ModelState.READY for v in versions.values())
            if report.state == "READY" and not serving:
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
