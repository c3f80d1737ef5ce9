"""One model the controller assigns to this node, and the model configuration the agent serves it with.

The configuration is built in memory from the assignment (batching, one instance per assigned device, the
deployment's priority) and checked like a repository's config.pbtxt; the model file stays in the artifact cache.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xpud.proto.devices import gpu_index
from xpud.proto.oip import mc

from ..serving.manager import MODEL_PARAMETER
from ..serving.repository import ModelSource, checked

PRIORITY_PARAMETER = "xpud.priority"  # the deployment's scheduling priority, in the served config's parameters
QUEUE_DELAY_US = 500  # dynamic batching: how long the first request of a batch waits for others


@dataclass(frozen=True)
class Assignment:
    deployment: str
    model: str
    version: str
    digest: str
    size_bytes: int
    devices: tuple[str, ...]
    max_batch_size: int = 0
    priority: int = 0  # the deployment's scheduling priority: higher is more important

    def version_number(self) -> int:
        """The version served: the assigned one when it is a number, else 1."""
        return version_number(self.version)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Assignment:
        """From its saved form; fields it does not know are ignored, fields it lacks take their defaults."""
        known = {k: v for k, v in data.items() if k in _ASSIGNMENT_FIELDS}
        return cls(**{**known, "devices": tuple(known.get("devices", ()))})


def version_number(version: str) -> int:
    """The model version an assigned version is served as: the number, else 1."""
    return int(version) if version.isdigit() else 1


_ASSIGNMENT_FIELDS = frozenset(f.name for f in dataclasses.fields(Assignment))


def model_config(a: Assignment) -> mc.ModelConfig:
    """The served configuration: one instance per assigned device (all GPUs in one group, the rest on the CPU,
    simulated devices included), dynamic batching up to ``max_batch_size``, the priority as a parameter."""
    gpus = [g for g in (gpu_index(d) for d in a.devices) if g is not None]
    cpu_instances = len(a.devices) - len(gpus)
    config = mc.ModelConfig()
    if a.max_batch_size:
        config.max_batch_size = a.max_batch_size
        config.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    if gpus:
        config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=1, gpus=gpus)
    if cpu_instances or not gpus:
        config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=max(cpu_instances, 1))
    config.parameters[PRIORITY_PARAMETER].string_value = str(a.priority)
    config.parameters[MODEL_PARAMETER].string_value = a.model  # the metrics' model label (served as the deployment)
    return checked(config, a.deployment)


def model_source(a: Assignment, path: Path) -> ModelSource:
    """What the model manager loads for ``a``: its configuration and the artifact as its one version."""
    return ModelSource(model_config(a), {a.version_number(): path}, a.devices)
