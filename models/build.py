"""Rebuild the bundled demo repository: an iris-species classifier (scikit-learn, converted by skl2onnx).

    .venv/bin/python models/build.py

Writes models/iris/1/model.onnx and models/iris/config.pbtxt. Needs the `test` extra (scikit-learn, skl2onnx).
The model is fitted on scikit-learn's bundled iris data set, so nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent

CONFIG = """# Iris species from sepal length, sepal width, petal length, petal width (cm).
# label: 0 setosa, 1 versicolor, 2 virginica; probabilities: one per class.
max_batch_size: 64
input [{ name: "X", data_type: TYPE_FP32, dims: [4] }]
output [
  { name: "label", data_type: TYPE_INT64, dims: [] },
  { name: "probabilities", data_type: TYPE_FP32, dims: [3] }
]
dynamic_batching { max_queue_delay_microseconds: 500 }
instance_group [{ count: 1, kind: KIND_AUTO }]
"""


def build(repo: Path = HERE) -> Path:
    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    onx = to_onnx(model, x[:1], options={LogisticRegression: {"zipmap": False}}, target_opset=17)
    folder = repo / "iris" / "1"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(onx.SerializeToString())
    (repo / "iris" / "config.pbtxt").write_text(CONFIG)
    return path


if __name__ == "__main__":
    print(build())
