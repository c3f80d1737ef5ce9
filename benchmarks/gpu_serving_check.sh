#!/usr/bin/env bash
# Serving on a real NVIDIA GPU with the CUDA execution provider (issue 3's device check).
# Needs python3 with onnxruntime-gpu importable (PYTHONPATH), numpy, onnx, grpcio>=1.81, tritonclient and xpud;
# CUDA 13 / cuDNN 9 libraries on LD_LIBRARY_PATH (pip's nvidia-* packages work). Writes under ${OUT:-./gpu-check-out}.
set -u
OUT=${OUT:-./gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
REPO=$(mktemp -d)
$PY - "$REPO" <<'PYEOF' 2>&1 | tee "$OUT/providers.txt"
import sys
sys.path.insert(0, "tests")
from pathlib import Path
import numpy as np, onnxruntime as ort
from models import mlp, save, scale
print("onnxruntime", ort.__version__, ort.get_available_providers())
repo = Path(sys.argv[1])
save(mlp(), repo, "mlp_gpu", 'max_batch_size: 8\ninstance_group [{ kind: KIND_GPU, gpus: [0] }]\n')
save(mlp(), repo, "mlp_auto")
save(scale(width=1024), repo, "scale_gpu", "max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 200 }\n"
     "instance_group [{ kind: KIND_GPU }]\n")
import shutil; shutil.copytree("models/iris", repo / "iris")  # ai.onnx.ml ops: the CUDA EP lacks them
PYEOF
$PY -m xpud agent --standalone --model-repo "$REPO" --grpc-host 127.0.0.1 --grpc-port 18001 \
  --metrics-host 127.0.0.1 --metrics-port 18002 > "$OUT/agent.log" 2>&1 &
agent=$!
for _ in $(seq 60); do grep -q "models ready" "$OUT/agent.log" && break; sleep 0.5; done
grep -E "READY|failed|error" "$OUT/agent.log" | cut -c1-300
$PY - <<'PYEOF' 2>&1 | tee "$OUT/serving.txt"
import sys, time
sys.path.insert(0, "tests")
import numpy as np, tritonclient.grpc as g
from models import mlp_reference
c = g.InferenceServerClient("127.0.0.1:18001")
for name in ("mlp_gpu", "mlp_auto", "scale_gpu", "iris"):
    try:
        cfg = c.get_model_config(name).config
        ep = cfg.parameters["xpud.execution_provider"].string_value
        print(name, "ready:", c.is_model_ready(name), "EP:", ep, "groups:",
              [(gr.Kind.Name(gr.kind), gr.count, list(gr.gpus)) for gr in cfg.instance_group])
    except Exception as exc:
        print(name, "->", str(exc)[:300])
x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
i = g.InferInput("x", [8, 4], "FP32"); i.set_data_from_numpy(x)
got = c.infer("mlp_gpu", [i]).as_numpy("probs")
print("mlp_gpu max abs diff vs numpy:", float(np.abs(got - mlp_reference(x)).max()))
big = np.ones((1, 1024), np.float32); j = g.InferInput("x", [1, 1024], "FP32"); j.set_data_from_numpy(big)
lat = []
for _ in range(300):
    t = time.perf_counter(); c.infer("scale_gpu", [j]); lat.append(time.perf_counter() - t)
lat.sort(); print("scale_gpu c=1 p50 %.3f ms p99 %.3f ms" % (lat[150] * 1e3, lat[297] * 1e3))
PYEOF
curl -s 127.0.0.1:18002/metrics | grep -E '^xpud_inference_requests_total|^hw_gpu_utilization' | cut -c1-250
kill -TERM $agent; wait $agent; echo "agent exit code: $?"
