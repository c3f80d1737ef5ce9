"""A secured pool over real processes: `xpud certs`-made certificates, a controller, an agent serving OIP over
mTLS, inference through the router with a client certificate or a token, and an agent's repository API closed to
everyone but the controller."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from helpers import ControllerProcess, free_port, linked_agent, run_xpud, wait_for

IRIS = Path(__file__).resolve().parent.parent / "models" / "iris"
SETOSA = np.array([[5.1, 3.5, 1.4, 0.2]], np.float32)


def client(url: str, d: Path, who: str | None, node: str | None = None) -> grpcclient.InferenceServerClient:
    args = [("grpc.ssl_target_name_override", node)] if node else None
    files = {} if who is None else {"private_key": str(d / f"{who}.key"), "certificate_chain": str(d / f"{who}.pem")}
    return grpcclient.InferenceServerClient(url, ssl=True, root_certificates=str(d / "ca.pem"), channel_args=args,
                                            **files)


def infer(c: grpcclient.InferenceServerClient, name: str = "iris", headers: dict | None = None) -> int:
    x = grpcclient.InferInput("X", [1, 4], "FP32")
    x.set_data_from_numpy(SETOSA)
    return int(c.infer(name, [x], headers=headers).as_numpy("label")[0])


def status(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(InferenceServerException) as info:
        call()
    return f"{info.value.status()} {info.value.message()}"


def test_a_secured_pool_end_to_end(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    assert run_xpud("certs", "init", "--dir", str(d)).returncode == 0
    for args in (("--node", "n1", "--hosts", "127.0.0.1"), ("--user", "root", "--role", "admin"),
                 ("--user", "app", "--role", "inference"), ("--user", "eve", "--role", "viewer")):
        made = run_xpud("certs", "issue", "--dir", str(d), *args)
        assert made.returncode == 0, made.stderr
    ca = ["--tls-ca", str(d / "ca.pem")]
    token_port = free_port()
    c = ControllerProcess(str(tmp_path / "state"), None, *ca, "--tls-cert", str(d / "controller.pem"),
                          "--tls-key", str(d / "controller.key"), "--inference-token-port", str(token_port))
    agent = None
    root = ["--controller", c.address, *ca, "--tls-cert", str(d / "user-root.pem"),
            "--tls-key", str(d / "user-root.key")]
    try:
        assert any("inference at" in line and "(mTLS)" in line for line in c.lines)
        agent = linked_agent(c, "n1", str(tmp_path / "n1"), *ca, "--tls-cert", str(d / "node-n1.pem"),
                             "--tls-key", str(d / "node-n1.key"))
        assert any("inference endpoint" in line and "(mTLS, roles checked)" in line for line in agent.lines)
        assert run_xpud("models", "push", str(IRIS), "--name", "iris", *root).returncode == 0
        assert run_xpud("deploy", "iris", "--model", "iris", *root).returncode == 0

        def running() -> bool:
            out = run_xpud("deployments", "--json", *root)
            deployments = json.loads(out.stdout).get("deployments", []) if out.returncode == 0 else []
            return any(x.get("phase") == "Running" for x in deployments)

        wait_for(running, timeout=60, what="iris Running")
        # the router: an inference certificate passes, through to the agent over mTLS with the controller's
        with client(c.inference_url, d, "user-app") as app:
            assert infer(app) == 0
        with client(c.inference_url, d, "user-eve") as eve:  # roles above inference may infer too
            assert infer(eve) == 0
        # the router with a token on its token port
        made = run_xpud("tokens", "create", "--name", "svc", "--role", "inference", *root)
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        with client(f"127.0.0.1:{token_port}", d, None) as by_token:
            assert infer(by_token, headers={"authorization": f"Bearer {token}"}) == 0
            assert "UNAUTHENTICATED" in status(lambda: infer(by_token))
        # the agent's own endpoint: mTLS only, inference for clients, its repository API for the controller alone
        with client(agent.grpc_url, d, "user-app", node="n1") as direct:
            assert infer(direct) == 0
        with client(agent.grpc_url, d, "user-root", node="n1") as admin:
            denied = status(lambda: admin.unload_model("iris"))
            assert "PERMISSION_DENIED" in denied and "the controller's certificate" in denied, denied
            assert admin.is_model_ready("iris")
        with grpcclient.InferenceServerClient(agent.grpc_url) as plaintext:
            assert "UNAVAILABLE" in status(lambda: plaintext.is_server_live())
    finally:
        if agent is not None:
            agent.kill()
        c.kill()



def test_an_agent_with_another_nodes_certificate_is_refused_and_says_why(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    assert run_xpud("certs", "init", "--dir", str(d)).returncode == 0
    assert run_xpud("certs", "issue", "--dir", str(d), "--node", "n1").returncode == 0
    ca = ["--tls-ca", str(d / "ca.pem")]
    c = ControllerProcess(str(tmp_path / "state"), None, *ca, "--tls-cert", str(d / "controller.pem"),
                          "--tls-key", str(d / "controller.key"))
    agent = None
    try:
        agent = linked_agent(c, "n2", str(tmp_path / "n2"), *ca, "--tls-cert", str(d / "node-n1.pem"),
                             "--tls-key", str(d / "node-n1.key"))
        line = wait_for(lambda: next((x for x in agent.lines if "refused this agent" in x), None),
                        what="the agent to log the refusal")
        assert "claimed the node name 'n2'" in line and "--node n1" in line and "retrying every 10 s" in line
    finally:
        if agent is not None:
            agent.kill()
        c.kill()
