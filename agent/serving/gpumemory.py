"""What loading a model costs on its GPU, read from NVML before and after the load.

The controller places replicas by device memory, so a model on a GPU must report GPU memory, not the host RSS
the agent's process grows by. NVML's per-process accounting (``nvmlDeviceGetComputeRunningProcesses``) gives
this process's own figure: the growth is exact whatever other processes do meanwhile. Our process is absent
from that list until it has a CUDA context on the device, which then counts as 0. In a container NVML lists
host PIDs, so our PID may never appear; then the device's used memory (``nvmlDeviceGetMemoryInfo``) before and
after is taken instead, which also counts what other processes allocated during the load (an estimate).

The first model on a device also pays for the CUDA context (0.3 to 0.5 GiB); that is real memory this process
holds there, so it is counted against that model.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from xpud.plugins.nvml import NOT_AVAILABLE, DeviceLost, Nvml

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment: this process's bytes there (None: NVML does not list it), the device's used bytes."""

    process: int | None
    device: int | None


class GpuMemory:
    """Reads this process's and the device's used memory on NVIDIA GPUs (by NVML index)."""

    def __init__(self, nvml: Nvml | None = None) -> None:
        self._nvml = nvml or Nvml(log=log)
        self._usable: bool | None = None

    def _ready(self) -> bool:
        if self._usable is None:
            try:
                self._nvml.init()
                self._usable = True
            except ImportError:
                self._usable = False
            except Exception as exc:  # NVMLError subclasses: no driver, no permission
                log.info("GPU memory per model not measured: NVML unavailable (%s)", exc)
                self._usable = False
        return self._usable

    def read(self, index: int) -> GpuReading:
        """Both figures for GPU ``index``; None where NVML cannot say."""
        if not self._ready():
            return GpuReading(None, None)
        m = self._nvml.module
        key = f"gpu:{index}"
        try:
            handle = self._nvml.query(key, "handle", m.nvmlDeviceGetHandleByIndex, index)
            if handle is None:
                return GpuReading(None, None)
            procs = self._nvml.query(key, "processes", m.nvmlDeviceGetComputeRunningProcesses, handle)
            info = self._nvml.query(key, "memory", m.nvmlDeviceGetMemoryInfo, handle)
        except DeviceLost:
            return GpuReading(None, None)
        return GpuReading(_own(procs), None if info is None else int(info.used))

    def close(self) -> None:
        if self._usable:
            self._nvml.shutdown()
        self._usable = None


def _own(procs: Any) -> int | None:
    """This process's bytes in an NVML process list; None when it is not listed or its figure is unknown."""
    if procs is None:
        return None
    pid = os.getpid()
    total, listed = 0, False
    for p in procs:
        if int(p.pid) != pid:
            continue
        used = getattr(p, "usedGpuMemory", None)
        if used is None or int(used) in NOT_AVAILABLE:
            return None
        total, listed = total + int(used), True
    return total if listed else None


def growth(before: GpuReading, after: GpuReading) -> int | None:
    """Bytes a load added on one GPU: this process's own growth when NVML lists it afterwards, else the device's."""
    if after.process is not None:
        return max(after.process - (before.process or 0), 0)
    if before.device is not None and after.device is not None:
        return max(after.device - before.device, 0)
    return None
