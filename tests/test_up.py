"""`xpud up` (what `make run` starts): a controller, a local agent and the demo model, reachable through the router."""

from __future__ import annotations

import re
import signal
import subprocess

import numpy as np
import tritonclient.grpc as grpcclient

from helpers import drain, wait_for, xpud_command


def test_up_serves_the_demo_through_the_router(tmp_path):
    cmd = xpud_command("up", "--listen", "127.0.0.1:0", "--inference-port", "0", "--grpc-port", "0",
                       "--metrics-port", "0", "--controller-metrics-port", "0", "--state", str(tmp_path / "state"),
                       "--cache-dir", str(tmp_path / "c"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = drain(proc, lines)
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
