"""Where a c=1 request's time goes in the agent: three agent processes on the same repository, one client.

Side by side in one run, the same tritonclient (sync) client taking turns in chunks between:
  - echo:    the real agent process (its plugins, metrics server, grpc.aio server and options) whose ModelInfer
             answers with its inputs as outputs and touches no model: what the process and gRPC cost;
  - inline:  the real agent whose ModelInfer decodes the request, runs the model's runner (``session.run``) and
             encodes the answer directly on the event loop, with no batcher, thread hand-off or statistics.
             A diagnostic only: it blocks the event loop for the length of ``session.run``, which the agent
             never does;
  - agent:   the agent as shipped (batcher, the instance's own thread, statistics, metrics).
Then the shipped agent's own ModelStatistics over the window split its time into queue (until the instance
thread takes the request), compute input/infer/output.

The patched variants are the real ``xpud agent`` with one servicer method replaced before it starts
(``--role echo|inline``, internal). Prints one JSON object.

Example: python benchmarks/serving_breakdown.py --models mlp,minilm --seconds 10
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))  # serving.py's models, repository and process helpers
VARIANTS = ("echo", "inline", "agent")


def _patch(role: str) -> None:
    """Replace InferenceServicer.ModelInfer in this process (the agent started by --role)."""
    from xpud.agent.serving import inference, servicer
    from xpud.proto.oip import pb

    async def echo(self: Any, request: Any, context: Any) -> Any:
        out = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        for t in request.inputs:
            out.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        out.raw_output_contents.extend(request.raw_input_contents)
        return out

    runners: dict[tuple[str, int], Any] = {}

    async def inline(self: Any, request: Any, context: Any) -> Any:
        prepared = inference.prepare(self.manager, request)
        mv = prepared.model
        run = runners.get((mv.name, mv.version))
        if run is None:
            run = runners[(mv.name, mv.version)] = mv.runner(mv.instances[0])
        ((results, _),) = run([prepared.request])
        return inference.response(prepared, request, results)

    servicer.InferenceServicer.ModelInfer = echo if role == "echo" else inline  # type: ignore[method-assign]


def _agent(role: str, repo: Path) -> tuple[Any, int]:
    """Start one variant on an ephemeral port; returns (serving.Proc, port) once its models are ready."""
    from serving import Proc

    args = ["agent", "--standalone", "--model-repo", str(repo), "--grpc-host", "127.0.0.1", "--grpc-port", "0",
            "--metrics-host", "127.0.0.1", "--metrics-port", "0"]
    head = [sys.executable, "-m", "xpud"] if role == "agent" else [sys.executable, str(HERE), "--role", role]
    proc = Proc([*head, *args])
    port = int(proc.wait_for(r"inference endpoint \(OIP gRPC\) at 127\.0\.0\.1:(\d+)").group(1))
    proc.wait_for(r"models ready:", 180)
    return proc, port


def _inputs(model: str, grpcclient: Any) -> list[Any]:
    from serving import MODELS

    out = []
    for name, array in MODELS[model].sample(1).items():
        tensor = grpcclient.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def _stats(client: Any, model: str) -> dict[str, float]:
    s = client.get_inference_statistics(model).model_stats[0].inference_stats
    return {"n": s.success.count, "total": s.success.ns, "queue": s.queue.ns, "compute_input": s.compute_input.ns,
            "compute_infer": s.compute_infer.ns, "compute_output": s.compute_output.ns}


def measure(models: list[str], seconds: float, warmup: int) -> dict[str, Any]:
    import tritonclient.grpc as grpcclient
    from serving import DEFAULT_INTRA, DEFAULT_QUEUE_DELAY_US, build_repo

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        repo = build_repo(Path(tmp), models, DEFAULT_QUEUE_DELAY_US, [], DEFAULT_INTRA, 1)
        procs: list[Any] = []
        try:
            clients = {}
            for v in VARIANTS:
                proc, port = _agent(v, repo)
                procs.append(proc)
                clients[v] = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
            for model in models:
                inputs = _inputs(model, grpcclient)
                for c in clients.values():
                    for _ in range(warmup):
                        c.infer(model, inputs)
                before = _stats(clients["agent"], model)
                times: dict[str, list[float]] = {v: [] for v in VARIANTS}
                chunk = 50 if model == "mlp" else 10
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    for v, c in clients.items():
                        for _ in range(chunk):
                            t0 = time.perf_counter()
                            c.infer(model, inputs)
                            times[v].append(time.perf_counter() - t0)
                        time.sleep(0.05)  # let the previous server's ONNX Runtime pool stop spinning
                after = _stats(clients["agent"], model)
                n = max(after["n"] - before["n"], 1)
                result: dict[str, Any] = {}
                for v, ts in times.items():
                    ts.sort()
                    result[f"{v}_p50_ms"] = round(ts[len(ts) // 2] * 1e3, 4)
                    result[f"{v}_p90_ms"] = round(ts[int(len(ts) * 0.9)] * 1e3, 4)
                    result[f"{v}_n"] = len(ts)
                result["agent_server_us_per_request"] = {
                    k: round((after[k] - before[k]) / n / 1e3, 1) for k in after if k != "n"
                }
                result["inference_and_codec_ms"] = round(result["inline_p50_ms"] - result["echo_p50_ms"], 4)
                result["handoff_and_bookkeeping_ms"] = round(result["agent_p50_ms"] - result["inline_p50_ms"], 4)
                out[model] = result
        finally:
            for proc in procs:
                proc.popen.kill()
                proc.popen.wait()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--models", default="mlp", help="comma-separated: mlp, minilm")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per model")
    parser.add_argument("--warmup", type=int, default=100, help="warm-up requests per server and model")
    parser.add_argument("--role", choices=("echo", "inline"), help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.role:  # a patched agent: run the real CLI with the remaining arguments
        _patch(args.role)
        from xpud.cli import main as xpud_main

        sys.argv = ["xpud", *rest]
        xpud_main()
        return
    models = [m for m in args.models.split(",") if m]
    result = {"benchmark": "serving_breakdown", "seconds": args.seconds, "models": measure(models, args.seconds,
                                                                                             args.warmup)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
