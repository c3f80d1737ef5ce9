"""What the wire's device ids and vendors mean for serving, shared by the agent and the controller.

A device id is "<plugin>:<index>" ("nvidia:1", "cpu:0", "sim:3"). For the vendors below, the index is the
execution provider's device id, and these are the providers that run on that vendor's GPUs (first: preferred).
"""

from __future__ import annotations

from collections.abc import Mapping

GPU_VENDORS: Mapping[str, tuple[str, ...]] = {
    "nvidia": ("CUDAExecutionProvider", "TensorrtExecutionProvider"),
    "amd": ("ROCMExecutionProvider", "MIGraphXExecutionProvider"),
}
DEFAULT_GPU_PROVIDERS = GPU_VENDORS["nvidia"]  # a GPU of a vendor not listed: assume CUDA (as most are)


def gpu_index(device_id: str) -> int | None:
    """The execution-provider device id of a real GPU ("nvidia:1" -> 1); None for CPUs and simulated devices."""
    vendor, _, rest = device_id.partition(":")
    return int(rest) if vendor in GPU_VENDORS and rest.isdigit() else None


def gpu_providers(vendor: str) -> tuple[str, ...]:
    """The execution providers that can run on a GPU of `vendor`."""
    return GPU_VENDORS.get(vendor, DEFAULT_GPU_PROVIDERS)
