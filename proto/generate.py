"""Regenerate the checked-in protobuf modules (``make proto``), or write them elsewhere for the drift test.

The .proto sources sit in this folder but are compiled as ``xpud/proto/*.proto`` so
that generated modules import each other as ``xpud.proto.x_pb2``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # test/dev dependency only

    sources = sorted(HERE.glob("*.proto"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pkg = root / "xpud" / "proto"
        pkg.mkdir(parents=True)
        for src in sources:
            shutil.copy(src, pkg / src.name)
        include = Path(protoc.__file__).parent / "_proto"
        args = ["protoc", f"-I{root}", f"-I{include}", f"--python_out={root}", f"--pyi_out={root}"]
        args += [f"--grpc_python_out={root}"] + [f"xpud/proto/{s.name}" for s in sources]
        if protoc.main(args) != 0:
            raise RuntimeError("protoc failed")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for path in sorted(pkg.iterdir()):
            if path.name.endswith(SUFFIXES):
                if path.name.endswith("_pb2_grpc.py") and "class " not in path.read_text():
                    continue  # no services in this file: skip the empty grpc module
                shutil.copy(path, out_dir / path.name)
                written.append(out_dir / path.name)
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE
    for path in generate(target):
        print(path.relative_to(target.parent) if target == HERE else path)
