"""What the admin API accepts: names, model versions, a deployment's fields (InvalidArgument otherwise)."""

from __future__ import annotations

import re

from xpud.proto.status import InvalidArgument

from .core import DEVICE_KINDS, STRATEGIES, DeploymentSpec

NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
VERSION = re.compile(r"[0-9]{1,9}")
MAX_REPLICAS = 1000
MAX_INFLIGHT = 100_000  # requests in flight per replica through the router
MAX_MEMORY = 2**50  # bytes per replica (1 PiB): far above any device, well inside the store's signed 64 bits
ONNX_HEAD = b"\x08"  # an ONNX ModelProto starts with its ir_version field


def check_name(kind: str, name: str) -> None:
    if not NAME.match(name):
        raise InvalidArgument(f"{kind} name {name!r} is not valid: use 1-63 lowercase letters, digits, '-', '_', "
                              "'.', starting and ending with a letter or digit")


def check_model(name: str, version: str) -> None:
    check_name("model", name)
    if version and not VERSION.fullmatch(version):
        raise InvalidArgument(f"model version {version!r} must be a whole number (e.g. 1, 2)")


def check_spec(spec: DeploymentSpec) -> None:
    """A deployment's name and model, checked before its model is looked up."""
    check_name("deployment", spec.name)
    if not spec.model:
        raise InvalidArgument("a deployment needs a model (--model NAME[:VERSION])")


def check_placement(spec: DeploymentSpec) -> None:
    """A deployment's placement fields, checked once its model is found."""
    if spec.device not in DEVICE_KINDS:
        raise InvalidArgument(f"device {spec.device!r} must be one of gpu, cpu, any")
    if spec.strategy not in STRATEGIES:
        raise InvalidArgument(f"strategy {spec.strategy!r} must be binpack or spread")
    if spec.replicas > MAX_REPLICAS:
        raise InvalidArgument(f"replicas {spec.replicas} is more than {MAX_REPLICAS}")
    if spec.memory_bytes > MAX_MEMORY:
        raise InvalidArgument(f"memory {spec.memory_bytes} bytes is more than 1 PiB per replica")
    if spec.max_inflight > MAX_INFLIGHT:
        raise InvalidArgument(f"max_inflight {spec.max_inflight} is more than {MAX_INFLIGHT} per replica")
