"""Small real ONNX models for the serving tests, built with onnx.helper and skl2onnx."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def save(model: onnx.ModelProto, repo: Path, name: str, config: str | None = None, version: int = 1) -> Path:
    model.ir_version = 9
    onnx.checker.check_model(model)
    folder = repo / name / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    if config is not None:
        (repo / name / "config.pbtxt").write_text(config)
    return folder / "model.onnx"


def onnx_bytes(model: onnx.ModelProto) -> bytes:
    """A model's file contents, at the IR version `save` writes (what a push sends)."""
    model.ir_version = 9
    return model.SerializeToString()


def mlp(seed: int = 0) -> onnx.ModelProto:
    """[batch, 4] FP32 -> softmax [batch, 3]; dynamic batch, no config needed."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 16)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "B1"),
        numpy_helper.from_array(rng.standard_normal((16, 3)).astype(np.float32), "W2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h"]),
        helper.make_node("Add", ["h", "B1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=OPSET)


def mlp_reference(x: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w1, b1, w2 = rng.standard_normal((4, 16)), rng.standard_normal(16), rng.standard_normal((16, 3))
    logits = np.maximum(x @ w1.astype(np.float32) + b1.astype(np.float32), 0) @ w2.astype(np.float32)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def scale(width: int = 16, factor: float = 2.0) -> onnx.ModelProto:
    """y = x * factor, [batch, width] FP32 (batched in tests through its config)."""
    nodes = [helper.make_node("Mul", ["x", "k"], ["y"])]
    graph = helper.make_graph(
        nodes, "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(np.array(factor, dtype=np.float32), "k")],
    )
    return helper.make_model(graph, opset_imports=OPSET)


IDENTITY_TYPES = {
    "FP16": TensorProto.FLOAT16, "BF16": TensorProto.BFLOAT16, "FP64": TensorProto.DOUBLE, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64, "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16, "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64,
    "BOOL": TensorProto.BOOL, "BYTES": TensorProto.STRING, "FP32": TensorProto.FLOAT,
}


def identities(types: tuple[str, ...]) -> onnx.ModelProto:
    """One Identity per Triton datatype: in_<T> [batch, -1] -> out_<T>."""
    nodes, inputs, outputs = [], [], []
    for name in types:
        elem = IDENTITY_TYPES[name]
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{name}", elem, ["batch", "n"]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", elem, ["batch", "n"]))
    graph = helper.make_graph(nodes, "identities", inputs, outputs)
    return helper.make_model(graph, opset_imports=OPSET)


def image_identity() -> onnx.ModelProto:
    """[1, 3, 1024, 1024] FP32 in, its mean out: a big request through the default message limit."""
    nodes = [helper.make_node("ReduceMean", ["image"], ["mean"], keepdims=0)]
    graph = helper.make_graph(
        nodes, "image",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 1024, 1024])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [])],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def slow(rows: int = 256, width: int = 1024, layers: int = 4) -> onnx.ModelProto:
    """x [1] FP32 -> y [1]: broadcasts x over a [rows, width] block and multiplies it by W `layers` times,
    so that one execution keeps an instance busy for a while (queue, priority and timeout tests)."""
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((width, width)) / width).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.ones((rows, width), np.float32), "ones")]
    nodes = [helper.make_node("Mul", ["x", "ones"], ["h0"])]
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "W"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("ReduceSum", [f"h{layers}"], ["s"], keepdims=0))
    nodes.append(helper.make_node("Reshape", ["s", "shape1"], ["y"]))
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "shape1"))
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        inits,
    )
    return helper.make_model(graph, opset_imports=OPSET)


def unknown_op() -> onnx.ModelProto:
    """A graph that needs an operator no execution provider has."""
    nodes = [helper.make_node("FrobnicateV9", ["x"], ["y"], domain="com.example")]
    graph = helper.make_graph(
        nodes, "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=[*OPSET, helper.make_opsetid("com.example", 1)])


def iris_classifier() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """A LogisticRegression fitted on sklearn's bundled iris data, converted by skl2onnx (no ZipMap).
    Returns the model, sample features and sklearn's own predicted labels for them."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    clf = LogisticRegression(max_iter=500).fit(x, y)
    model = to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}}, target_opset=17)
    return model, x[::10], clf.predict(x[::10])
