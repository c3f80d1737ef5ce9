"""Execution providers are probed, not taken from onnxruntime's build list: CUDA and TensorRT, which
onnxruntime-gpu lists on any host, are reported only where a tiny session on them runs."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest

from helpers import ControllerProcess, linked_agent, wait_for
from xpud.agent.daemon import warn_unusable_gpus
from xpud.agent.serving import providers
from xpud.agent.serving.providers import CPU, Probe, tiny_model, try_providers

CUDA, TENSORRT = "CUDAExecutionProvider", "TensorrtExecutionProvider"
GPU_HOST = Path("/dev/nvidiactl").exists()  # there CUDA may well run
needs_no_gpu = pytest.mark.skipif(GPU_HOST, reason="a host with an NVIDIA driver: CUDA may run here")


def test_probe_model_runs_on_the_cpu() -> None:
    session = ort.InferenceSession(tiny_model(), providers=[CPU])
    out = session.run(None, {"x": np.array([-3.0, 4.0], dtype=np.float32)})[0]
    assert out.tolist() == [0.0, 4.0]


@needs_no_gpu
def test_cuda_listed_by_the_build_but_not_runnable_is_refused() -> None:
    result = try_providers(ort, [CUDA, TENSORRT])
    assert result.usable == (CPU,)
    assert set(result.refused) == {CUDA, TENSORRT}
    if CUDA in ort.get_available_providers():  # onnxruntime-gpu: lists CUDA here, and its library cannot load
        assert CUDA in result.listed
        assert "cannot open shared object file" in result.refused[CUDA] or "CPU EP" in result.refused[CUDA]
    else:  # the CPU-only onnxruntime (XPUD_ONNXRUNTIME=cpu)
        assert result.refused[CUDA] == "not in this onnxruntime build"


@needs_no_gpu
def test_probe_runs_once_per_process_in_a_child(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []
    real = subprocess.run

    def counted(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return real(cmd, **kwargs)  # type: ignore[call-overload, no-any-return]

    monkeypatch.setattr(providers, "_result", None)
    monkeypatch.setattr(providers, "nothing_to_probe", lambda: None)  # probe even without a driver
    monkeypatch.setattr(providers.subprocess, "run", counted)
    assert providers.usable_providers() == [CPU]
    assert providers.usable_providers() == [CPU]
    assert len(calls) == 1 and calls[0][1:] == ["-m", "xpud.agent.serving.providers"]
    result = providers.probe()
    assert result.version == ort.__version__ and result.listed == tuple(ort.get_available_providers())
    assert all(ep in result.refused for ep in result.listed if ep != CPU)


@needs_no_gpu
def test_the_child_probe_prints_what_runs() -> None:
    """The child the agent starts (python -m xpud.agent.serving.providers): one JSON line on stdout, whatever
    ONNX Runtime logs and prints while its providers fail."""
    child = subprocess.run([sys.executable, "-m", "xpud.agent.serving.providers"], capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == 0, child.stderr
    found = json.loads(child.stdout)
    assert found["usable"] == [CPU] and found["listed"] == ort.get_available_providers()
    assert set(found["refused"]) == set(found["listed"]) - {CPU}


def test_no_child_without_an_nvidia_driver(tmp_path: Path) -> None:
    """onnxruntime-gpu on a host without a driver: CPU only, known without a try; with one, a try is needed."""
    assert providers.nothing_to_probe([str(tmp_path)]) is None  # "a driver file" that exists
    known = providers.nothing_to_probe([str(tmp_path / "none")])
    assert known is not None and known.usable == (CPU,) and known.version == ort.__version__
    if CUDA in ort.get_available_providers():
        assert known.refused == {CUDA: "no NVIDIA driver on this host", TENSORRT: "no NVIDIA driver on this host"}


def test_a_failed_probe_reports_the_cpu_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    crash = tmp_path / "crash"
    crash.write_text("#!/bin/sh\necho 'Segmentation fault' >&2\nexit 139\n")
    crash.chmod(0o755)
    monkeypatch.setattr(providers, "_result", None)
    monkeypatch.setattr(providers, "nothing_to_probe", lambda: None)
    monkeypatch.setattr(providers.sys, "executable", str(crash))
    result = providers.probe()
    assert result.usable == (CPU,)
    assert "exit status 139" in result.refused["*"] and "Segmentation fault" in result.refused["*"]


def test_gpus_no_provider_can_run_are_named(caplog: pytest.LogCaptureFixture) -> None:
    def gpu(vendor: str, index: int) -> SimpleNamespace:
        return SimpleNamespace(id=f"{vendor}:{index}", plugin=vendor, kind="gpu", partition=None)

    inventory = SimpleNamespace(devices=[gpu("nvidia", 0), gpu("nvidia", 1), gpu("sim", 0)])
    refused = Probe((CUDA, TENSORRT, CPU), (CPU,), {CUDA: "libcublasLt.so.13: cannot open shared object file",
                                                  TENSORRT: "libnvinfer.so.10: cannot open shared object file"})
    with caplog.at_level(logging.WARNING):
        warn_unusable_gpus(inventory, refused)  # type: ignore[arg-type]
    [record] = caplog.records
    assert "nvidia:0, nvidia:1 cannot run models" in record.message
    assert "libcublasLt.so.13" in record.message and "xpud[gpu]" in record.message
    caplog.clear()
    no_driver = Probe((CUDA, TENSORRT, CPU), (CPU,), {CUDA: "libcuda.so.1: cannot open shared object file",
                                                    TENSORRT: "libnvinfer.so.10: cannot open shared object file"})
    with caplog.at_level(logging.WARNING):
        warn_unusable_gpus(inventory, no_driver)  # type: ignore[arg-type]
    assert "libcuda.so.1" in caplog.text and "xpud[gpu]" not in caplog.text  # the extra has no driver
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        warn_unusable_gpus(inventory, Probe((CUDA, CPU), (CUDA, CPU)))  # type: ignore[arg-type]
    assert not caplog.records


@needs_no_gpu
def test_hello_lists_only_providers_that_run(tmp_path: Path) -> None:
    """Over real processes: `xpud nodes --json` shows what the agent probed, and the agent process itself
    never loaded onnxruntime for it (an agent with no model keeps it out)."""
    c = ControllerProcess(str(tmp_path / "state"))
    agent = None
    try:
        agent = linked_agent(c, "n1", str(tmp_path / "cache"))
        nodes = wait_for(lambda: c.admin_json("nodes").get("nodes"), what="the node")
        assert nodes[0]["execution_providers"] == [CPU]
        assert CUDA not in nodes[0]["execution_providers"]
        maps = Path(f"/proc/{agent.proc.pid}/maps").read_text()
        assert "onnxruntime" not in maps
        wait_for(lambda: any("execution providers: CPUExecutionProvider" in line for line in agent.lines),
                 what="the probe's log line")
    finally:
        if agent is not None:
            agent.kill()
        c.kill()


def fake_onnxruntime(root: Path, cuda_version: str, calls: list[str]) -> SimpleNamespace:
    (root / "onnxruntime").mkdir(parents=True)

    def preload_dlls() -> None:
        calls.append("preload")
        print("Failed to load libcudnn.so.9: cannot open shared object file")

    return SimpleNamespace(__file__=str(root / "onnxruntime" / "__init__.py"), cuda_version=cuda_version,
                           preload_dlls=preload_dlls)


def test_nvidia_wheels_are_preloaded_only_where_installed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []
    ort_gpu = fake_onnxruntime(tmp_path, "13.0", calls)
    providers.preload_gpu_libraries(ort_gpu)
    assert calls == []  # no nvidia/ beside onnxruntime: the system's libraries, as ld.so finds them
    (tmp_path / "nvidia" / "cu13" / "lib").mkdir(parents=True)  # what nvidia-cuda-runtime 13 installs
    assert providers.nvidia_wheel_libraries(ort_gpu) == [tmp_path / "nvidia" / "cu13" / "lib"]
    with caplog.at_level(logging.WARNING):
        providers.preload_gpu_libraries(ort_gpu)
    assert calls == ["preload"]
    assert "libcudnn.so.9" in caplog.text  # what preload_dlls printed is logged, not left on stdout
    cpu_build = fake_onnxruntime(tmp_path / "cpu", "", calls)
    (tmp_path / "cpu" / "nvidia" / "cu13" / "lib").mkdir(parents=True)
    providers.preload_gpu_libraries(cpu_build)
    assert calls == ["preload"]  # the CPU build has no CUDA to load libraries for
