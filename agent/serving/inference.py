"""One inference request: validate it against the model's config, queue it, build the response.

Everything here raises the typed errors of the core (TensorError, InvalidRequest,
ModelNotFound, ModelUnavailable, QueueFull, QueueTimeout); the servicer maps them
to gRPC status codes in one place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from xpud.proto.oip import TensorError, decode_input, encode_output, pb, request_parameter

from .batcher import Request
from .manager import Batch, ModelManager, ModelVersion

RESERVED_PARAMETERS = frozenset({"priority", "timeout", "sequence_id", "sequence_start", "sequence_end",
                                 "binary_data_output", "binary_data_size"})


class InvalidRequest(ValueError):
    """INVALID_ARGUMENT: a request the model cannot take; the message says what to change."""


@dataclass
class Prepared:
    model: ModelVersion
    request: Request
    outputs: list[str]  # names to return, in order


def _shape(dims: list[int] | tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _matches(dims: tuple[int, ...], want: tuple[int, ...]) -> bool:
    return len(dims) == len(want) and all(w < 0 or d == w for d, w in zip(dims, want, strict=True))


def _text(array: np.ndarray, name: str) -> np.ndarray:
    """ONNX string tensors hold text: ONNX Runtime's Python binding takes str elements, not bytes."""
    try:
        return np.array([b.decode("utf-8") for b in array.flat], dtype=object).reshape(array.shape)
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"input {name!r}: BYTES element is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                             "ONNX string tensors hold text") from None


def prepare(manager: ModelManager, req: pb.ModelInferRequest) -> Prepared:
    mv = manager.get(req.model_name, req.model_version)
    config = mv.config
    batching = config.max_batch_size > 0
    declared = mv.inputs
    raws = list(req.raw_input_contents)
    if raws and len(raws) != len(req.inputs):
        raise InvalidRequest(f"{len(req.inputs)} inputs but {len(raws)} raw_input_contents: send one per input")
    seen: set[str] = set()
    inputs: dict[str, np.ndarray] = {}
    batch_size = 1
    for i, tensor in enumerate(req.inputs):
        spec = declared.get(tensor.name)
        if spec is None:
            raise InvalidRequest(
                f"model {mv.name!r} has no input {tensor.name!r}; its inputs are {sorted(declared)}"
            )
        if tensor.name in seen:
            raise InvalidRequest(f"input {tensor.name!r} is given twice")
        seen.add(tensor.name)
        want_type = spec.datatype
        if tensor.datatype != want_type:
            raise InvalidRequest(f"input {tensor.name!r}: datatype {tensor.datatype}, expected {want_type}")
        dims = tuple(tensor.shape)
        if batching:
            if not dims:
                raise InvalidRequest(f"input {tensor.name!r}: shape [] has no batch dimension; expected "
                                     f"{_shape([-1, *spec.dims])}")
            rows = dims[0]
            if rows < 1 or rows > config.max_batch_size:
                raise InvalidRequest(f"input {tensor.name!r}: batch size {rows} is outside 1..{config.max_batch_size} "
                                     f"(max_batch_size of model {mv.name!r})")
            if i and rows != batch_size:
                raise InvalidRequest(f"input {tensor.name!r}: batch size {rows} differs from the other inputs' "
                                     f"{batch_size}")
            batch_size = rows
            inner = dims[1:]
        else:
            inner = dims
        if not _matches(inner, spec.dims):
            want = [-1, *spec.dims] if batching else list(spec.dims)
            raise InvalidRequest(f"input {tensor.name!r}: shape {_shape(dims)} does not match the model's "
                                 f"{_shape(want)} (-1: any size)")
        array = decode_input(tensor, raws[i] if raws else None)
        if want_type == "BYTES":
            array = _text(array, tensor.name)
        if spec.reshape is not None:
            array = array.reshape(((batch_size,) if batching else ()) + spec.reshape)
        inputs[tensor.name] = array
    missing = [n for n, s in declared.items() if n not in seen and not s.optional]
    if missing:
        raise InvalidRequest(f"model {mv.name!r} needs input(s) {missing}; the request has {sorted(seen)}")
    outputs = [o.name for o in req.outputs] or [o.name for o in config.output]
    known = mv.output_types
    unknown = [n for n in outputs if n not in known]
    if unknown:
        raise InvalidRequest(f"model {mv.name!r} has no output(s) {unknown}; its outputs are {sorted(known)}")
    priority = request_parameter(req.parameters, "priority")
    timeout_us = request_parameter(req.parameters, "timeout")
    if priority is not None and not isinstance(priority, int):
        raise InvalidRequest(f"parameter 'priority' must be an integer, got {priority!r}")
    if timeout_us is not None and not isinstance(timeout_us, int):
        raise InvalidRequest(f"parameter 'timeout' must be an integer (microseconds), got {timeout_us!r}")
    key = tuple((n, a.dtype.str, a.shape[1:] if batching else a.shape) for n, a in sorted(inputs.items()))
    request = Request(
        payload=Batch(inputs),
        batch_size=batch_size if batching else 1,
        key=key,
        priority=priority or 0,
        timeout_s=timeout_us / 1e6 if timeout_us else None,
    )
    return Prepared(mv, request, outputs)


def response(prepared: Prepared, req: pb.ModelInferRequest, results: dict[str, np.ndarray]) -> pb.ModelInferResponse:
    mv = prepared.model
    out = pb.ModelInferResponse(model_name=mv.name, model_version=str(mv.version), id=req.id)
    reshaped = mv.output_reshapes
    datatypes = mv.output_types
    for name in prepared.outputs:
        array = results[name]
        if name in reshaped:
            lead = (array.shape[0],) if mv.config.max_batch_size > 0 else ()
            array = array.reshape(lead + reshaped[name])
        tensor, raw = encode_output(name, array, datatypes[name])
        out.outputs.append(tensor)
        out.raw_output_contents.append(raw)
    for key, value in req.parameters.items():  # pass the caller's own parameters through
        if key not in RESERVED_PARAMETERS:
            out.parameters[key].CopyFrom(value)
    return out


async def infer(manager: ModelManager, req: pb.ModelInferRequest) -> pb.ModelInferResponse:
    """The whole path of one ModelInfer; statistics are recorded whatever the outcome."""
    started = time.perf_counter_ns()
    try:
        prepared = prepare(manager, req)
    except (InvalidRequest, TensorError):
        _count_failure(manager, req, started)
        raise
    mv = prepared.model
    ok = False
    queue_ns, compute = 0, None
    try:
        (results, compute), queue_s = await manager.infer(mv, prepared.request)
        queue_ns = int(queue_s * 1e9)
        reply = response(prepared, req, results)
        ok = True
        return reply
    finally:
        mv.stats.request_done(ok, time.perf_counter_ns() - started, queue_ns, compute)


def _count_failure(manager: ModelManager, req: pb.ModelInferRequest, started: int) -> None:
    """A bad request to a known model counts in its statistics as a failure (as Triton does)."""
    try:
        mv = manager.get(req.model_name, req.model_version)
    except LookupError:
        return
    except RuntimeError:
        return
    mv.stats.request_done(False, time.perf_counter_ns() - started, 0, None)
