"""Which ONNX Runtime execution providers can really run on this host.

onnxruntime-gpu lists CUDA and TensorRT wherever it is installed, with or without a GPU or the CUDA libraries.
So each provider it lists, but the CPU's, is tried once per process: a one-node model in a session that may not
fall back to the CPU, run once. The try runs in a child process (``python -m xpud.agent.serving.providers``):
the agent itself neither imports onnxruntime for it (an agent that loads no model skips its ~20 MiB) nor keeps
the CUDA context a try creates, and a driver that crashes takes only the child down.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
NVIDIA_EPS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
# any of them: an NVIDIA driver (a GPU's, WSL's, a Jetson's) that CUDA may run on
NVIDIA_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/dxg", "/dev/nvhost-ctrl-gpu")
PROBE_TIMEOUT_S = 120.0  # a TensorRT engine build for one node takes seconds, not minutes


@dataclass(frozen=True)
class Probe:
    listed: tuple[str, ...]  # what onnxruntime.get_available_providers() says (its build)
    usable: tuple[str, ...]  # those that ran the probe model, in onnxruntime's order; the CPU's always
    refused: dict[str, str] = field(default_factory=dict)  # provider -> why it cannot run here
    seconds: float = 0.0
    version: str = ""


_lock = threading.Lock()
_result: Probe | None = None


def usable_providers() -> list[str]:
    """The providers that can run here (probed once per process; the first call waits for the probe)."""
    return list(probe().usable)


def probe() -> Probe:
    global _result
    with _lock:
        if _result is None:
            _result = _probe_in_child()
        return _result


def start(done: Callable[[Probe], None] | None = None) -> threading.Thread:
    """Probe in a background thread (start-up does not wait); ``done`` is called with the result."""

    def run() -> None:
        result = probe()
        if done is not None:
            done(result)

    thread = threading.Thread(target=run, name="ep-probe", daemon=True)
    thread.start()
    return thread


def _probe_in_child() -> Probe:
    started = time.perf_counter()
    if (known := nothing_to_probe()) is not None:
        log.info("execution providers: %s (%s)", CPU, "; ".join(sorted(set(known.refused.values()))) or "CPU build")
        return known
    try:
        child = subprocess.run([sys.executable, "-m", __name__], capture_output=True, text=True,
                               timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        lines = child.stdout.strip().splitlines()
        if child.returncode != 0 or not lines:
            raise RuntimeError(f"exit status {child.returncode}: {_short(child.stderr.strip()[-400:])}")
        found = json.loads(lines[-1])
        result = Probe(tuple(found["listed"]), tuple(found["usable"]), dict(found["refused"]),
                       time.perf_counter() - started, found["version"])
    except (OSError, subprocess.SubprocessError, RuntimeError, ValueError, KeyError) as exc:
        # nothing known to run but the CPU: a GPU node then says its GPUs are not runnable, which is true enough
        log.warning("execution provider probe failed (%s): only %s is reported", _short(str(exc)), CPU)
        return Probe((), (CPU,), {"*": f"probe failed: {exc}"}, time.perf_counter() - started)
    log.info("execution providers: %s (onnxruntime %s, probed in %.2f s)", ", ".join(result.usable),
             result.version, result.seconds)
    for ep, why in result.refused.items():
        log.info("%s is not usable here: %s", ep, why)
    return result


def nothing_to_probe(driver_files: Iterable[str] = NVIDIA_DRIVER_FILES) -> Probe | None:
    """The answer without a child, where only the CPU can run: onnxruntime-gpu (or the CPU build, on Linux)
    on a host without an NVIDIA driver. None: probe."""
    builds = []
    for name in ("onnxruntime-gpu", "onnxruntime"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            builds.append((name, importlib.metadata.version(name)))
    if len(builds) != 1 or any(Path(f).exists() for f in driver_files):
        return None  # another build (ROCm, OpenVINO, ...), both (a broken install), or a driver: try them
    name, version = builds[0]
    if name == "onnxruntime" and sys.platform != "linux":
        return None  # the macOS build has CoreML
    refused = {ep: "no NVIDIA driver on this host" for ep in NVIDIA_EPS} if name == "onnxruntime-gpu" else {}
    return Probe((), (CPU,), refused, 0.0, version)


def try_providers(ort: Any, candidates: Iterable[str] | None = None) -> Probe:
    """In this process: run the probe model on each candidate (default: all that ``ort`` lists)."""
    started = time.perf_counter()
    listed = tuple(ort.get_available_providers())
    usable, refused = [], {}
    model = tiny_model()
    for ep in listed if candidates is None else candidates:
        if ep == CPU:
            continue
        if ep not in listed:
            refused[ep] = "not in this onnxruntime build"
            continue
        ok, why = _try_one(ort, ep, model)
        if ok:
            usable.append(ep)
        else:
            refused[ep] = why
    return Probe(listed, (*usable, CPU), refused, time.perf_counter() - started, ort.__version__)


def _try_one(ort: Any, ep: str, model: bytes) -> tuple[bool, str]:
    import numpy as np

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")  # else a failed EP runs on the CPU
    with _stderr_captured() as captured:
        try:
            session = ort.InferenceSession(model, sess_options=so, providers=[ep])
            in_use = session.get_providers()
            if not in_use or in_use[0] != ep:
                raise RuntimeError(f"the session runs on {', '.join(in_use) or 'nothing'}")
            out = session.run(None, {"x": np.array([-1.0, 2.0], dtype=np.float32)})[0]
            if out.tolist() != [0.0, 2.0]:
                raise RuntimeError(f"Relu gave {out.tolist()}")
        except Exception as exc:
            error: Exception | None = exc
        else:
            error = None
    if error is None:
        return True, ""
    return False, _reason(captured.text, error)


class _Captured:
    text = ""


@contextlib.contextmanager
def _stderr_captured() -> Any:
    """What ONNX Runtime's C++ logger and its Python fallback notices write (fd 2, stdout) during one try."""
    captured = _Captured()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            with contextlib.redirect_stdout(sys.stderr):
                yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode(errors="replace")


def _reason(log_text: str, error: Exception) -> str:
    """The most telling line: a library that failed to load, else ONNX Runtime's error."""
    clean = re.sub(r"\x1b\[[0-9;]*m", "", log_text)
    loads = re.findall(r"Failed to load library \S+? with error: (.+)", clean)
    if loads:
        return _short(loads[0].strip())
    return _short(str(error).replace("[ONNXRuntimeError] : ", ""))


def tiny_model() -> bytes:
    """An ONNX model of one Relu node, float32 [2] -> [2], written out by hand (onnx is not a dependency)."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            low, n = n & 0x7F, n >> 7
            out.append(low | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def message(number: int, payload: bytes | str) -> bytes:
        data = payload.encode() if isinstance(payload, str) else payload
        return varint(number << 3 | 2) + varint(len(data)) + data

    def integer(number: int, value: int) -> bytes:
        return varint(number << 3) + varint(value)

    def tensor(name: str) -> bytes:  # ValueInfoProto: name, TypeProto.tensor_type (FLOAT, shape [2])
        shape = message(2, message(1, integer(1, 2)))
        return message(1, name) + message(2, message(1, integer(1, 1) + shape))

    node = message(1, "x") + message(2, "y") + message(3, "probe") + message(4, "Relu")
    graph = message(1, node) + message(2, "probe") + message(11, tensor("x")) + message(12, tensor("y"))
    return integer(1, 8) + message(8, message(1, "") + integer(2, 13)) + message(7, graph)  # IR 8, opset 13


_gpu_libraries_loaded = False


def load_onnxruntime(gpu_libraries: bool = False) -> Any:
    """onnxruntime, imported only when a model is loaded (~20 MiB and 0.2 s an agent without models skips);
    ``gpu_libraries``: first load the CUDA/cuDNN libraries of NVIDIA's wheels, if installed."""
    import onnxruntime

    global _gpu_libraries_loaded
    if gpu_libraries and not _gpu_libraries_loaded:
        _gpu_libraries_loaded = True
        preload_gpu_libraries(onnxruntime)
    return onnxruntime


def nvidia_wheel_libraries(ort: Any) -> list[Path]:
    """The library folders of NVIDIA's CUDA/cuDNN wheels (`pip install 'xpud[gpu]'`) beside onnxruntime."""
    nvidia = Path(ort.__file__).resolve().parent.parent / "nvidia"
    major = str(getattr(ort, "cuda_version", "") or "").split(".")[0]
    names = [f"cu{major}", "cuda_runtime", "cublas", "cudnn"]  # CUDA 13 wheels share cu13/; 12's have one each
    return [nvidia / name / "lib" for name in names if (nvidia / name / "lib").is_dir()]


def preload_gpu_libraries(ort: Any) -> None:
    """Load the CUDA and cuDNN libraries of NVIDIA's wheels into this process (onnxruntime.preload_dlls, 1.21+),
    so that the CUDA and TensorRT providers find them without LD_LIBRARY_PATH. Nothing for a CPU build or
    without those wheels: then the system's libraries (ld.so's paths) are used."""
    if not getattr(ort, "cuda_version", "") or not hasattr(ort, "preload_dlls") or not nvidia_wheel_libraries(ort):
        return
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):  # it prints what it could not load
        try:
            ort.preload_dlls()
        except Exception as exc:  # a broken wheel: the providers then fail their probe, saying why
            print(exc)
    if text := printed.getvalue().strip():
        log.warning("loading NVIDIA's CUDA libraries: %s", _short(text))


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main() -> None:
    """The child: probe, print one JSON line."""
    ort = load_onnxruntime(gpu_libraries=True)
    result = try_providers(ort)
    print(json.dumps({"listed": result.listed, "usable": result.usable, "refused": result.refused,
                      "version": result.version}), flush=True)


if __name__ == "__main__":
    main()
