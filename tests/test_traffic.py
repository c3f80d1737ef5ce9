"""Versions and canary traffic over real processes: `xpud traffic` splits a deployment's requests across model
versions (weights, sticky keys, pinned versions), and every bad input is refused with nothing changed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from helpers import ControllerProcess, versioned_web, wait_for
from models import onnx_bytes, scale

FACTORS = {"1": 2.0, "2": 3.0}  # each version scales by its own factor: the answer shows which one served
N = 400  # requests for the weighted split
ONES = np.ones((1, 4), np.float32)


def version_of(client: grpcclient.InferenceServerClient, **kwargs: object) -> str:
    x = grpcclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(ONES)
    y = float(client.infer("web", [x], **kwargs).as_numpy("y")[0][0])  # type: ignore[arg-type]
    return next(v for v, f in FACTORS.items() if abs(y - f) < 1e-6)


def deployment(c: ControllerProcess) -> dict:
    return c.deployment("web")


def split_ready(c: ControllerProcess, want: dict[str, int]) -> dict | None:
    """The deployment once each version has its weight and a ready replica that loaded it."""
    d = deployment(c)
    versions = {v["version"]: v for v in d.get("versions", [])}
    ok = set(versions) == set(want) and all(versions[v]["weight"] == w and versions[v].get("ready", 0) >= 1
                                             for v, w in want.items())
    return d if ok and d.get("phase") == "Running" else None


@pytest.fixture
def canary(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A controller, two simulated nodes, model m in versions 1 and 2, deployment web (m:1, 2 replicas, spread)."""
    started: list = []
    try:
        c = versioned_web(tmp_path, started, {v: onnx_bytes(scale(4, f)) for v, f in FACTORS.items()})
        wait_for(lambda: split_ready(c, {"1": 100}), timeout=60, what="web Running on version 1")
        yield c
    finally:
        for proc in reversed(started):
            proc.kill()


def test_weights_sticky_keys_and_pinned_versions(canary: ControllerProcess) -> None:
    c = canary
    result = c.admin("traffic", "web", "1=80", "2=20")
    assert result.returncode == 0, result.stderr
    d = wait_for(lambda: split_ready(c, {"1": 80, "2": 20}), timeout=60, what="both versions ready")
    assert {r["version"] for r in d["replicas"]} == {"1", "2"}
    assert {v["version"]: v["replicas"] for v in d["versions"]} == {"1": 1, "2": 1}
    table = c.admin("deployments").stdout
    assert "1=80%(1/1)" in table and "2=20%(1/1)" in table, table
    with grpcclient.InferenceServerClient(c.inference_url) as client:
        served = Counter(version_of(client) for _ in range(N))
        # binomial(400, 0.2): mean 80, standard deviation 8; 5 deviations either way
        assert set(served) <= {"1", "2"} and 40 <= served["2"] <= 120, served
        # the same key, the same version; many keys reach both versions
        for key in ("alice", "bob", "carol"):
            assert len({version_of(client, parameters={"xpud-key": key}) for _ in range(20)}) == 1
        keyed = {version_of(client, parameters={"xpud-key": f"user-{i}"}) for i in range(60)}
        assert keyed == {"1", "2"}
        # a pinned version wins over the weights and the key
        assert {version_of(client, model_version="2", parameters={"xpud-key": "alice"}) for _ in range(20)} == {"2"}
        assert {version_of(client, model_version="1") for _ in range(20)} == {"1"}
        with pytest.raises(InferenceServerException, match="no version '7'"):
            version_of(client, model_version="7")
    # one version at 100 serves alone again
    assert c.admin("traffic", "web", "2=100").returncode == 0
    wait_for(lambda: split_ready(c, {"2": 100}) if all(r["version"] == "2" for r in deployment(c)["replicas"])
             else None, timeout=60, what="version 2 alone")
    with grpcclient.InferenceServerClient(c.inference_url) as client:
        assert {version_of(client) for _ in range(20)} == {"2"}
    assert c.events("TrafficChanged")


@pytest.mark.parametrize(("args", "fragment"), [
    (("nope", "1=50", "2=50"), "unknown deployment 'nope'"),
    (("web", "1=50", "2=40"), "sum to 100"),
    (("web", "1=50", "9=50"), "no version '9'"),
    (("web", "1=150", "2=-50"), "VERSION=PERCENT"),
    (("web", "1=101"), "percentage"),
    (("web", "1=50", "1=50"), "given twice"),
    (("web", "x=100"), "whole number"),
    (("web", "1:100"), "VERSION=PERCENT"),
])
def test_bad_traffic_is_refused_with_nothing_changed(canary: ControllerProcess, args: tuple[str, ...],
                                                      fragment: str) -> None:
    before = deployment(canary)["spec"]
    result = canary.admin("traffic", *args)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert deployment(canary)["spec"] == before


def test_an_apply_file_carries_the_split(canary: ControllerProcess, tmp_path: Path) -> None:
    c = canary
    doc = tmp_path / "web.toml"
    doc.write_text('[[deployment]]\nname = "web"\nmodel = "m:1"\nreplicas = 2\nstrategy = "spread"\n'
                   'traffic = { "1" = 50, "2" = 50 }\n')
    applied = c.admin("apply", "-f", str(doc))
    assert applied.returncode == 0, applied.stderr
    wait_for(lambda: split_ready(c, {"1": 50, "2": 50}), timeout=60, what="the file's split ready")
    doc.write_text('[[deployment]]\nname = "web"\nmodel = "m:1"\nreplicas = 2\ntraffic = { "1" = 50, "2" = 40 }\n')
    refused = c.admin("apply", "-f", str(doc))
    assert refused.returncode == 2 and "sum to 100" in refused.stderr, refused.stderr
    assert {v["version"]: v["weight"] for v in deployment(c)["versions"]} == {"1": 50, "2": 50}
