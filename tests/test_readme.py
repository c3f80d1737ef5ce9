"""README's "try it" lines run as written against `xpud up`: each exits 0 (what a new user types first)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from helpers import up_process, wait_for

ROOT = Path(__file__).resolve().parent.parent


def try_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- try:begin -->\n```sh\n(.*?)```\n<!-- try:end -->", text, re.S)
    assert block, "README.md lost its try:begin/try:end block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_try_lines_run_against_xpud_up(tmp_path: Path) -> None:
    lines = try_lines()
    assert lines[0] == ". .venv/bin/activate" and all(line.startswith("xpud ") for line in lines[1:]), lines
    proc, out, reader = up_process(tmp_path)
    try:
        admin = wait_for(lambda: re.search(r"admin \(xpud nodes.*?:\s+(127\.0\.0\.1:\d+)", "".join(out)),
                         timeout=60, what="the banner").group(1)
        wait_for(lambda: "xpud is up" in "".join(out), timeout=60, what="up")
        # as written after the activate line (the .venv `make install` made); the controller is found through the
        # environment, its ports being ephemeral here
        env = {**os.environ, "XPUD_CONTROLLER": admin}
        activate = f"{lines[0]} && " if (ROOT / ".venv/bin/activate").exists() else \
            f"PATH={Path(sys.executable).parent}:$PATH && "
        for line in lines[1:]:
            result = subprocess.run(["bash", "-c", activate + line], capture_output=True, text=True, env=env,
                                    timeout=60, cwd=ROOT)
            assert result.returncode == 0, f"{line!r}: {result.stderr}"
            if line == "xpud deployments":
                wait_for(lambda listing=activate + line: "Running" in subprocess.run(
                    ["bash", "-c", listing], capture_output=True, text=True, env=env, cwd=ROOT).stdout, timeout=60,
                    what="iris Running")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(timeout=5)
