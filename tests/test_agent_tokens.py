"""The pool's tokens on an agent's own OIP endpoint: the controller tells its agents of the live tokens over the
secured link (hashes only); an agent's --inference-token-port takes them, drops a revoked one, and keeps them
across a restart without the controller."""

from __future__ import annotations

from pathlib import Path

from test_secured_pool import IRIS, client, infer, status

from helpers import ControllerProcess, linked_agent, run_xpud, wait_for


def test_agent_takes_the_pools_tokens_and_keeps_them_across_a_restart(tmp_path: Path) -> None:
    d = tmp_path / "pki"
    assert run_xpud("certs", "init", "--dir", str(d)).returncode == 0
    for args in (("--node", "n1", "--hosts", "127.0.0.1"), ("--user", "root", "--role", "admin")):
        assert run_xpud("certs", "issue", "--dir", str(d), *args).returncode == 0
    ca = ["--tls-ca", str(d / "ca.pem")]
    node_tls = [*ca, "--tls-cert", str(d / "node-n1.pem"), "--tls-key", str(d / "node-n1.key")]
    c = ControllerProcess(str(tmp_path / "state"), None, *ca, "--tls-cert", str(d / "controller.pem"),
                          "--tls-key", str(d / "controller.key"))
    root = ["--controller", c.address, *ca, "--tls-cert", str(d / "user-root.pem"),
            "--tls-key", str(d / "user-root.key")]
    agent = None
    try:
        agent = linked_agent(c, "n1", str(tmp_path / "n1"), *node_tls, "--inference-token-port", "0")
        line = next(x for x in agent.lines if "tokens at" in x)
        token_url = "127.0.0.1:" + line.split("tokens at 127.0.0.1:")[1].split(" ")[0]
        assert run_xpud("models", "push", str(IRIS), "--name", "iris", *root).returncode == 0
        assert run_xpud("deploy", "iris", "--model", "iris", *root).returncode == 0
        made = run_xpud("tokens", "create", "--name", "app", "--role", "inference", *root)
        assert made.returncode == 0, made.stderr
        bearer = {"authorization": f"Bearer {made.stdout.strip()}"}

        def answers() -> bool:
            with client(token_url, d, None, node="n1") as by_token:
                try:
                    return infer(by_token, headers=bearer) == 0
                except Exception:  # not loaded yet, or the token not heard yet
                    return False

        wait_for(answers, timeout=60, what="inference on the agent's token port with the pool's token")
        with client(token_url, d, None, node="n1") as anonymous:
            assert "UNAUTHENTICATED" in status(lambda: infer(anonymous))
        # a restart with the controller gone: the last desired state and the tokens come back from the cache
        c.kill()
        agent.kill()
        agent = linked_agent(c, "n1", str(tmp_path / "n1"), *node_tls, "--inference-token-port", "0")
        line = next(x for x in agent.lines if "tokens at" in x)
        token_url = "127.0.0.1:" + line.split("tokens at 127.0.0.1:")[1].split(" ")[0]
        wait_for(answers, timeout=60, what="the saved token after a restart without the controller")
        # the controller back; a revoked token is refused on the agent too
        c = ControllerProcess(str(tmp_path / "state"), c.port, *ca, "--tls-cert", str(d / "controller.pem"),
                              "--tls-key", str(d / "controller.key"))
        assert run_xpud("tokens", "revoke", "app", *root).returncode == 0
        wait_for(lambda: not answers(), timeout=30, what="the revoked token refused by the agent")
        with client(token_url, d, None, node="n1") as revoked:
            assert "UNAUTHENTICATED" in status(lambda: infer(revoked, headers=bearer))
    finally:
        if agent is not None:
            agent.kill()
        c.kill()
