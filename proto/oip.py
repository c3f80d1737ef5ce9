"""Wire helpers for the Open Inference Protocol (KServe v2 / Triton gRPC).

The wire contract is tritonclient's generated stubs (``inference.GRPCInferenceService``); this module only converts
between those messages and numpy arrays. It is pure: no I/O, no state, no imports from the rest of xpud.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

pb = service_pb2
pb_grpc = service_pb2_grpc
mc = model_config_pb2

SERVICE_NAME = "inference.GRPCInferenceService"

__all__ = [
    "DATATYPES",
    "SERVICE_NAME",
    "TensorError",
    "config_to_triton",
    "decode_input",
    "deserialize_bytes",
    "element_size",
    "encode_output",
    "mc",
    "numpy_dtype",
    "onnx_to_triton",
    "pb",
    "pb_grpc",
    "request_parameter",
    "serialize_bytes",
    "triton_dtype",
    "triton_to_config",
]


class TensorError(ValueError):
    """A tensor the client sent (or asked for) is malformed; the message names it and says what was expected."""


_NUMPY: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(np.object_),
}
DATATYPES: tuple[str, ...] = tuple(_NUMPY)
_FROM_NUMPY: dict[np.dtype[Any], str] = {dt: name for name, dt in _NUMPY.items()}
_SIZES: dict[str, int | None] = {name: (None if name == "BYTES" else dt.itemsize) for name, dt in _NUMPY.items()}

# Which InferTensorContents field carries each datatype (Triton's rules); FP16 and BF16 have none.
_CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_ALL_CONTENTS_FIELDS = tuple(f.name for f in pb.InferTensorContents.DESCRIPTOR.fields)

_ONNX: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}

_LEN = struct.Struct("<I")


def _check_datatype(triton: str, what: str = "datatype") -> str:
    if triton not in _NUMPY:
        raise TensorError(f"unknown {what} {triton!r}; expected one of {', '.join(DATATYPES)}")
    return triton


def numpy_dtype(triton: str) -> np.dtype[Any]:
    """The numpy dtype for a Triton datatype string (BF16 is ml_dtypes.bfloat16, BYTES is object)."""
    return _NUMPY[_check_datatype(triton)]


def triton_dtype(np_dtype: Any) -> str:
    """The Triton datatype string for a numpy dtype; object, bytes_ and str_ arrays are BYTES.

    Raises plain ValueError (not TensorError) for dtypes with no Triton equivalent, e.g. complex64: that is a
    server-side problem, not a bad client tensor.
    """
    dt = np.dtype(np_dtype)
    if dt.kind in "OSU":
        return "BYTES"
    found = _FROM_NUMPY.get(dt.newbyteorder("="))
    if found is None:
        raise ValueError(f"numpy dtype {dt} has no Triton datatype; supported: {', '.join(DATATYPES)}")
    return found


def element_size(triton: str) -> int | None:
    """Bytes per element of a Triton datatype; None for BYTES (variable length)."""
    return _SIZES[_check_datatype(triton)]


def config_to_triton(data_type: int) -> str:
    """A model_config DataType enum value (TYPE_FP32, TYPE_STRING, ...) to a datatype string (FP32, BYTES, ...)."""
    try:
        name = mc.DataType.Name(data_type)
    except ValueError:
        raise TensorError(f"unknown model config data type {data_type}") from None
    if name == "TYPE_STRING":
        return "BYTES"
    triton = name.removeprefix("TYPE_")
    if triton not in _NUMPY:
        raise TensorError(f"model config data type {name} has no Triton datatype")
    return triton


def triton_to_config(triton: str) -> int:
    """A datatype string (FP32, BYTES, ...) to its model_config DataType enum value (TYPE_FP32, TYPE_STRING, ...)."""
    _check_datatype(triton)
    return int(mc.DataType.Value("TYPE_STRING" if triton == "BYTES" else f"TYPE_{triton}"))


def onnx_to_triton(ort_type: str) -> str:
    """An ONNX Runtime type string (``NodeArg.type``, e.g. "tensor(float)") to a Triton datatype string."""
    try:
        return _ONNX[ort_type]
    except KeyError:
        raise TensorError(f"ONNX type {ort_type!r} is not supported; supported types: {', '.join(_ONNX)}") from None


def _shape_str(shape: Any) -> str:
    return "[" + ",".join(str(int(d)) for d in shape) + "]"


def serialize_bytes(array: np.ndarray) -> bytes:
    """Triton's BYTES wire format: per element (row-major) a 4-byte little-endian length, then the bytes.

    bytes-like elements go as they are, str elements as UTF-8; anything else as the UTF-8 of str(element), as
    tritonclient does.
    """
    parts: list[bytes] = []
    pack = _LEN.pack
    for item in np.asarray(array).ravel(order="C").tolist():
        if isinstance(item, bytes):
            data = item
        elif isinstance(item, str):
            data = item.encode("utf-8")
        elif isinstance(item, bytearray | memoryview):
            data = bytes(item)
        else:
            data = str(item).encode("utf-8")
        if len(data) > 0xFFFFFFFF:
            raise ValueError(f"BYTES element of {len(data)} bytes does not fit a 4-byte length prefix")
        parts.append(pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def deserialize_bytes(buf: bytes, count: int | None, name: str) -> np.ndarray:
    """Parse Triton's BYTES wire format into a 1-D object array of bytes.

    ``count`` is the number of elements expected (None: as many as the buffer holds); ``name`` is the input's
    name, used in the TensorError raised for a malformed buffer.
    """
    view = memoryview(buf).cast("B")
    total = len(view)
    items: list[bytes] = []
    offset = 0
    unpack = _LEN.unpack_from
    while offset < total and (count is None or len(items) < count):
        index = len(items)
        remaining = total - offset
        if remaining < 4:
            raise TensorError(
                f"input {name!r}: malformed BYTES tensor: element {index} needs a 4-byte length prefix "
                f"but only {remaining} bytes remain"
            )
        (length,) = unpack(view, offset)
        offset += 4
        remaining -= 4
        if length > remaining:
            raise TensorError(
                f"input {name!r}: malformed BYTES tensor: element {index} claims {length} bytes "
                f"but only {remaining} remain"
            )
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if count is not None:
        if len(items) < count:
            raise TensorError(f"input {name!r}: malformed BYTES tensor: got {len(items)} elements, expected {count}")
        if offset < total:
            raise TensorError(
                f"input {name!r}: malformed BYTES tensor: {total - offset} trailing bytes after {count} elements"
            )
    out = np.empty(len(items), dtype=np.object_)
    out[:] = items
    return out


def decode_input(tensor: service_pb2.ModelInferRequest.InferInputTensor, raw: bytes | None) -> np.ndarray:
    """Decode one request input into a numpy array of its shape.

    ``raw`` is the input's entry of ``raw_input_contents`` (None when the request has none): fixed-size types are
    then wrapped zero-copy (the array is read-only), BYTES are parsed. Without ``raw`` the typed
    ``tensor.contents`` field Triton assigns to the datatype is read. Raises TensorError naming the input.
    """
    name = tensor.name
    datatype = tensor.datatype
    if datatype not in _NUMPY:
        raise TensorError(f"input {name!r}: unknown datatype {datatype!r}; expected one of {', '.join(DATATYPES)}")
    shape = [int(d) for d in tensor.shape]
    if any(d < 0 for d in shape):
        raise TensorError(f"input {name!r}: negative dimension in shape {_shape_str(shape)}")
    count = math.prod(shape)
    dtype = _NUMPY[datatype]
    contents = tensor.contents
    # HasField first: a raw-data request (the common case) never sets contents, so skip the nine field reads
    typed = [f for f in _ALL_CONTENTS_FIELDS if len(getattr(contents, f))] if tensor.HasField("contents") else []

    if raw is not None:
        if typed:
            raise TensorError(
                f"input {name!r}: has both raw_input_contents and contents.{typed[0]}; send only one of them"
            )
        if datatype == "BYTES":
            return deserialize_bytes(raw, count, name).reshape(shape)
        expected = count * dtype.itemsize
        if len(raw) != expected:
            raise TensorError(
                f"input {name!r}: got {len(raw)} bytes, expected {expected} for shape {_shape_str(shape)} {datatype}"
            )
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        if count == 0 and not typed:
            return np.empty(shape, dtype=dtype)
        raise TensorError(
            f"input {name!r}: {datatype} has no typed contents field; send the data in raw_input_contents"
        )
    others = [f for f in typed if f != field]
    if others:
        raise TensorError(f"input {name!r}: {datatype} data must be in contents.{field}, got contents.{others[0]}")
    values = getattr(contents, field)
    if len(values) != count:
        raise TensorError(
            f"input {name!r}: contents.{field} has {len(values)} elements, "
            f"expected {count} for shape {_shape_str(shape)} {datatype}"
        )
    if datatype == "BYTES":
        out = np.empty(count, dtype=np.object_)
        out[:] = list(values)
        return out.reshape(shape)
    if dtype.kind in "iu" and dtype.itemsize < 4 and count:
        wide = np.fromiter(values, dtype=np.int64, count=count)
        info = np.iinfo(dtype)
        low, high = int(wide.min()), int(wide.max())
        if low < info.min or high > info.max:
            raise TensorError(
                f"input {name!r}: contents.{field} value {low if low < info.min else high} "
                f"is out of range for {datatype}"
            )
        return wide.astype(dtype).reshape(shape)
    return np.fromiter(values, dtype=dtype, count=count).reshape(shape)


def encode_output(
    name: str, array: np.ndarray, datatype: str | None = None
) -> tuple[service_pb2.ModelInferResponse.InferOutputTensor, bytes]:
    """One response output: its InferOutputTensor and its raw_output_contents entry.

    The datatype comes from the array unless given; when given for a fixed-size type the array is converted to it.
    """
    array = np.asarray(array)
    if datatype is None:
        datatype = triton_dtype(array.dtype)
    else:
        _check_datatype(datatype)
    tensor = pb.ModelInferResponse.InferOutputTensor(name=name, datatype=datatype, shape=array.shape)
    if datatype == "BYTES":
        return tensor, serialize_bytes(array)
    dtype = _NUMPY[datatype]
    if array.dtype != dtype:
        array = array.astype(dtype)
    return tensor, array.tobytes(order="C")  # one copy, row-major even for non-contiguous views


def request_parameter(params: Mapping[str, service_pb2.InferParameter], key: str) -> bool | int | str | float | None:
    """The value of one request/tensor parameter (whichever oneof member is set), or None when absent or unset."""
    if key not in params:  # indexing a protobuf map would insert the key
        return None
    param = params[key]
    which = param.WhichOneof("parameter_choice")
    if which is None:
        return None
    value: bool | int | str | float = getattr(param, which)
    return value
