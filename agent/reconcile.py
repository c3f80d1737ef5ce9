"""Desired model assignments -> models loaded on this node. Level-triggered and safe to run again.

The agent keeps a model repository of its own (``<cache>/repo``): each assignment
becomes ``repo/<deployment>/<version>/model.onnx`` (a hard link into the artifact
cache) and a ``config.pbtxt`` written from the assignment (batching, instances on
the assigned devices). The last desired state is kept in ``desired.json`` so a node
restarted while the controller is away serves what it served before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .artifacts import ArtifactCache, Fetch
from .models import ModelManager, ModelState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assignment:
    deployment: str
    model: str
    version: str
    digest: str
    size_bytes: int
    devices: tuple[str, ...]
    max_batch_size: int = 0

    def version_dir(self) -> str:
        return self.version if self.version.isdigit() else "1"


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


def gpu_index(device_id: str) -> int | None:
    """The execution-provider device id of a real GPU ("nvidia:1" -> 1); None for CPUs and simulated devices."""
    vendor, _, rest = device_id.partition(":")
    if vendor in ("nvidia", "amd") and rest.isdigit():
        return int(rest)
    return None


def config_text(a: Assignment) -> str:
    gpus = [g for g in (gpu_index(d) for d in a.devices) if g is not None]
    cpu_instances = len(a.devices) - len(gpus)
    lines = []
    if a.max_batch_size:
        lines += [f"max_batch_size: {a.max_batch_size}", "dynamic_batching { max_queue_delay_microseconds: 500 }"]
    groups = []
    if gpus:
        groups.append(f"{{ kind: KIND_GPU, count: 1, gpus: [{', '.join(str(g) for g in gpus)}] }}")
    if cpu_instances or not groups:
        groups.append(f"{{ kind: KIND_CPU, count: {max(cpu_instances, 1)} }}")
    lines.append(f"instance_group [{', '.join(groups)}]")
    return "\n".join(lines) + "\n"


class Reconciler:
    def __init__(self, manager: ModelManager, cache: ArtifactCache, state_file: Path) -> None:
        self.manager = manager
        self.cache = cache
        self.repo = manager.repo
        self.state_file = state_file
        self.applied = Applied()
        self.reports: dict[str, InstanceReport] = {}
        self._lock = asyncio.Lock()
        self.on_change: Callable[[], None] | None = None

    def saved(self) -> tuple[int, list[Assignment]]:
        """The desired state last applied on this node (survives restarts)."""
        try:
            data = json.loads(self.state_file.read_text())
            return int(data["generation"]), [Assignment(**{**a, "devices": tuple(a["devices"])})
                                             for a in data["assignments"]]
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
            for name, a in sorted(desired.items()):
                if current.get(name) == a and self._ready(name):
                    continue
                await self._install(a, fetch)
            # a failed assignment is not "applied": the next apply tries it again
            self.applied = Applied(generation, {n: a for n, a in desired.items() if self._ready(n)})
            self._save(generation, assignments)
            self._changed()

    def _ready(self, name: str) -> bool:
        report = self.reports.get(name)
        return report is not None and report.state == "READY"

    async def _install(self, a: Assignment, fetch: Fetch | None) -> None:
        report = InstanceReport(a.deployment, a.model, a.version, a.digest, "LOADING", devices=a.devices)
        self.reports[a.deployment] = report
        self._changed()
        try:
            if fetch is None:
                path = self.cache.path(a.digest)
                if path is None:
                    raise FileNotFoundError(f"artifact {a.digest[:12]} is not cached and no controller is connected")
            else:
                in_use = [x.digest for x in self.applied.assignments.values()]
                path = await self.cache.ensure(a.digest, a.size_bytes, fetch, in_use)
            folder = self.repo / a.deployment
            version = folder / a.version_dir()
            version.mkdir(parents=True, exist_ok=True)
            target = version / "model.onnx"
            if not target.exists() or not os.path.samefile(target, path):
                tmp = version / ".model.onnx.tmp"
                tmp.unlink(missing_ok=True)
                try:
                    os.link(path, tmp)
                except OSError:
                    shutil.copyfile(path, tmp)
                os.replace(tmp, target)
            for other in folder.iterdir():  # one version per deployment: the assigned one
                if other.is_dir() and other.name != a.version_dir():
                    shutil.rmtree(other, ignore_errors=True)
            (folder / "config.pbtxt").write_text(config_text(a))
            versions = await self.manager.load(a.deployment)
            report.state = "READY"
            report.execution_provider = versions[0].provider if versions else ""
            report.memory_bytes = sum(v.memory_bytes for v in versions)
            log.info("deployment %s: model %s:%s READY on %s", a.deployment, a.model, a.version, ", ".join(a.devices))
        except Exception as exc:
            report.state, report.reason = "FAILED", str(exc)
            log.error("deployment %s: %s", a.deployment, exc)

    async def _remove(self, name: str) -> None:
        try:
            await self.manager.unload(name)
        except LookupError:
            pass
        shutil.rmtree(self.repo / name, ignore_errors=True)
        self.reports.pop(name, None)
        log.info("deployment %s removed from this node", name)

    def statuses(self) -> list[InstanceReport]:
        out = []
        for name, report in sorted(self.reports.items()):
            versions = self.manager.models.get(name)
            if report.state == "READY" and not (versions and any(v.state is ModelState.READY
                                                                  for v in versions.values())):
                report.state, report.reason = "FAILED", "model is no longer loaded"
            out.append(report)
        return out

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()
