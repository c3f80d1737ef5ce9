"""The bundled demo repository that `make run` serves: it loads and classifies iris flowers correctly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from sklearn.datasets import load_iris

from helpers import AgentProcess

MODELS = Path(__file__).resolve().parent.parent / "models"


def test_demo_repository_serves_an_accurate_iris_classifier():
    agent = AgentProcess("--model-repo", str(MODELS), "--grpc-host", "127.0.0.1", "--grpc-port", "0")
    try:
        x, y = load_iris(return_X_y=True)
        with grpcclient.InferenceServerClient(agent.grpc_url) as client:
            assert client.is_model_ready("iris")
            labels = []
            for start in range(0, len(x), 64):  # max_batch_size 64
                chunk = x[start:start + 64].astype(np.float32)
                inp = grpcclient.InferInput("X", list(chunk.shape), "FP32")
                inp.set_data_from_numpy(chunk)
                result = client.infer("iris", [inp])
                labels.append(result.as_numpy("label"))
                np.testing.assert_allclose(result.as_numpy("probabilities").sum(axis=1), 1, rtol=1e-5)
        accuracy = float((np.concatenate(labels) == y).mean())
        assert accuracy > 0.95, accuracy
    finally:
        code, out = agent.stop()
        assert code == 0, out[-2000:]
