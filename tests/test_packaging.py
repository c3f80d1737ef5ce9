"""The package as pip builds it from a clean copy of the source: its files, its dependencies, and the
XPUD_ONNXRUNTIME switch between the GPU and the CPU-only ONNX Runtime build."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracked and new (not ignored) files, as a fresh clone has them: a build leaves the worktree alone."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    out = tmp_path_factory.mktemp("src")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, out / name)
    return out


def pip(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=280,
                          env={**os.environ, **(env or {})})


def metadata_requires(source: Path, tmp: Path, value: str) -> list[str]:
    report = tmp / f"report-{value or 'default'}.json"
    done = pip("install", "--dry-run", "--no-deps", "--ignore-installed", "-q", "--report", str(report),
               str(source), env={"XPUD_ONNXRUNTIME": value})
    assert done.returncode == 0, done.stderr
    [item] = json.loads(report.read_text())["install"]
    return list(item["metadata"]["requires_dist"])


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    built = pip("wheel", "--no-deps", "-v", "-w", str(out), str(source), env={"XPUD_ONNXRUNTIME": ""})
    assert built.returncode == 0, built.stderr
    [found] = out.glob("xpud-*.whl")
    return found, built.stdout + built.stderr


def test_the_wheel_builds_without_package_warnings_and_holds_its_data(wheel: tuple[Path, str]) -> None:
    path, log = wheel
    assert "absent from the `packages` configuration" not in log, log
    names = set(zipfile.ZipFile(path).namelist())
    for data in ("xpud/demo/iris/config.pbtxt", "xpud/demo/iris/1/model.onnx", "xpud/plugins/scenarios/default.json",
                 "xpud/plugins/scenarios/faults.json", "xpud/proto/link.proto", "xpud/agent/serving/providers.py"):
        assert data in names, data


def test_dependencies_are_declared_and_bounded(wheel: tuple[Path, str]) -> None:
    path, _ = wheel
    with zipfile.ZipFile(path) as z:
        [meta] = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(z.read(meta).decode())
    requires = message.get_all("Requires-Dist") or []
    by_name = {r.split(";")[0].split("<")[0].split(">")[0].split("=")[0].split("[")[0].strip().lower(): r
               for r in requires if "extra ==" not in r}
    assert "ml-dtypes" in by_name  # imported by agent/serving/runtime.py, not only tritonclient's
    for name in ("onnxruntime-gpu", "onnxruntime", "opentelemetry-exporter-prometheus", "numpy"):
        assert "<" in by_name[name], by_name[name]
    assert "platform_machine == \"x86_64\"" in by_name["onnxruntime-gpu"]
    test_extra = [r for r in requires if 'extra == "test"' in r]
    for tool in ("ruff", "mypy"):
        [spec] = [r for r in test_extra if r.startswith(tool)]
        assert "<" in spec, spec
    gpu_extra = [r.split(";")[0] for r in requires if 'extra == "gpu"' in r]
    assert "nvidia-cudnn-cu13~=9.0" in gpu_extra and "nvidia-cuda-runtime~=13.0" in gpu_extra
    assert "nvidia-cublas~=13.0" in gpu_extra  # the CUDA provider links libcublas.so.13


def test_xpud_onnxruntime_cpu_picks_the_cpu_build(source: Path, tmp_path: Path) -> None:
    requires = metadata_requires(source, tmp_path, "cpu")
    runtimes = [r for r in requires if r.startswith("onnxruntime") and "extra ==" not in r]
    assert runtimes == ["onnxruntime<1.32,>=1.20"]  # unconditional: on x86_64 Linux too, and no onnxruntime-gpu
    gpu = [r for r in metadata_requires(source, tmp_path, "gpu") if r.startswith("onnxruntime")]
    assert gpu == ["onnxruntime-gpu<1.32,>=1.28"]


def test_an_unknown_xpud_onnxruntime_is_refused(source: Path, tmp_path: Path) -> None:
    done = pip("install", "--dry-run", "--no-deps", "-q", str(source), env={"XPUD_ONNXRUNTIME": "cuda"})
    assert done.returncode != 0
    assert "XPUD_ONNXRUNTIME='cuda': use cpu, gpu, or leave it unset" in done.stdout + done.stderr
