"""A model's configuration -> what the runtime needs: instance placements, session options, batch policy, warm-up.

Plain functions of a Triton ModelConfig (completed from the graph or not) that build the agent's own types.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from xpud.proto.devices import DEFAULT_GPU_PROVIDERS, GPU_VENDORS, gpu_index
from xpud.proto.oip import config_to_triton, mc, numpy_dtype

from .batchpolicy import BatchPolicy
from .repository import ModelConfigError
from .runtime import ACCELERATOR_EPS, CPU, OrtInstance, Placement, SessionOptions, default_intra_threads


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
    # the first GPU vendor whose main provider this ONNX Runtime build has (CUDA when none)
    base = next((eps[0] for eps in GPU_VENDORS.values() if eps[0] in providers), DEFAULT_GPU_PROVIDERS[0])
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


def bind_devices(where: list[Placement], assigned: Sequence[str], gpu_devices: Mapping[int, str]) -> list[Placement]:
    """Each placement with the device id it runs on, for its outcomes to count against: a GPU one by its index
    (among the ``assigned`` devices when given, else the node's ``gpu_devices``); the CPU ones take the assigned
    devices that are no GPU of an execution provider (simulated GPUs, CPUs), in order, as ``model_config`` made
    one CPU instance for each."""
    gpus = {i: d for d in assigned if (i := gpu_index(d)) is not None} if assigned else gpu_devices
    others = iter([d for d in assigned if gpu_index(d) is None])
    out = []
    for p in where:
        device = gpus.get(p.device_id) if p.kind == "gpu" and p.device_id is not None else \
            next(others, None) if p.kind == "cpu" else None
        out.append(dataclasses.replace(p, devices=(device,)) if device else p)
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
