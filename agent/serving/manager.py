"""Loaded models: each version's ORT instances, batcher and statistics; load and unload at run time.

Unload is graceful: the version stops taking requests, its batcher drains what is
queued and running, then the sessions are released. A reload builds the new
version beside the old one and swaps them, so traffic never sees a gap.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from xpud.proto.oip import config_to_triton, mc

from .batcher import BatchDone, Batcher, BatcherClosed, Request
from .gpumemory import GpuMemory, growth
from .modelconfig import batch_policy, bind_devices, placements, report_placement, session_options, warmup_inputs
from .repository import ModelConfigError, ModelSource, TensorSpec, complete_config, model_names, read_model
from .runtime import CPU, OrtInstance, RunFailed, SessionError, available_providers
from .stats import InferenceMetrics, ModelStats

log = logging.getLogger(__name__)

# One model run's outcome on one device: (device id, ok, requests). The telemetry's health book takes it.
Outcome = Callable[[str, bool, int], None]
RUN_FAILURE_LOG_S = 10.0  # a failing device is logged at most once per instance in this long
# a request for a model removed from this node within this long (sent before its router heard) gets UNAVAILABLE,
# which a router retries on another replica, not NOT_FOUND
REMOVED_S = 30.0
MODEL_PARAMETER = "xpud.model"  # in a served config's parameters: the registry's model name (the metrics' label)


class ModelState(enum.StrEnum):
    LOADING = "LOADING"
    READY = "READY"
    UNAVAILABLE = "UNAVAILABLE"
    UNLOADING = "UNLOADING"


class ModelNotFound(LookupError):
    """NOT_FOUND: no such model or version."""


class ModelUnavailable(RuntimeError):
    """UNAVAILABLE: the model exists but does not serve right now (loading, failed, unloading)."""


@dataclass
class Batch:
    """What a request hands the batcher: decoded model inputs."""

    inputs: dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSpec:
    """What a request's input must look like, read once from the served config."""

    name: str
    datatype: str  # Triton's name: FP32, INT64, BYTES, ...
    dims: tuple[int, ...]  # without the batch dimension; -1: any size
    reshape: tuple[int, ...] | None  # the shape the model takes instead, if the config reshapes it
    optional: bool


@dataclass
class ModelVersion:
    name: str
    version: int
    config: mc.ModelConfig
    instances: list[OrtInstance]
    stats: ModelStats
    batcher: Batcher | None = None
    state: ModelState = ModelState.LOADING
    output_names: list[str] = field(default_factory=list)
    memory_bytes: int = 0  # what loading and warming up took on its devices: GPU memory if on GPUs, else host
    host_memory_bytes: int = 0  # this process's host memory growth over the same load
    memory_on_gpu: bool = False  # memory_bytes was read from NVML on the instances' GPUs

    @property
    def provider(self) -> str:
        return self.instances[0].provider if self.instances else CPU

    # Looked up on every request: derived once from the (complete, then unchanging) served config.
    @functools.cached_property
    def inputs(self) -> dict[str, InputSpec]:
        return {i.name: InputSpec(i.name, config_to_triton(i.data_type), tuple(i.dims),
                                  tuple(i.reshape.shape) if i.HasField("reshape") else None, i.optional)
                for i in self.config.input}

    @functools.cached_property
    def output_types(self) -> dict[str, str]:
        return {o.name: config_to_triton(o.data_type) for o in self.config.output}

    @functools.cached_property
    def output_reshapes(self) -> dict[str, tuple[int, ...]]:
        return {o.name: tuple(o.dims) for o in self.config.output if o.HasField("reshape")}

    def runner(self, instance: OrtInstance) -> Callable[[list[Request]], list[Any]]:
        """Run one batch on ``instance``: concatenate, ``session.run``, split. Called on the instance's thread."""
        names = [i.name for i in self.config.input]
        batching = self.config.max_batch_size > 0

        def run(batch: list[Request]) -> list[Any]:
            t0 = time.perf_counter_ns()
            if len(batch) == 1:
                feed = batch[0].payload.inputs
            else:
                feed = {n: np.concatenate([r.payload.inputs[n] for r in batch]) for n in names}
            t1 = time.perf_counter_ns()
            outputs = instance.run(feed, self.output_names)
            t2 = time.perf_counter_ns()
            if len(batch) == 1:
                results = [dict(zip(self.output_names, outputs, strict=True))]
            else:
                results = []
                offset = 0
                for r in batch:
                    end = offset + r.batch_size
                    results.append({n: o[offset:end] for n, o in zip(self.output_names, outputs, strict=True)})
                    offset = end
            t3 = time.perf_counter_ns()
            compute = (t1 - t0, t2 - t1, t3 - t2)
            self.stats.batch_done(sum(r.batch_size for r in batch) if batching else 1, compute)
            return [(res, compute) for res in results]

        return run


def device_outcome(error: BaseException | None) -> bool | None:
    """What a batch's end says of its device: True (it ran), False (the device failed the run), None (nothing:
    the request's tensors were refused, the model was unloading, ...)."""
    if error is None:
        return True
    return False if isinstance(error, RunFailed) else None


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def graph_specs(instance: OrtInstance) -> tuple[list[TensorSpec], list[TensorSpec]]:
    s = instance.session
    return ([TensorSpec(i.name, i.type, tuple(i.shape)) for i in s.get_inputs()],
            [TensorSpec(o.name, o.type, tuple(o.shape)) for o in s.get_outputs()])


class ModelManager:
    """Every model this agent serves: those of its repository folder (if any) and those handed to it as
    sources (the controller's assignments), and the versions loaded of each."""

    def __init__(
        self,
        repo: Path | None,
        *,
        gpus: list[int] | None = None,
        metrics: InferenceMetrics | None = None,
        default_max_batch_size: int = 4,
        gpu_memory: GpuMemory | None = None,
        gpu_devices: Mapping[int, str] | None = None,
        outcomes: Outcome | None = None,
        device_checks: Mapping[str, Callable[[], None]] | None = None,
    ) -> None:
        """``gpu_devices``: the node's device id of each GPU index (for repository models); ``outcomes``: told
        each batch's outcome on each device it ran on (successes, and failures of the device's own, not the
        request's); ``device_checks``: per device id, called before each run (a simulated fault raises)."""
        self.repo = repo
        self.gpus = gpus or []
        self.gpu_devices = dict(gpu_devices or {})
        self.outcomes = outcomes
        self.device_checks = dict(device_checks or {})
        self.gpu_memory = gpu_memory  # NVML readings, to report a GPU model's memory on its device
        self.metrics = metrics
        self.default_max_batch_size = default_max_batch_size
        self.models: dict[str, dict[int, ModelVersion]] = {}
        self.sources: dict[str, ModelSource] = {}  # models given in memory, not read from the repository
        self.failures: dict[str, str] = {}  # model -> why its last load failed
        # versions unloaded alone (`unload_version`): a request still named for one (sent before its router heard)
        # gets UNAVAILABLE, which a router retries elsewhere, not NOT_FOUND
        self.dropped: dict[str, set[int]] = {}
        self.removed: dict[str, float] = {}  # models unloaded for good (their replica left), by when (`REMOVED_S`)
        self._locks: dict[str, asyncio.Lock] = {}

    def _repo_names(self) -> list[str]:
        return model_names(self.repo) if self.repo is not None else []

    def known(self, name: str) -> bool:
        """A model this manager can load: in its repository or given as a source."""
        return name in self.sources or (self.repo is not None and (self.repo / name).is_dir())

    def names(self) -> list[str]:
        return sorted(set(self._repo_names()) | set(self.sources) | set(self.models))

    async def load_all(self) -> None:
        for name in self._repo_names():
            try:
                await self.load(name)
            except Exception as exc:  # one bad model never stops the rest of the repository
                log.error("model %s failed to load: %s", name, exc)

    async def rescan(self, repo: Path) -> tuple[list[str], list[str]]:
        """Serve `repo` as it is now (SIGHUP): load the models that appeared in it, unload those gone from it.
        Returns (loaded, unloaded); a model that fails to load is logged and the rest go on."""
        self.repo = repo
        names = set(self._repo_names())
        gone = sorted(n for n in self.models if n not in self.sources and n not in names)
        for name in gone:
            await self.unload(name)
        appeared = sorted(n for n in names if n not in self.models and n not in self.sources)
        loaded = []
        for name in appeared:
            try:
                await self.load(name)
                loaded.append(name)
            except Exception as exc:  # one bad model never stops the rest of the repository
                log.error("model %s failed to load: %s", name, exc)
        return loaded, gone

    def _source(self, name: str) -> ModelSource:
        """A model given in memory, else read afresh from the repository."""
        if name in self.sources:
            return self.sources[name]
        if self.repo is None or not (self.repo / name).is_dir():
            where = f"in the repository {str(self.repo)!r}" if self.repo is not None else "assigned to this node"
            raise ModelNotFound(f"model {name!r} is not {where}")
        return read_model(self.repo, name)

    def _build(self, name: str, source: ModelSource | None) -> dict[int, ModelVersion]:
        """Blocking: read the source, create sessions, complete the config, warm up. Runs in a thread."""
        if source is None:
            source = self._source(name)
        files = source.files
        providers = available_providers()
        plans = {}
        for version in files:
            vconfig = mc.ModelConfig()
            vconfig.CopyFrom(source.config)
            where = placements(vconfig, self.gpus, providers)
            plans[version] = (vconfig, bind_devices(where, source.devices, self.gpu_devices))
        on_gpus = sorted({p.device_id for _, where in plans.values() for p in where
                          if p.kind == "gpu" and p.device_id is not None})
        gpu_before = {d: self.gpu_memory.read(d) for d in on_gpus} if self.gpu_memory else {}
        rss_before = _rss()
        built: dict[int, ModelVersion] = {}
        try:
            for version, path in files.items():
                vconfig, where = plans[version]
                cpu_count = sum(p.kind == "cpu" for p in where)
                options = session_options(vconfig, cpu_count)
                instances: list[OrtInstance] = []
                mv = ModelVersion(name, version, vconfig, instances, ModelStats(name, str(version), CPU))
                built[version] = mv
                for i, placement in enumerate(where):
                    checks = tuple(c for d in placement.devices if (c := self.device_checks.get(d)) is not None)
                    instances.append(OrtInstance(path, placement, options, f"{name}_{version}_{i}", name, checks))
                report_placement(vconfig, instances)
                inputs, outputs = graph_specs(instances[0])
                complete_config(vconfig, inputs, outputs, self.default_max_batch_size)
                mv.output_names = [o.name for o in outputs]
                model = vconfig.parameters[MODEL_PARAMETER].string_value \
                    if MODEL_PARAMETER in vconfig.parameters else ""
                mv.stats = ModelStats(name, str(version), mv.provider, self.metrics, model)
                self._warm_up(mv)
            # what loading cost (sessions, weights, arenas after warm-up), for the controller's placement: on
            # the GPUs the instances run on when NVML can tell, else this process's host memory
            host = max(_rss() - rss_before, 0)
            gpu_memory = self.gpu_memory
            gpu = [growth(before, gpu_memory.read(d)) for d, before in gpu_before.items()] if gpu_memory else []
            measured = [g for g in gpu if g is not None]
            grown = sum(measured) if measured else host
            for mv in built.values():
                mv.host_memory_bytes = host // max(len(built), 1)
                mv.memory_bytes = grown // max(len(built), 1)
                mv.memory_on_gpu = bool(measured)
        except BaseException:
            for mv in built.values():
                mv.stats.close()
                for inst in mv.instances:
                    inst.close()
            raise
        return built

    def _warm_up(self, mv: ModelVersion) -> None:
        for inst in mv.instances:
            for warm_name, count, inputs in warmup_inputs(mv.config):
                for _ in range(count):
                    try:
                        inst.run(inputs)
                    except Exception as exc:
                        raise SessionError(f"{mv.name}: warm-up {warm_name!r} failed on {inst.placement.label()}: "
                                           f"{' '.join(str(exc).split())[:400]}") from None

    async def load(self, name: str, source: ModelSource | None = None) -> list[ModelVersion]:
        """Load (or reload) a model from ``source``, else from the source it was last given or the repository.

        Old versions keep serving until the new ones are ready. A model given a source keeps it: a later
        ``load(name)`` (RepositoryModelLoad) loads it again from there.
        """
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            if source is not None:
                if source.config.name != name:
                    raise ModelConfigError(f"model {name!r}: its source is named {source.config.name!r}")
                self.sources[name] = source
            loop = asyncio.get_running_loop()
            try:
                built = await loop.run_in_executor(None, self._build, name, source)
            except ModelNotFound:
                raise
            except (ModelConfigError, SessionError) as exc:
                self.failures[name] = str(exc)
                raise
            except Exception as exc:
                log.exception("model %s: unexpected load failure", name)
                self.failures[name] = f"{type(exc).__name__}: {exc}"
                raise SessionError(f"{name}: load failed: {type(exc).__name__}: {exc}") from exc
            for mv in built.values():
                mv.batcher = Batcher(f"{name}:{mv.version}", batch_policy(mv.config),
                                     [mv.runner(i) for i in mv.instances], on_done=self._outcome_sink(mv))
                await mv.batcher.start()
                mv.state = ModelState.READY
            old = self.models.get(name, {})
            self.models[name] = built
            self.failures.pop(name, None)
            self.dropped.pop(name, None)
            for mv in built.values():
                log.info("model %s version %d READY on %s (%s), max_batch_size %d, %s MiB %s", name, mv.version,
                         ", ".join(" ".join(i.placement.devices) or i.placement.label() for i in mv.instances),
                         mv.provider, mv.config.max_batch_size,
                         f"{mv.memory_bytes / 2**20:.1f}", "of GPU memory" if mv.memory_on_gpu else "of host memory")
        await self._retire([mv for mv in old.values() if mv.state is ModelState.READY])  # not those unloading
        return list(built.values())

    async def load_version(self, name: str, source: ModelSource) -> ModelVersion:
        """Load the one version ``source`` holds beside the versions of ``name`` already loaded (a deployment served
        in several versions on this node); the same version loaded before (other devices, say) keeps serving until
        the new one is ready, the others are not touched. The model's source then holds every version so loaded."""
        if len(source.files) != 1:
            raise ModelConfigError(f"model {name!r}: load_version takes one version, not {sorted(source.files)}")
        if source.config.name != name:
            raise ModelConfigError(f"model {name!r}: its source is named {source.config.name!r}")
        version = next(iter(source.files))
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            loop = asyncio.get_running_loop()
            try:
                built = (await loop.run_in_executor(None, self._build, name, source))[version]
            except (ModelConfigError, SessionError) as exc:
                self.failures[name] = str(exc)
                raise
            except Exception as exc:
                log.exception("model %s version %d: unexpected load failure", name, version)
                self.failures[name] = f"{type(exc).__name__}: {exc}"
                raise SessionError(f"{name}: version {version} failed to load: {type(exc).__name__}: {exc}") from exc
            built.batcher = Batcher(f"{name}:{version}", batch_policy(built.config),
                                    [built.runner(i) for i in built.instances], on_done=self._outcome_sink(built))
            await built.batcher.start()
            built.state = ModelState.READY
            held = self.models.get(name, {})
            old = held.get(version)
            self.models[name] = {**held, version: built}  # a new dict: an unload in flight sees it was loaded again
            self.dropped.get(name, set()).discard(version)
            given = self.sources.get(name)
            files = {**(given.files if given is not None else {}), version: source.files[version]}
            self.sources[name] = ModelSource(source.config, files, source.devices)
            self.failures.pop(name, None)
            log.info("model %s version %d READY beside %s on %s (%s)", name, version,
                     sorted(v for v in held if v != version) or "none",
                     ", ".join(" ".join(i.placement.devices) or i.placement.label() for i in built.instances),
                     built.provider)
        if old is not None and old.state is ModelState.READY:
            await self._retire([old])
        return built

    async def unload_version(self, name: str, version: int) -> None:
        """Unload one version of a model, drained, the others serving on (ModelNotFound: not loaded)."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            mv = self.models.get(name, {}).get(version)
            if mv is None:
                raise ModelNotFound(f"model {name!r} has no version {version} loaded")
            mv.state = ModelState.UNLOADING  # listed until drained: a request meanwhile gets UNAVAILABLE
            given = self.sources.get(name)
            if given is not None and version in given.files:
                self.sources[name] = ModelSource(given.config, {v: p for v, p in given.files.items() if v != version},
                                                 given.devices)
        await self._retire([mv])
        async with lock:
            held = self.models.get(name, {})
            if held.get(version) is mv:  # not loaded again meanwhile
                rest = {v: m for v, m in held.items() if v != version}
                self.dropped.setdefault(name, set()).add(version)
                if rest:
                    self.models[name] = rest
                else:
                    del self.models[name]
        log.info("model %s version %d unloaded", name, version)

    def _outcome_sink(self, mv: ModelVersion) -> BatchDone:
        """Each batch's outcome, counted against the device(s) its instance ran on: a success, or a RunFailed
        (the device failed the run; logged, at most once per instance per RUN_FAILURE_LOG_S). Anything else (the
        request's tensors, an unload) is not the device's doing."""
        record = self.outcomes
        devices = [inst.placement.devices for inst in mv.instances]
        logged = [-RUN_FAILURE_LOG_S] * len(devices)  # when each instance's failure was last logged

        def done(index: int, requests: int, error: BaseException | None) -> None:
            ok = device_outcome(error)
            if ok is None:
                return
            if not ok and (now := time.monotonic()) - logged[index] >= RUN_FAILURE_LOG_S:
                logged[index] = now
                log.warning("model %s version %d: a run failed on %s: %s", mv.name, mv.version,
                            ", ".join(devices[index]) or mv.instances[index].placement.label(), error)
            if record is not None:
                for device in devices[index]:
                    record(device, ok, requests)

        return done

    async def unload(self, name: str, *, forget: bool = False) -> None:
        """Unload every version of a model; ``forget`` also drops the source it was given (it is gone)."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            known = self.known(name)
            self.dropped.pop(name, None)
            if forget:
                self.sources.pop(name, None)
            versions = self.models.get(name)
            if versions is None:
                if known or name in self.failures:
                    self.failures.pop(name, None)
                    return
                raise ModelNotFound(f"model {name!r} is not loaded and not in the repository")
            # listed as UNLOADING until drained: a request that arrives meanwhile (sent before its router heard)
            # gets UNAVAILABLE, which a router retries elsewhere, not NOT_FOUND
            for mv in versions.values():
                mv.state = ModelState.UNLOADING
        await self._retire(list(versions.values()))
        if self.models.get(name) is versions:  # not loaded again meanwhile
            del self.models[name]
            if forget:
                self.removed[name] = time.monotonic()
        log.info("model %s unloaded", name)

    async def _retire(self, versions: list[ModelVersion]) -> None:
        for mv in versions:
            mv.state = ModelState.UNLOADING
            if mv.batcher is not None:
                await mv.batcher.close(drain=True)
            for inst in mv.instances:
                await asyncio.get_running_loop().run_in_executor(None, inst.close)
            mv.state = ModelState.UNAVAILABLE
            mv.stats.close()

    def get(self, name: str, version: str = "") -> ModelVersion:
        versions = self.models.get(name)
        if not versions:
            if time.monotonic() - self.removed.get(name, -REMOVED_S) < REMOVED_S:
                raise ModelUnavailable(f"model {name!r} was unloaded here a moment ago (its replica left this node)")
            if name in self.failures:
                raise ModelUnavailable(f"model {name!r} is not ready: its load failed: {self.failures[name]}")
            if self.known(name):
                raise ModelUnavailable(f"model {name!r} is not loaded (load it with RepositoryModelLoad)")
            raise ModelNotFound(f"unknown model {name!r}; models here: {', '.join(self.names()) or 'none'}")
        if version:
            if not version.isdigit() or int(version) not in versions:
                if version.isdigit() and int(version) in self.dropped.get(name, ()):
                    raise ModelUnavailable(f"model {name!r} version {version} was unloaded here")
                raise ModelNotFound(f"model {name!r} has no version {version!r}; versions: {sorted(versions)}")
            mv = versions[int(version)]
        else:  # the highest version; while it unloads beside others, the highest that serves
            mv = versions[max(versions)]
            if mv.state is not ModelState.READY and len(versions) > 1:
                mv = max((m for m in versions.values() if m.state is ModelState.READY), key=lambda m: m.version,
                         default=mv)
        if mv.state is not ModelState.READY:
            raise ModelUnavailable(f"model {name!r} version {mv.version} is {mv.state.value}")
        return mv

    async def infer(self, mv: ModelVersion, request: Request) -> tuple[Any, float]:
        assert mv.batcher is not None
        try:
            return await mv.batcher.submit(request)
        except BatcherClosed:
            raise ModelUnavailable(f"model {mv.name!r} version {mv.version} is unloading") from None

    async def close(self) -> None:
        for name in list(self.models):
            await self.unload(name)
        if self.gpu_memory is not None:
            self.gpu_memory.close()
