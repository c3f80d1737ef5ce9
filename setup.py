"""xpud's dependencies; the rest of the metadata is in pyproject.toml.

They are here, not there, for one choice made at install time: which ONNX Runtime build. XPUD_ONNXRUNTIME=cpu
installs the CPU-only `onnxruntime` (about 20 MB) where the default, on Linux x86_64, is `onnxruntime-gpu`
(about 340 MB); XPUD_ONNXRUNTIME=gpu asks for `onnxruntime-gpu` on any platform. Only one of the two may be in an
environment: both install into one folder and overwrite each other's files.
"""

import os

from setuptools import setup

GPU_HOST = "platform_system == 'Linux' and platform_machine == 'x86_64'"
OTHER_HOST = "platform_system != 'Linux' or platform_machine != 'x86_64'"  # markers have no `not`
ORT_GPU = "onnxruntime-gpu>=1.28,<1.32"  # CUDA 13 / cuDNN 9 builds: the `gpu` extra's libraries
ORT_CPU = "onnxruntime>=1.20,<1.32"
ONNXRUNTIME = {
    "": [f"{ORT_GPU}; {GPU_HOST}", f"{ORT_CPU}; {OTHER_HOST}"],
    "gpu": [ORT_GPU],
    "cpu": [ORT_CPU],
}

BASE = [
    "nvidia-ml-py>=12.535",
    "grpcio>=1.81,<2",
    "grpcio-health-checking>=1.81,<2",
    # tritonclient[grpc] (the serving tests' client) pins protobuf<7; generated code is made with a matching
    # grpcio-tools.
    "protobuf>=6.33.5,<7",
    "psutil>=5.9",
    # Certificates (xpud certs), reading roles out of peer certificates, scrypt for token hashes.
    "cryptography>=42",
    "opentelemetry-sdk>=1.27,<2",
    # a beta line: each release pins one opentelemetry-sdk release, and its API may change between them
    "opentelemetry-exporter-prometheus>=0.48b0,<0.67",
    # The Open Inference Protocol wire contract: Triton's generated stubs (service, ModelConfig) come with the client.
    "tritonclient[grpc]>=2.60,<3",
    "numpy>=1.24,<3",
    "ml-dtypes>=0.4,<1",  # bfloat16 tensors (agent/serving/runtime.py)
    "PyYAML>=6,<7",
]


def dependencies() -> list[str]:
    choice = os.environ.get("XPUD_ONNXRUNTIME", "").strip().lower()
    if choice not in ONNXRUNTIME:
        raise SystemExit(f"XPUD_ONNXRUNTIME={choice!r}: use cpu, gpu, or leave it unset (gpu on Linux x86_64)")
    return BASE + ONNXRUNTIME[choice]


setup(install_requires=dependencies())
