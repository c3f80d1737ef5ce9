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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from xpud.proto.oip import config_to_triton, mc, numpy_dtype

from .batcher import Batcher, BatcherClosed, BatchPolicy, Request
from .gpumemory import GpuMemory, growth
from .modelrepo import ModelConfigError, TensorSpec, complete_config, model_names, read_config, version_files
from .runtime import (
    ACCELERATOR_EPS,
    CPU,
    CUDA,
    ROCM,
    OrtInstance,
    Placement,
    SessionError,
    SessionOptions,
    available_providers,
    default_intra_threads,
)
from .stats import InferenceMetrics, ModelStats

log = logging.getLogger(__name__)


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


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def batch_policy(config: mc.ModelConfig) -> BatchPolicy:
    if not config.HasField("dynamic_batching"):
        return BatchPolicy(dynamic=False, max_batch_size=config.max_batch_size)
    db = config.dynamic_batching
    queue = db.default_queue_policy
    return BatchPolicy(
        dynamic=config.max_batch_size > 0,
        max_batch_size=config.max_batch_size,
        preferred_batch_sizes=tuple(db.preferred_batch_size),
        max_queue_delay_s=db.max_queue_delay_microseconds / 1e6,
        priority_levels=db.priority_levels,
        default_priority=db.default_priority_level,
        max_queue_size=queue.max_queue_size,
        default_timeout_s=queue.default_timeout_microseconds / 1e6,
        allow_timeout_override=queue.allow_timeout_override,
    )


def config_parameter(config: mc.ModelConfig, key: str, default: str = "") -> str:
    return config.parameters[key].string_value if key in config.parameters else default


def _true(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def placements(config: mc.ModelConfig, gpus: list[int], providers: list[str]) -> list[Placement]:
    """One placement per model instance, from instance_group and the node's GPUs."""
    fallback = _true(config_parameter(config, "allow_cpu_fallback"))
    accel = config.optimization.execution_accelerators
    gpu_eps = [ACCELERATOR_EPS[a.name.lower()] for a in accel.gpu_execution_accelerator
               if a.name.lower() in ACCELERATOR_EPS]
    base = ROCM if ROCM in providers and CUDA not in providers else CUDA
    gpu_chain = tuple(dict.fromkeys([*gpu_eps, base]))
    cpu_eps = [ACCELERATOR_EPS[a.name.lower()] for a in accel.cpu_execution_accelerator
               if a.name.lower() in ACCELERATOR_EPS]
    cpu_chain = tuple(dict.fromkeys([*cpu_eps, CPU]))
    out: list[Placement] = []
    kind_names = mc.ModelInstanceGroup.Kind
    for group in config.instance_group:
        count = group.count or 1
        kind = group.kind
        if kind == kind_names.KIND_AUTO:
            kind = kind_names.KIND_GPU if gpus and gpu_chain[-1] in providers else kind_names.KIND_CPU
        if kind == kind_names.KIND_GPU:
            devices = list(group.gpus) or gpus
            unknown = [d for d in devices if d not in gpus]
            if not gpus or unknown:
                if not fallback:
                    where = f"GPU(s) {unknown}" if gpus else "a GPU"
                    raise ModelConfigError(
                        f"{config.name}: instance_group asks for {where} but this node has "
                        f"{'GPUs ' + str(gpus) if gpus else 'none'}; use kind: KIND_CPU or allow_cpu_fallback"
                    )
                out.extend(Placement("cpu", None, cpu_chain) for _ in range(count))
                continue
            out.extend(Placement("gpu", d, gpu_chain, fallback) for d in devices for _ in range(count))
        elif kind == kind_names.KIND_CPU:
            out.extend(Placement("cpu", None, cpu_chain, fallback) for _ in range(count))
        else:
            raise ModelConfigError(f"{config.name}: instance_group kind {kind_names.Name(kind)} is not supported")
    return out


def session_options(config: mc.ModelConfig, cpu_instances: int) -> SessionOptions:
    intra = config_parameter(config, "intra_op_thread_count")
    inter = config_parameter(config, "inter_op_thread_count")
    level = {-1: "basic", 1: "extended"}.get(config.optimization.graph.level, "all")
    opts = SessionOptions(
        intra_op_threads=int(intra) if intra else (default_intra_threads(cpu_instances) if cpu_instances else 0),
        inter_op_threads=int(inter) if inter else 0,
        graph_level=config_parameter(config, "graph_optimization_level", level),
        mem_arena=_true(config_parameter(config, "enable_mem_arena", "true")),
        strict_ep=_true(config_parameter(config, "disable_cpu_ep_fallback")),
        allow_spinning=_true(spin) if (spin := config_parameter(config, "intra_op_allow_spinning")) else None,
        spinning_stop=_true(config_parameter(config, "intra_op_spinning_stop")),
    )
    for accel in config.optimization.execution_accelerators.gpu_execution_accelerator:
        ep = ACCELERATOR_EPS.get(accel.name.lower())
        if ep is None:
            continue
        params = dict(accel.parameters)
        if params.pop("precision_mode", "").upper() == "FP16":
            params["trt_fp16_enable"] = "True"
        if "max_workspace_size_bytes" in params:
            params["trt_max_workspace_size"] = params.pop("max_workspace_size_bytes")
        opts.provider_options[ep] = params
    return opts


def warmup_inputs(config: mc.ModelConfig) -> list[tuple[str, int, dict[str, np.ndarray]]]:
    """(name, count, inputs) per warm-up: model_warmup from the config, else zeros of a batch-1 request."""
    batched = config.max_batch_size > 0

    def tensor(dtype: int, dims: list[int], batch: int, zero: bool, rng: np.random.Generator) -> np.ndarray:
        shape = ([batch] if batched else []) + [d if d >= 0 else 1 for d in dims]
        triton = config_to_triton(dtype)
        if triton == "BYTES":
            return np.full(shape, b"", dtype=object)
        np_type = numpy_dtype(triton)
        if zero:
            return np.zeros(shape, dtype=np_type)
        return rng.random(shape).astype(np_type)

    rng = np.random.default_rng(0)
    reshape = {i.name: list(i.reshape.shape) for i in config.input if i.HasField("reshape")}
    plans = []
    for w in config.model_warmup:
        inputs = {}
        for name, spec in w.inputs.items():
            if spec.WhichOneof("input_data_type") == "input_data_file":
                raise ModelConfigError(f"{config.name}: warm-up {w.name!r}: input_data_file is not supported")
            batch = max(w.batch_size, 1)
            array = tensor(spec.data_type, list(spec.dims), batch, spec.zero_data, rng)
            if name in reshape:  # warm-up dims are what a client sends; the model takes the reshaped form
                array = array.reshape(([batch] if batched else []) + reshape[name])
            inputs[name] = array
        plans.append((w.name or "warmup", max(w.count, 1), inputs))
    if not plans:
        inputs = {i.name: tensor(i.data_type, reshape.get(i.name, list(i.dims)), 1, True, rng) for i in config.input}
        plans.append(("zeros", 1, inputs))
    return plans


def report_placement(config: mc.ModelConfig, instances: list[OrtInstance]) -> None:
    """Show in the served config where the instances really run: resolved instance groups and the EP in use."""
    groups: dict[tuple[str, int | None], int] = {}
    for inst in instances:
        key = (inst.placement.kind, inst.placement.device_id)
        groups[key] = groups.get(key, 0) + 1
    del config.instance_group[:]
    for (kind, device), count in groups.items():
        group = config.instance_group.add(count=count, name=f"{config.name}_{kind}{'' if device is None else device}")
        group.kind = mc.ModelInstanceGroup.KIND_GPU if kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU
        if device is not None:
            group.gpus.append(device)
    providers = ",".join(dict.fromkeys(inst.provider for inst in instances))
    config.parameters["xpud.execution_provider"].string_value = providers


def graph_specs(instance: OrtInstance) -> tuple[list[TensorSpec], list[TensorSpec]]:
    s = instance.session
    return ([TensorSpec(i.name, i.type, tuple(i.shape)) for i in s.get_inputs()],
            [TensorSpec(o.name, o.type, tuple(o.shape)) for o in s.get_outputs()])


class ModelManager:
    """Every model of the repository and the versions loaded from it."""

    def __init__(
        self,
        repo: Path,
        *,
        gpus: list[int] | None = None,
        metrics: InferenceMetrics | None = None,
        default_max_batch_size: int = 4,
        gpu_memory: GpuMemory | None = None,
    ) -> None:
        self.repo = repo
        self.gpus = gpus or []
        self.gpu_memory = gpu_memory  # NVML readings, to report a GPU model's memory on its device
        self.metrics = metrics
        self.default_max_batch_size = default_max_batch_size
        self.models: dict[str, dict[int, ModelVersion]] = {}
        self.failures: dict[str, str] = {}  # model -> why its last load failed
        self._locks: dict[str, asyncio.Lock] = {}

    def names(self) -> list[str]:
        return sorted(set(model_names(self.repo)) | set(self.models))

    async def load_all(self) -> None:
        for name in model_names(self.repo):
            try:
                await self.load(name)
            except Exception as exc:  # one bad model never stops the rest of the repository
                log.error("model %s failed to load: %s", name, exc)

    def _build(self, name: str) -> dict[int, ModelVersion]:
        """Blocking: parse, create sessions, complete the config, warm up. Runs in a thread."""
        model_dir = self.repo / name
        if not model_dir.is_dir():
            raise ModelNotFound(f"model {name!r} is not in the repository {str(self.repo)!r}")
        config = read_config(model_dir)
        files = version_files(model_dir, config)
        providers = available_providers()
        plans = {}
        for version in files:
            vconfig = mc.ModelConfig()
            vconfig.CopyFrom(config)
            plans[version] = (vconfig, placements(vconfig, self.gpus, providers))
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
                    instances.append(OrtInstance(path, placement, options, f"{name}_{version}_{i}"))
                report_placement(vconfig, instances)
                inputs, outputs = graph_specs(instances[0])
                complete_config(vconfig, inputs, outputs, self.default_max_batch_size)
                mv.output_names = [o.name for o in outputs]
                mv.stats = ModelStats(name, str(version), mv.provider, self.metrics)
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

    async def load(self, name: str) -> list[ModelVersion]:
        """Load (or reload) a model from the repository; old versions keep serving until the new ones are ready."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            loop = asyncio.get_running_loop()
            try:
                built = await loop.run_in_executor(None, self._build, name)
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
                                     [mv.runner(i) for i in mv.instances])
                await mv.batcher.start()
                mv.state = ModelState.READY
            old = self.models.get(name, {})
            self.models[name] = built
            self.failures.pop(name, None)
            for mv in built.values():
                log.info("model %s version %d READY on %s (%s), max_batch_size %d, %s MiB %s", name, mv.version,
                         ", ".join(i.placement.label() for i in mv.instances), mv.provider, mv.config.max_batch_size,
                         f"{mv.memory_bytes / 2**20:.1f}", "of GPU memory" if mv.memory_on_gpu else "of host memory")
        await self._retire(list(old.values()))
        return list(built.values())

    async def unload(self, name: str) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            versions = self.models.pop(name, None)
            if versions is None:
                if name in model_names(self.repo) or name in self.failures:
                    self.failures.pop(name, None)
                    return
                raise ModelNotFound(f"model {name!r} is not loaded and not in the repository")
        await self._retire(list(versions.values()))
        log.info("model %s unloaded", name)

    async def _retire(self, versions: list[ModelVersion]) -> None:
        for mv in versions:
            mv.state = ModelState.UNLOADING
            if mv.batcher is not None:
                await mv.batcher.close(drain=True)
            for inst in mv.instances:
                await asyncio.get_running_loop().run_in_executor(None, inst.close)
            mv.state = ModelState.UNAVAILABLE

    def get(self, name: str, version: str = "") -> ModelVersion:
        versions = self.models.get(name)
        if not versions:
            if name in self.failures:
                raise ModelUnavailable(f"model {name!r} is not ready: its load failed: {self.failures[name]}")
            if (self.repo / name).is_dir():
                raise ModelUnavailable(f"model {name!r} is not loaded (load it with RepositoryModelLoad)")
            raise ModelNotFound(f"unknown model {name!r}; models here: {', '.join(self.names()) or 'none'}")
        if version:
            if not version.isdigit() or int(version) not in versions:
                raise ModelNotFound(f"model {name!r} has no version {version!r}; versions: {sorted(versions)}")
            mv = versions[int(version)]
        else:
            mv = versions[max(versions)]
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
