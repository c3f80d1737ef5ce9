"""ONNX Runtime sessions bound to one device with an explicit execution provider.

onnxruntime-gpu lists CUDA and TensorRT even on a machine without a GPU, and a
session asked for them silently runs on the CPU. So every session is checked
after creation: the provider asked for must be the first one in use, else the
load fails loudly, unless the model's config allows a CPU fallback.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from xpud.proto.devices import GPU_VENDORS

from .providers import load_onnxruntime

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
ROCM = "ROCMExecutionProvider"
MIGRAPHX = "MIGraphXExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
NVIDIA_EPS = frozenset(GPU_VENDORS["nvidia"])  # they need the CUDA libraries loaded
GPU_EPS = frozenset(ep for eps in GPU_VENDORS.values() for ep in eps)  # they take a "device_id" option
ACCELERATOR_EPS = {"tensorrt": TENSORRT, "cuda": CUDA, "rocm": ROCM, "migraphx": MIGRAPHX, "openvino": OPENVINO}
BF16 = np.dtype(ml_dtypes.bfloat16)
ONNX_BFLOAT16 = 16  # TensorProto.BFLOAT16
GRAPH_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                "all": "ORT_ENABLE_ALL"}


class SessionError(Exception):
    """A session that cannot be created as asked (bad model file, missing op, wrong EP)."""


class RunFailed(RuntimeError):
    """A run that failed on its device (ONNX Runtime's Fail/RuntimeException/EPFail, a CUDA error), not because
    of what the request held: INTERNAL, and counted against the health of the instance's device(s)."""


class InputRejected(ValueError):
    """ONNX Runtime refused the request's tensors (its INVALID_ARGUMENT: type, rank, dimensions): the client's
    to fix, never counted against the device."""


@dataclass(frozen=True)
class Placement:
    """Where one model instance runs: the providers to ask for, in order, and the device."""

    kind: str  # "cpu" | "gpu"
    device_id: int | None
    providers: tuple[str, ...]  # e.g. (TENSORRT, CUDA) or (CPU,)
    allow_cpu_fallback: bool = False
    # the node's device ids the instance runs on ("nvidia:0", "sim:1": a simulated GPU runs on the CPU EP);
    # () when not known (a CPU instance of a repository model): its outcomes count against no device
    devices: tuple[str, ...] = ()

    @property
    def wanted(self) -> str:
        return self.providers[0]

    def label(self) -> str:
        return "cpu" if self.kind == "cpu" else f"gpu:{self.device_id}"


@dataclass
class SessionOptions:
    intra_op_threads: int = 0  # 0: ONNX Runtime's default (one per core)
    inter_op_threads: int = 0
    graph_level: str = "all"
    mem_arena: bool = True
    strict_ep: bool = False  # refuse a session in which any node falls back to the CPU EP
    allow_spinning: bool | None = None  # intra-op threads busy-wait for work; None: ONNX Runtime's default
    # stop that spinning as soon as a run returns (session.force_spinning_stop): leaves the cores to the event
    # loop between runs; off by default, as it costs latency at low concurrency
    spinning_stop: bool = False
    provider_options: dict[str, dict[str, str]] = field(default_factory=dict)


def available_providers() -> list[str]:
    """The execution providers that can run here: what this onnxruntime build lists, less those that failed
    to run a probe model (CUDA listed on a host without a GPU or its libraries). Probed once per process."""
    from .providers import usable_providers

    return usable_providers()


class OrtInstance:
    """One ONNX Runtime session on one device.

    ``run`` is blocking: the model's batcher calls it on the instance's own thread, one batch at a time,
    so the threads running models are bounded by the instance count.
    """

    def __init__(self, model_path: Path, placement: Placement, options: SessionOptions, name: str,
                 model: str | None = None, checks: tuple[Callable[[], None], ...] = ()) -> None:
        """``model``: the model's name in messages (default: the repository folder that holds the file);
        ``checks``: called before each run, they raise as the device's driver would (a simulated fault)."""
        ort = load_onnxruntime(gpu_libraries=placement.wanted in NVIDIA_EPS)
        self.name = name
        self.placement = placement
        self.checks = checks
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.inter_op_num_threads = options.inter_op_threads
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, GRAPH_LEVELS[options.graph_level])
        so.enable_cpu_mem_arena = options.mem_arena
        so.log_severity_level = 3
        if options.allow_spinning is not None:  # spinning threads compete with the event loop for the cores
            so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.allow_spinning else "0")
        if options.spinning_stop:
            so.add_session_config_entry("session.force_spinning_stop", "1")
        if placement.wanted != CPU and options.strict_ep:
            # every node on the asked-for EP, or no session (by default a few CPU-only ops may stay on the CPU)
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        providers: list[Any] = []
        for ep in placement.providers:
            opts = dict(options.provider_options.get(ep, {}))
            if ep in GPU_EPS and placement.device_id is not None:
                opts.setdefault("device_id", str(placement.device_id))
            providers.append((ep, opts))
        if CPU not in placement.providers and placement.allow_cpu_fallback:
            providers.append((CPU, {}))
        started = time.perf_counter()
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=so, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
            hint = ""
            if placement.wanted != CPU:
                hint = (f" ({placement.wanted} could not take the graph on {placement.label()}: check the driver, "
                        "the CUDA/cuDNN libraries onnxruntime-gpu needs, and ONNX Runtime's log above)")
            raise SessionError(_short(f"{model or model_path.parent.parent.name}: cannot load {model_path.name} "
                                      f"on {placement.label()} with {placement.wanted}: {exc}{hint}")) from None
        self.load_seconds = time.perf_counter() - started
        in_use = self.session.get_providers()
        self.provider = in_use[0] if in_use else CPU
        if self.provider != placement.wanted:
            if not placement.allow_cpu_fallback:
                raise SessionError(
                    f"{name}: asked for {placement.wanted} on {placement.label()} but ONNX Runtime runs it on "
                    f"{self.provider} (providers available here: {', '.join(available_providers())}); set "
                    'parameters { key: "allow_cpu_fallback" value { string_value: "true" } } to allow it'
                )
            log.warning("%s: %s unavailable on %s, running on %s as the config allows", name, placement.wanted,
                        placement.label(), self.provider)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        # numpy has no bfloat16 of its own: ORT takes and gives those through OrtValues
        self._bf16_outputs = {o.name for o in self.session.get_outputs() if o.type == "tensor(bfloat16)"}
        self._ort_value = ort.OrtValue
        self._run_options = ort.RunOptions()
        # ONNX Runtime's own INVALID_ARGUMENT (bad tensors); its other errors are the run failing on the device
        self._refused: Any = getattr(getattr(ort.capi, "onnxruntime_pybind11_state", None), "InvalidArgument", ())

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> list[np.ndarray]:
        """Blocking. Raises RunFailed when the run fails on the device, InputRejected (or ValueError,
        SessionError) when the request's tensors are at fault."""
        try:
            for check in self.checks:
                check()
            return self._run(inputs, outputs)
        except (SessionError, ValueError, TypeError):  # the feed's content (a missing input, BYTES with BF16)
            raise
        except self._refused as exc:
            raise InputRejected(_short(f"{self.name}: {exc}")) from None
        except Exception as exc:  # ORT's Fail, RuntimeException, EPFail, ...: the device (or its driver) failed
            raise RunFailed(_short(f"{self.name} on {', '.join(self.placement.devices) or self.placement.label()}: "
                                   f"{exc}")) from exc

    def _run(self, inputs: dict[str, np.ndarray], outputs: list[str] | None) -> list[np.ndarray]:
        names = outputs or self.output_names
        if not self._bf16_outputs.intersection(names):
            feed = {k: self._bf16_value(v) if v.dtype == BF16 else v for k, v in inputs.items()}
            return self.session.run(names, feed, self._run_options)
        values = {}
        for k, v in inputs.items():
            if v.dtype == object:
                raise SessionError(f"{self.name}: a model with BF16 outputs cannot take BYTES inputs here")
            values[k] = self._bf16_value(v) if v.dtype == BF16 else self._ort_value.ortvalue_from_numpy(v)
        results = self.session.run_with_ort_values(names, values, self._run_options)
        return [_bf16_array(r) if n in self._bf16_outputs else r.numpy() for n, r in zip(names, results, strict=True)]

    def _bf16_value(self, array: np.ndarray) -> Any:
        contiguous = np.ascontiguousarray(array).view(np.uint16)
        return self._ort_value.ortvalue_from_numpy_with_onnx_type(contiguous, onnx_element_type=ONNX_BFLOAT16)

    def close(self) -> None:
        del self.session


def _bf16_array(value: Any) -> np.ndarray:
    """Copy a CPU OrtValue of bfloat16 into a numpy (ml_dtypes) array."""
    shape = tuple(value.shape())
    count = int(np.prod(shape)) if shape else 1
    buffer = (ctypes.c_uint16 * count).from_address(value.data_ptr())
    return np.ctypeslib.as_array(buffer).copy().view(BF16).reshape(shape)


def _short(message: str, limit: int = 600) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 3] + "..."


def default_intra_threads(instances: int) -> int:
    """Split the cores among a model's CPU instances so that they don't fight over them."""
    return max(1, (os.cpu_count() or 1) // max(instances, 1))
