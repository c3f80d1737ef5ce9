"""The models as stored (cached between passes) and each deployment's memory estimate per replica."""

from __future__ import annotations

from collections.abc import Sequence

from .core import DeploymentSpec
from .pool import Pool
from .store import ModelRecord, StateStore
from .storethread import StoreThread

MEMORY_FACTOR = 3  # replica memory estimate: model file size x this, until the agent measures it
MIN_MEMORY = 64 << 20


class Catalog:
    """The models as stored, resolved like ``SqliteStore.model``: a version, or the latest (highest whole number)."""

    def __init__(self, models: Sequence[ModelRecord]) -> None:
        self.exact = {(m.name, m.version): m for m in models}
        self.latest: dict[str, ModelRecord] = {}
        for m in models:  # in creation order, so among versions that are not whole numbers the last one wins
            held = self.latest.get(m.name)
            if held is None or _rank(m.version) >= _rank(held.version):
                self.latest[m.name] = m

    def find(self, name: str, version: str) -> ModelRecord | None:
        return self.exact.get((name, version)) if version else self.latest.get(name)


class Models:
    """The catalog, read again after `changed`, or when a wanted (name, version) is not in it (a model written
    past `changed`, or truly gone)."""

    def __init__(self, store: StateStore, thread: StoreThread) -> None:
        self.store, self.thread = store, thread
        self._catalog: Catalog | None = None

    async def catalog(self, *wanted: tuple[str, str]) -> Catalog:
        if self._catalog is not None and any(self._catalog.find(name, version) is None for name, version in wanted):
            self._catalog = None
        if self._catalog is None:
            self._catalog = Catalog(await self.thread.soon(self.store.models))
        return self._catalog

    def changed(self) -> None:
        self._catalog = None


class Measured:
    """Per deployment, the most memory a READY instance uses per device. Kept per node, and updated from the nodes
    that reported since the last call: a join storm does not walk every node's instances each pass."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._by: dict[str, dict[str, int]] = {}  # node -> deployment -> memory per device, READY ones
        self._most: dict[str, int] = {}  # deployment -> the most of those

    def __call__(self) -> dict[str, int]:
        by, most = self._by, self._most
        dropped: set[str] = set()
        for name in self.pool.take_reported():
            node = self.pool.nodes.get(name)
            now: dict[str, int] = {}
            for inst in (node.every_instance() if node is not None else ()):
                if inst.state == "READY" and inst.memory_bytes:  # several versions here: the most of them
                    per_device = inst.memory_bytes // max(len(inst.devices), 1)
                    now[inst.deployment] = max(now.get(inst.deployment, 0), per_device)
            before = by.pop(name, {})
            if now:
                by[name] = now
            for deployment, memory in now.items():
                if memory >= most.get(deployment, 0):
                    most[deployment] = memory
            dropped.update(d for d, memory in before.items() if now.get(d, 0) < memory == most.get(d))
        for deployment in dropped:  # the node that held the most reports less now: the most of the others
            values = [held[deployment] for held in by.values() if deployment in held]
            if values:
                most[deployment] = max(values)
            else:
                del most[deployment]
        return most


def estimate(spec: DeploymentSpec, measured: dict[str, int], catalog: Catalog) -> int:
    """Per replica: what the user said; else what an agent measured; else the model file x a factor."""
    if spec.memory_bytes:
        return spec.memory_bytes
    if spec.name in measured:
        return max(measured[spec.name], MIN_MEMORY)
    model = catalog.find(spec.model, spec.version)
    return max((model.size if model is not None else 0) * MEMORY_FACTOR, MIN_MEMORY)


def _rank(version: str) -> tuple[int, int]:
    """Whole-number versions above the others, by number; the others all rank the same (the later one wins)."""
    return (1, int(version)) if version.isdigit() else (0, 0)
