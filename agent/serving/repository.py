"""Where a model comes from: a Triton-layout repository (``DIR/<model>/<version>/model.onnx`` + optional
``config.pbtxt``) or a configuration built in memory (``ModelSource``), checked the same way.

``config.pbtxt`` is Triton's ModelConfig in protobuf text format. A model without
one (or with parts left out) gets its configuration completed from the ONNX
graph, as Triton's auto-complete does: inputs, outputs, data types, and batching
when every input and output has a dynamic first dimension.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format

from xpud.proto.oip import TensorError, mc, onnx_to_triton, triton_to_config

DEFAULT_MODEL_FILENAME = "model.onnx"
DEFAULT_MAX_BATCH_SIZE = 4  # Triton's onnxruntime backend default for auto-completed batching models
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class ModelConfigError(Exception):
    """A model whose files or configuration cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as the ONNX graph declares it (ONNX Runtime's view)."""

    name: str
    ort_type: str  # "tensor(float)"
    shape: tuple[int | str | None, ...]  # None or a symbol: dynamic


@dataclass(frozen=True)
class ModelSource:
    """What one model is loaded from: its (checked, not yet completed) configuration and each version's file."""

    config: mc.ModelConfig
    files: Mapping[int, Path]
    # the node's device ids assigned to it ("nvidia:0", "sim:1"), one instance each; () for a repository model
    devices: tuple[str, ...] = ()


def model_names(repo: Path) -> list[str]:
    """Every folder of the repository that looks like a model, sorted."""
    if not repo.is_dir():
        raise ModelConfigError(f"model repository {str(repo)!r} is not a directory")
    return sorted(p.name for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_config(model_dir: Path) -> mc.ModelConfig:
    """config.pbtxt parsed against ModelConfig (an empty config when there is none)."""
    config = mc.ModelConfig()
    path = model_dir / "config.pbtxt"
    if path.is_file():
        try:
            text_format.Parse(path.read_text(), config)
        except text_format.ParseError as exc:
            raise ModelConfigError(f"{model_dir.name}/config.pbtxt: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelConfigError(f"{model_dir.name}/config.pbtxt cannot be read: {exc}") from None
    if config.name and config.name != model_dir.name:
        raise ModelConfigError(
            f"{model_dir.name}/config.pbtxt names the model {config.name!r}: it must match its folder "
            f"{model_dir.name!r}"
        )
    return checked(config, model_dir.name)


def checked(config: mc.ModelConfig, name: str) -> mc.ModelConfig:
    """``config`` named ``name``, its backend checked, with one automatic instance group if it has none."""
    config.name = name
    if not NAME_RE.match(config.name):
        raise ModelConfigError(f"model name {config.name!r} is not valid: use letters, digits, '_', '.', '-'")
    if config.backend and config.backend != "onnxruntime":
        raise ModelConfigError(f"{config.name}: backend {config.backend!r} is not supported (only onnxruntime)")
    if config.platform and config.platform != "onnxruntime_onnx":
        raise ModelConfigError(f"{config.name}: platform {config.platform!r} is not supported (onnxruntime_onnx)")
    config.platform, config.backend = "onnxruntime_onnx", "onnxruntime"
    if not config.instance_group:
        config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_AUTO)
    return config


def read_model(repo: Path, name: str) -> ModelSource:
    """The configuration and version files of ``repo/<name>``."""
    model_dir = repo / name
    config = read_config(model_dir)
    return ModelSource(config, version_files(model_dir, config))


def version_files(model_dir: Path, config: mc.ModelConfig) -> dict[int, Path]:
    """Model file of every version folder the version policy selects."""
    filename = config.default_model_filename or DEFAULT_MODEL_FILENAME
    found = {
        int(p.name): p / filename
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / filename).is_file()
    }
    if not found:
        raise ModelConfigError(
            f"{config.name}: no version folder holds {filename} (expected {config.name}/1/{filename})"
        )
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        chosen = sorted(found)
    elif which == "specific":
        missing = [v for v in policy.specific.versions if v not in found]
        if missing:
            raise ModelConfigError(f"{config.name}: version policy names missing version(s) {missing}")
        chosen = sorted(policy.specific.versions)
    else:
        latest = policy.latest.num_versions if which == "latest" and policy.latest.num_versions > 0 else 1
        chosen = sorted(found)[-latest:]
    return {v: found[v] for v in chosen}


def _dims(shape: tuple[int | str | None, ...]) -> list[int]:
    return [d if isinstance(d, int) and d >= 0 else -1 for d in shape]


def complete_config(
    config: mc.ModelConfig,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> mc.ModelConfig:
    """Fill what config.pbtxt left out from the graph and check what it says against the graph."""
    graph = {"input": {t.name: t for t in inputs}, "output": {t.name: t for t in outputs}}
    batchable = all(len(t.shape) > 0 and _dims(t.shape)[0] == -1 for t in [*inputs, *outputs])
    explicit = bool(config.input) or bool(config.output) or config.max_batch_size > 0
    if config.max_batch_size == 0 and not explicit and batchable and default_max_batch_size > 0:
        config.max_batch_size = default_max_batch_size
        if not config.HasField("dynamic_batching") and not config.HasField("sequence_batching"):
            config.dynamic_batching.SetInParent()
    if config.max_batch_size < 0:
        raise ModelConfigError(f"{config.name}: max_batch_size must be >= 0, got {config.max_batch_size}")
    if config.max_batch_size > 0 and not batchable:
        raise ModelConfigError(
            f"{config.name}: max_batch_size is {config.max_batch_size} but the graph does not have a dynamic first "
            "dimension on every input and output; set max_batch_size: 0"
        )
    skip = 1 if config.max_batch_size > 0 else 0
    for kind in ("input", "output"):
        declared = getattr(config, kind)
        if not declared:
            for graph_spec in graph[kind].values():
                entry = declared.add(name=graph_spec.name, dims=_dims(graph_spec.shape)[skip:])
                entry.data_type = _config_type(config.name, graph_spec)
            continue
        for entry in declared:
            spec = graph[kind].get(entry.name)
            if spec is None:
                raise ModelConfigError(
                    f"{config.name}: config {kind} {entry.name!r} is not in the model; the graph has "
                    f"{sorted(graph[kind])}"
                )
            want = _config_type(config.name, spec)
            if entry.data_type == mc.TYPE_INVALID:
                entry.data_type = want
            elif entry.data_type != want:
                raise ModelConfigError(
                    f"{config.name}: {kind} {entry.name!r} is {mc.DataType.Name(entry.data_type)} in config.pbtxt "
                    f"but {mc.DataType.Name(want)} in the model"
                )
            if not entry.dims:
                entry.dims.extend(_dims(spec.shape)[skip:])
        if kind == "input":
            missing = set(graph[kind]) - {e.name for e in declared}
            if missing:
                raise ModelConfigError(f"{config.name}: config.pbtxt leaves out model input(s) {sorted(missing)}")
    return config


def _config_type(model: str, spec: TensorSpec) -> int:
    try:
        return triton_to_config(onnx_to_triton(spec.ort_type))
    except TensorError as exc:
        raise ModelConfigError(f"{model}: tensor {spec.name!r}: {exc}") from None
