"""A pushed model checked before it is stored: loaded by ONNX Runtime on the CPU with no graph optimisation, its
inputs and outputs read (InvalidArgument with the parser's message when it does not load)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from xpud.proto.oip import TensorError, onnx_to_triton
from xpud.proto.status import InvalidArgument

from .store import ArtifactStore, StateStore, TensorSpec

log = logging.getLogger(__name__)

MESSAGE_LINES = 2  # of the parser's message: the useful part, without ONNX Runtime's stack of frames
_CODE = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")  # "[ONNXRuntimeError] : 1 : FAIL : "
_LOADING = re.compile(r"^Load model from \S+ failed: ?")  # names the controller's temp file: left out
_SOURCE = re.compile(r"^\S+\.(?:cc|cpp|h):\d+ .*?\) (?=\S)")  # "/src/model.cc:256 Model::Model(...) "


def inspect_model(path: Path, filename: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """(inputs, outputs) of the ONNX model at `path`; InvalidArgument if ONNX Runtime cannot load it.

    Blocking (a large model takes a while): run it in a worker thread. ONNX Runtime is imported here, so a
    controller that is never pushed a model never imports it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # errors only: the message goes back to the caller
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ONNX Runtime raises its own Fail/InvalidGraph/... types, all with the parser's words
        raise InvalidArgument(f"{filename or 'the file'} is not a loadable ONNX model: {short_message(e)}") from None
    return (tuple(tensor_spec(a) for a in session.get_inputs()), tuple(tensor_spec(a) for a in session.get_outputs()))


def tensor_spec(arg: Any) -> TensorSpec:
    """One of a session's NodeArgs: name, datatype, shape (-1 where dynamic) and each dimension's symbolic name."""
    kind = str(arg.type)
    try:
        datatype = onnx_to_triton(kind)
    except TensorError:  # a type the protocol cannot carry: shown as ONNX names it
        datatype = (kind[kind.find("(") + 1 : kind.rfind(")")] if kind.startswith("tensor(") else kind).upper()
    dims = list(arg.shape or [])
    return TensorSpec(name=str(arg.name), datatype=datatype,
                      shape=tuple(d if isinstance(d, int) and d >= 0 else -1 for d in dims),
                      dim_names=tuple(d if isinstance(d, str) else "" for d in dims))


def short_message(exc: BaseException) -> str:
    """The first lines of an exception's message, without ONNX Runtime's error code and source location."""
    text = str(exc).strip() or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()][:MESSAGE_LINES]
    message = _LOADING.sub("", _CODE.sub("", " ".join(lines)))
    return _SOURCE.sub("", message) or message


async def backfill(store: StateStore, artifacts: ArtifactStore, run: Callable[..., Awaitable[Any]]) -> int:
    """Read the inputs and outputs of every model stored before they were kept (no outputs recorded: every ONNX
    model has one), one model at a time off the loop; returns how many were filled. `run` is the store thread's."""
    filled = 0
    for model in await run(store.models):
        if model.outputs:
            continue
        path = await run(artifacts.path, model.digest)
        if path is None:
            continue
        try:
            inputs, outputs = await asyncio.to_thread(inspect_model, path, model.filename)
        except InvalidArgument as exc:  # stored before pushes were checked, and it does not load
            log.warning("model %s:%s: %s", model.name, model.version, exc.message)
            continue
        await run(store.set_model_io, model.name, model.version, inputs, outputs)
        filled += 1
    if filled:
        log.info("read the inputs and outputs of %d model(s) stored before they were kept", filled)
    return filled
