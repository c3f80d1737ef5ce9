"""The OIP wire helpers against tritonclient's real client-side encoder (InferInput) and decoder (InferResult)."""

from __future__ import annotations

import struct

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from xpud.proto import oip
from xpud.proto.oip import TensorError, pb

RNG = np.random.default_rng(7)

FIXED = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 255], [7, 128, 3]], dtype=np.uint8),
    "UINT16": np.array([[0, 65535, 3], [4, 5, 6]], dtype=np.uint16),
    "UINT32": np.array([[0, 2**32 - 1, 3], [4, 5, 6]], dtype=np.uint32),
    "UINT64": np.array([[0, 2**64 - 1, 3], [4, 5, 6]], dtype=np.uint64),
    "INT8": np.array([[-128, 127, 0], [1, -1, 5]], dtype=np.int8),
    "INT16": np.array([[-32768, 32767, 0], [1, -1, 5]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 2**31 - 1, 0], [1, -1, 5]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 2**63 - 1, 0], [1, -1, 5]], dtype=np.int64),
    "FP16": RNG.standard_normal((2, 3)).astype(np.float16),
    "FP32": RNG.standard_normal((2, 3)).astype(np.float32),
    "FP64": RNG.standard_normal((2, 3)),
    "BF16": RNG.standard_normal((2, 3)).astype(ml_dtypes.bfloat16),
}

STR_ARRAY = np.array([["héllo", ""], ["wörld", "x" * 300]], dtype=np.object_)
BYTES_ARRAY = np.array([b"\x00\x01binary\xff", b"", b"abc"], dtype=np.object_)


def _client_input(name: str, array: np.ndarray, datatype: str) -> tuple[pb.ModelInferRequest.InferInputTensor, bytes]:
    inp = grpcclient.InferInput(name, list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return inp._get_tensor(), inp._get_content()


def _through_client_result(name: str, array: np.ndarray, datatype: str | None = None) -> np.ndarray:
    tensor, raw = oip.encode_output(name, array, datatype)
    response = pb.ModelInferResponse(model_name="m", outputs=[tensor], raw_output_contents=[raw])
    wire = pb.ModelInferResponse.FromString(response.SerializeToString())
    return grpcclient.InferResult(wire).as_numpy(name)


def _as_bytes(array: np.ndarray) -> np.ndarray:
    out = np.empty(array.shape, dtype=np.object_)
    for idx, item in np.ndenumerate(array):
        out[idx] = item if isinstance(item, bytes) else str(item).encode("utf-8")
    return out


# ---- dtype tables ---------------------------------------------------------------------------------------------------


def test_dtype_tables_cover_every_datatype() -> None:
    assert set(oip.DATATYPES) == {*FIXED, "BYTES"}
    for datatype, array in FIXED.items():
        assert oip.numpy_dtype(datatype) == array.dtype
        assert oip.triton_dtype(array.dtype) == datatype
        assert oip.element_size(datatype) == array.dtype.itemsize
        assert oip.config_to_triton(oip.triton_to_config(datatype)) == datatype
        assert oip.mc.DataType.Name(oip.triton_to_config(datatype)) == f"TYPE_{datatype}"
    assert oip.numpy_dtype("BF16") == np.dtype(ml_dtypes.bfloat16)
    assert oip.numpy_dtype("BYTES") == np.dtype(np.object_)
    assert oip.element_size("BYTES") is None
    for dt in (np.object_, np.bytes_, np.str_, np.dtype("S4"), np.dtype("<U3")):
        assert oip.triton_dtype(dt) == "BYTES"
    assert oip.triton_dtype(np.dtype(">f4")) == "FP32"
    assert oip.config_to_triton(oip.mc.TYPE_STRING) == "BYTES"
    assert oip.config_to_triton(oip.mc.TYPE_FP32) == "FP32"
    assert oip.triton_to_config("BYTES") == oip.mc.TYPE_STRING
    assert oip.SERVICE_NAME == oip.pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
    assert hasattr(oip.pb_grpc, "GRPCInferenceServiceServicer")


def test_dtype_errors() -> None:
    with pytest.raises(TensorError, match=r"unknown datatype 'FP8'.*FP32"):
        oip.numpy_dtype("FP8")
    with pytest.raises(TensorError, match="FP8"):
        oip.element_size("FP8")
    with pytest.raises(TensorError, match="FP8"):
        oip.triton_to_config("FP8")
    with pytest.raises(TensorError, match="TYPE_INVALID"):
        oip.config_to_triton(oip.mc.TYPE_INVALID)
    with pytest.raises(TensorError, match="999"):
        oip.config_to_triton(999)
    with pytest.raises(ValueError, match="complex64"):
        oip.triton_dtype(np.complex64)


@pytest.mark.parametrize(
    ("ort", "triton"),
    [
        ("tensor(float)", "FP32"),
        ("tensor(float16)", "FP16"),
        ("tensor(bfloat16)", "BF16"),
        ("tensor(double)", "FP64"),
        ("tensor(string)", "BYTES"),
        ("tensor(bool)", "BOOL"),
        ("tensor(int8)", "INT8"),
        ("tensor(int16)", "INT16"),
        ("tensor(int32)", "INT32"),
        ("tensor(int64)", "INT64"),
        ("tensor(uint8)", "UINT8"),
        ("tensor(uint16)", "UINT16"),
        ("tensor(uint32)", "UINT32"),
        ("tensor(uint64)", "UINT64"),
    ],
)
def test_onnx_to_triton(ort: str, triton: str) -> None:
    assert oip.onnx_to_triton(ort) == triton


def test_onnx_to_triton_unknown() -> None:
    with pytest.raises(TensorError, match=r"ONNX type 'tensor\(complex64\)' is not supported.*tensor\(float\)"):
        oip.onnx_to_triton("tensor(complex64)")


# ---- inputs: tritonclient InferInput -> decode_input -----------------------------------------------------------------


@pytest.mark.parametrize("datatype", list(FIXED))
def test_decode_raw_from_tritonclient(datatype: str) -> None:
    original = FIXED[datatype]
    tensor, raw = _client_input("x", original, datatype)
    wire = pb.ModelInferRequest.InferInputTensor.FromString(tensor.SerializeToString())
    decoded = oip.decode_input(wire, raw)
    assert decoded.dtype == original.dtype
    assert decoded.shape == original.shape
    np.testing.assert_array_equal(decoded, original)


@pytest.mark.parametrize("original", [STR_ARRAY, BYTES_ARRAY], ids=["str", "bytes"])
def test_decode_bytes_from_tritonclient(original: np.ndarray) -> None:
    tensor, raw = _client_input("text", original, "BYTES")
    decoded = oip.decode_input(tensor, raw)
    assert decoded.dtype == np.object_
    assert decoded.shape == original.shape
    assert decoded.tolist() == _as_bytes(original).tolist()


def test_decode_raw_is_zero_copy() -> None:
    raw = np.arange(12, dtype=np.float32).tobytes()
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[3, 4])
    decoded = oip.decode_input(tensor, raw)
    assert np.shares_memory(decoded, np.frombuffer(raw, dtype=np.uint8))
    np.testing.assert_array_equal(decoded, np.arange(12, dtype=np.float32).reshape(3, 4))


@pytest.mark.parametrize("datatype", ["FP32", "BYTES", "FP16"])
def test_decode_zero_elements(datatype: str) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype=datatype, shape=[0, 4])
    assert oip.decode_input(tensor, b"").shape == (0, 4)
    assert oip.decode_input(tensor, None).shape == (0, 4)


def test_decode_scalar_shape() -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="INT64", shape=[])
    decoded = oip.decode_input(tensor, np.array(42, dtype=np.int64).tobytes())
    assert decoded.shape == ()
    assert decoded.item() == 42


# ---- inputs: typed contents ------------------------------------------------------------------------------------------

TYPED_FIELDS = {
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
}


@pytest.mark.parametrize("datatype", list(TYPED_FIELDS))
def test_decode_typed_contents(datatype: str) -> None:
    original = FIXED[datatype]
    contents = pb.InferTensorContents(**{TYPED_FIELDS[datatype]: original.ravel().tolist()})
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="x", datatype=datatype, shape=list(original.shape), contents=contents
    )
    decoded = oip.decode_input(pb.ModelInferRequest.InferInputTensor.FromString(tensor.SerializeToString()), None)
    assert decoded.dtype == original.dtype
    np.testing.assert_array_equal(decoded, original)


def test_decode_typed_bytes_contents() -> None:
    values = [b"a", b"", b"\xffz", b"dd"]
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="text", datatype="BYTES", shape=[2, 2], contents=pb.InferTensorContents(bytes_contents=values)
    )
    decoded = oip.decode_input(tensor, None)
    assert decoded.dtype == np.object_
    assert decoded.tolist() == [[b"a", b""], [b"\xffz", b"dd"]]


# ---- input errors ----------------------------------------------------------------------------------------------------


def _tensor(name: str, datatype: str, shape: list[int], **contents: list) -> pb.ModelInferRequest.InferInputTensor:
    tensor = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    if contents:
        tensor.contents.CopyFrom(pb.InferTensorContents(**contents))
    return tensor


def test_error_unknown_datatype() -> None:
    with pytest.raises(TensorError, match=r"input 'img': unknown datatype 'FLOAT'; expected one of BOOL, .*BYTES"):
        oip.decode_input(_tensor("img", "FLOAT", [1]), b"\x00" * 4)


def test_error_negative_dim() -> None:
    with pytest.raises(TensorError, match=r"input 'img': negative dimension in shape \[-1,4\]"):
        oip.decode_input(_tensor("img", "FP32", [-1, 4]), b"")


def test_error_byte_size_mismatch() -> None:
    with pytest.raises(TensorError, match=r"^input 'x': got 40 bytes, expected 48 for shape \[3,4\] FP32$"):
        oip.decode_input(_tensor("x", "FP32", [3, 4]), b"\x00" * 40)


def test_error_typed_count_mismatch() -> None:
    tensor = _tensor("ids", "INT32", [2, 3], int_contents=[1, 2, 3, 4, 5])
    with pytest.raises(TensorError, match=r"input 'ids': contents.int_contents has 5 elements, expected 6"):
        oip.decode_input(tensor, None)


def test_error_typed_missing_data() -> None:
    with pytest.raises(TensorError, match=r"input 'ids': contents.int64_contents has 0 elements, expected 2"):
        oip.decode_input(_tensor("ids", "INT64", [2]), None)


@pytest.mark.parametrize("datatype", ["FP16", "BF16"])
def test_error_half_in_typed_contents(datatype: str) -> None:
    tensor = _tensor("h", datatype, [2], fp32_contents=[1.0, 2.0])
    with pytest.raises(TensorError, match=rf"input 'h': {datatype} has no typed contents field; .*raw_input_contents"):
        oip.decode_input(tensor, None)


def test_error_typed_wrong_field() -> None:
    tensor = _tensor("v", "FP32", [2], fp64_contents=[1.0, 2.0])
    with pytest.raises(TensorError, match=r"input 'v': FP32 data must be in contents.fp32_contents"):
        oip.decode_input(tensor, None)


def test_error_typed_out_of_range() -> None:
    tensor = _tensor("v", "INT8", [2], int_contents=[1, 300])
    with pytest.raises(TensorError, match=r"input 'v': contents.int_contents value 300 is out of range for INT8"):
        oip.decode_input(tensor, None)


def test_error_raw_and_typed() -> None:
    tensor = _tensor("v", "FP32", [1], fp32_contents=[1.0])
    with pytest.raises(TensorError, match=r"input 'v': has both raw_input_contents and contents.fp32_contents"):
        oip.decode_input(tensor, b"\x00" * 4)


def test_error_bytes_length_past_end() -> None:
    raw = struct.pack("<I", 1) + b"a" + struct.pack("<I", 1000) + b"x" * 12
    with pytest.raises(
        TensorError, match=r"^input 'text': malformed BYTES tensor: element 1 claims 1000 bytes but only 12 remain$"
    ):
        oip.decode_input(_tensor("text", "BYTES", [2]), raw)


def test_error_bytes_truncated_prefix() -> None:
    raw = struct.pack("<I", 1) + b"a" + b"\x01\x00"
    with pytest.raises(TensorError, match=r"input 'text': malformed BYTES tensor: element 1 needs a 4-byte length"):
        oip.decode_input(_tensor("text", "BYTES", [2]), raw)


def test_error_bytes_trailing() -> None:
    raw = oip.serialize_bytes(np.array([b"a", b"b"], dtype=np.object_)) + b"junk"
    with pytest.raises(TensorError, match=r"input 'text': malformed BYTES tensor: 4 trailing bytes after 2 elements"):
        oip.decode_input(_tensor("text", "BYTES", [2]), raw)


def test_error_bytes_too_few_elements() -> None:
    raw = oip.serialize_bytes(np.array([b"a", b"b"], dtype=np.object_))
    with pytest.raises(TensorError, match=r"input 'text': malformed BYTES tensor: got 2 elements, expected 3"):
        oip.decode_input(_tensor("text", "BYTES", [3]), raw)


def test_deserialize_bytes_without_count() -> None:
    raw = oip.serialize_bytes(np.array(["a", "bc", ""], dtype=np.object_))
    assert oip.deserialize_bytes(raw, None, "t").tolist() == [b"a", b"bc", b""]
    assert oip.deserialize_bytes(b"", None, "t").shape == (0,)
    with pytest.raises(TensorError, match="input 't'"):
        oip.deserialize_bytes(raw + b"\x05", None, "t")


def test_serialize_bytes_matches_tritonclient() -> None:
    from tritonclient.utils import serialize_byte_tensor

    for array in (STR_ARRAY, BYTES_ARRAY, np.array([b"ab", b"c"], dtype="S2")):
        assert oip.serialize_bytes(array) == serialize_byte_tensor(array).item()
    # tritonclient refuses numpy str_ arrays; ours encodes them like the equivalent object array.
    unicode = np.array(["ab", "ü"])
    assert oip.serialize_bytes(unicode) == serialize_byte_tensor(unicode.astype(np.object_)).item()


# ---- outputs: encode_output -> tritonclient InferResult ----------------------------------------------------------


@pytest.mark.parametrize("datatype", list(FIXED))
def test_encode_output_through_tritonclient(datatype: str) -> None:
    original = FIXED[datatype]
    tensor, _ = oip.encode_output("y", original)
    assert tensor.datatype == datatype
    assert list(tensor.shape) == [2, 3]
    got = _through_client_result("y", original)
    assert got.dtype == original.dtype
    np.testing.assert_array_equal(got, original)


@pytest.mark.parametrize("original", [STR_ARRAY, BYTES_ARRAY, np.array(["a", "bb"])], ids=["str", "bytes", "U"])
def test_encode_bytes_output_through_tritonclient(original: np.ndarray) -> None:
    tensor, _ = oip.encode_output("y", original)
    assert tensor.datatype == "BYTES"
    got = _through_client_result("y", original)
    assert got.shape == original.shape
    assert got.tolist() == _as_bytes(original).tolist()


def test_encode_output_non_contiguous_and_empty() -> None:
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    view = base[:, ::2].T
    np.testing.assert_array_equal(_through_client_result("y", view), view)
    empty = np.zeros((0, 3), dtype=np.int64)
    assert _through_client_result("y", empty).shape == (0, 3)
    empty_bytes = np.empty((2, 0), dtype=np.object_)
    assert _through_client_result("y", empty_bytes).shape == (2, 0)


def test_encode_output_explicit_datatype() -> None:
    values = np.array([1.5, -2.25], dtype=np.float64)
    tensor, raw = oip.encode_output("y", values, "FP32")
    assert tensor.datatype == "FP32"
    assert raw == values.astype(np.float32).tobytes()
    _, raw = oip.encode_output("s", np.array(["a"], dtype=np.object_), "BYTES")
    assert raw == b"\x01\x00\x00\x00a"
    with pytest.raises(TensorError, match="FP8"):
        oip.encode_output("y", values, "FP8")


def test_output_round_trips_back_into_decode_input() -> None:
    for datatype, original in FIXED.items():
        out, raw = oip.encode_output("z", original)
        inp = pb.ModelInferRequest.InferInputTensor(name="z", datatype=out.datatype, shape=out.shape)
        np.testing.assert_array_equal(oip.decode_input(inp, raw), original, err_msg=datatype)


# ---- parameters ------------------------------------------------------------------------------------------------------


def test_request_parameter() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.parameters["flag"].bool_param = True
    request.parameters["n"].int64_param = -5
    request.parameters["s"].string_param = "hi"
    request.parameters["d"].double_param = 0.5
    request.parameters["u"].uint64_param = 2**64 - 1
    request.parameters["unset"].CopyFrom(pb.InferParameter())
    wire = pb.ModelInferRequest.FromString(request.SerializeToString())
    params = wire.parameters
    assert oip.request_parameter(params, "flag") is True
    assert oip.request_parameter(params, "n") == -5
    assert oip.request_parameter(params, "s") == "hi"
    assert oip.request_parameter(params, "d") == 0.5
    assert oip.request_parameter(params, "u") == 2**64 - 1
    assert oip.request_parameter(params, "unset") is None
    assert oip.request_parameter(params, "missing") is None
    assert "missing" not in params
    assert oip.request_parameter({}, "x") is None
