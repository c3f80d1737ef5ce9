"""`xpud up` (what `make run` starts): a controller, a local agent and the demo model, reachable through the router."""

from __future__ import annotations

import re
import signal
import subprocess

import numpy as np
import tritonclient.grpc as grpcclient

from helpers import IRIS, up_process, wait_for


def test_up_serves_the_demo_through_the_router(tmp_path):
    proc, lines, reader = up_process(tmp_path)
    try:
        banner = wait_for(lambda: re.search(r"inference \(Triton gRPC.*?: 127\.0\.0\.1:(\d+)", "".join(lines)),
                          timeout=60, what="the banner")
        url = f"127.0.0.1:{banner.group(1)}"

        def label() -> int | None:
            try:
                with grpcclient.InferenceServerClient(url) as client:
                    x = grpcclient.InferInput("X", [1, 4], "FP32")
                    x.set_data_from_numpy(np.array([[6.7, 3.0, 5.2, 2.3]], np.float32))
                    return int(client.infer("iris", [x]).as_numpy("label")[0]) + 1
            except Exception:
                return None

        assert wait_for(label, what="iris through the router") - 1 == 2  # virginica
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        reader.join(timeout=5)
    assert code == 0, "".join(lines)[-3000:]
    assert "Traceback" not in "".join(lines)


def _stop(proc: subprocess.Popen[str], lines: list[str], reader) -> str:  # type: ignore[no-untyped-def]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, "".join(lines)[-3000:]
    reader.join(timeout=5)
    return "".join(lines)


def test_up_says_where_its_state_is_and_fresh_starts_empty(tmp_path):
    from helpers import run_xpud

    proc, lines, reader = up_process(tmp_path)
    try:
        admin = wait_for(lambda: re.search(r"admin \(xpud nodes.*?:\s+(127\.0\.0\.1:\d+)", "".join(lines)),
                         timeout=60, what="the banner").group(1)
        out = "".join(lines)
        assert f"state in {tmp_path / 'state'}: empty" in out, out
        # every port the banner names is loopback, as `up` listens
        assert not re.search(r"(0\.0\.0\.0|\[::\])", out), out
        pushed = run_xpud("models", "push", str(IRIS), "--name", "extra", "--controller", admin)
        assert pushed.returncode == 0, pushed.stderr
        assert run_xpud("deploy", "extra", "--model", "extra", "--replicas", "0", "--controller", admin).returncode == 0
    finally:
        _stop(proc, lines, reader)
    proc, lines, reader = up_process(tmp_path)  # the same state: both deployments come back, and it says so
    try:
        found = wait_for(lambda: re.search(r"xpud up: state in .*", "".join(lines)), timeout=60, what="the state line")
        assert "2 deployment(s) recovered (extra, iris); `xpud up --fresh` starts empty" in found.group(0)
        wait_for(lambda: "xpud is up" in "".join(lines), timeout=60, what="up")
    finally:
        _stop(proc, lines, reader)
    proc, lines, reader = up_process(tmp_path, "--fresh")
    try:
        wait_for(lambda: "xpud is up" in "".join(lines), timeout=60, what="up")
        out = "".join(lines)
        kept = re.search(r"--fresh: the earlier state is kept at (\S+)", out)
        assert kept and "state.before-" in kept.group(1), out
        assert f"state in {tmp_path / 'state'}: empty" in out, out
        assert (tmp_path / kept.group(1)).exists()
    finally:
        _stop(proc, lines, reader)
