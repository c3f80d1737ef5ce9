"""The checked-in generated protobuf code is exactly what `make proto` produces."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

PROTO = Path(__file__).resolve().parent.parent / "proto"


def test_generated_code_matches_the_sources(tmp_path):
    pytest.importorskip("grpc_tools")
    spec = importlib.util.spec_from_file_location("proto_generate", PROTO / "generate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.generate(tmp_path)
    assert written, "no generated files"
    checked_in = sorted(p.name for p in PROTO.iterdir() if p.name.endswith(module.SUFFIXES))
    assert sorted(p.name for p in written) == checked_in, "run `make proto` and commit the result"
    for path in written:
        assert path.read_text() == (PROTO / path.name).read_text(), f"{path.name} is stale: run `make proto`"


def test_generated_modules_import_under_the_package():
    from xpud.proto import telemetry_pb2

    assert telemetry_pb2.DESCRIPTOR.package == "xpud.v1"
    assert "xpud.proto.telemetry_pb2" in sys.modules
