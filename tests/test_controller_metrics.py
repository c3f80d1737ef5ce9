"""The controller's /metrics over HTTP from a real controller process: nodes, devices, deployments, the router,
scheduling passes and events (controller/metrics.py)."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from helpers import SETOSA, ControllerProcess, deployed_pool, infer, metric, metric_values, run_xpud, wait_for


@pytest.fixture(scope="module")
def pool(tmp_path_factory):  # type: ignore[no-untyped-def]
    with deployed_pool(tmp_path_factory.mktemp("pool")) as running:
        yield running


def test_nodes_devices_and_deployments(pool):
    c, _agent = pool
    text = c.scrape()
    assert metric(text, "xpud_nodes", state="Ready") == 1
    assert metric(text, "xpud_nodes", state="Lost") == 0  # every state has a series, for the alerts
    assert metric(text, "xpud_node_state", node="n1", state="Ready") == 1
    assert metric(text, "xpud_node_state", node="n1", state="Suspect") == 0
    assert metric(text, "xpud_devices", node="n1", kind="gpu", health="ok") == 2
    assert metric(text, "xpud_devices", node="n1", kind="cpu") == 1
    assert metric(text, "xpud_deployment_replicas_desired", deployment="iris") == 2
    assert metric(text, "xpud_deployment_replicas_ready", deployment="iris") == 2
    assert metric(text, "xpud_scheduler_passes_total") >= 1
    assert metric(text, "xpud_scheduler_pass_duration_seconds_count") == metric(text, "xpud_scheduler_passes_total")
    assert metric(text, "xpud_events_total", kind="NodeJoined") == 1
    assert metric(text, "xpud_events_total", kind="DeploymentCreated") == 1
    assert "process_resident_memory_bytes" in text


def total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when there is none yet)."""
    return sum(v for k, v in metric_values(text, name).items() if set(labels.items()) <= k)


def test_router_requests_are_counted_by_deployment_and_code(pool):
    c, _agent = pool
    ok = total(c.scrape(), "xpud_router_requests_total", model="iris", code="OK")
    assert infer(c.inference_url) == 0
    with grpcclient.InferenceServerClient(c.inference_url) as client:
        x = grpcclient.InferInput("X", [1, 4], "FP32")
        x.set_data_from_numpy(np.array(SETOSA, np.float32))
        with pytest.raises(InferenceServerException):
            client.infer("no-such-deployment", [x])
    text = c.scrape()
    assert metric(text, "xpud_router_requests_total", model="iris", code="OK") == ok + 1
    # by deployment and by the version of the replica that answered
    assert metric(text, "xpud_router_requests_total", deployment="iris", version="1", code="OK") == ok + 1
    # an unknown name is counted without it: clients cannot grow the label set
    assert metric(text, "xpud_router_requests_total", model="", code="NOT_FOUND") >= 1
    assert not any(("model", "no-such-deployment") in k for k in metric_values(text, "xpud_router_requests_total"))
    assert metric(text, "xpud_router_request_duration_seconds_count", model="iris") == ok + 1
    assert metric(text, "xpud_router_request_duration_seconds_bucket", model="iris", le="+Inf") == ok + 1


def test_an_undeployed_deployment_leaves_and_a_lost_node_is_counted(tmp_path):
    with deployed_pool(tmp_path, replicas=1) as (c, agent):
        assert c.admin("undeploy", "iris").returncode == 0
        wait_for(lambda: "xpud_deployment_replicas_desired{" not in c.scrape(), what="iris gone from /metrics")
        agent.kill()
        wait_for(lambda: metric(c.scrape(), "xpud_nodes", state="Lost") == 1, what="n1 Lost in /metrics")
        text = c.scrape()
        assert metric(text, "xpud_node_state", node="n1", state="Lost") == 1
        assert metric(text, "xpud_nodes", state="Ready") == 0


def test_the_bound_port_is_logged_and_a_taken_port_is_refused(tmp_path):
    c = ControllerProcess(str(tmp_path / "state"))  # --metrics-port 0
    try:
        assert c.metrics_port and "xpud_nodes" in c.scrape()
    finally:
        c.kill()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_xpud("controller", "--listen", "127.0.0.1:0", "--inference-port", "0", "--state",
                          str(tmp_path / "other"), "--metrics-port", str(port))
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr and "--metrics-port" in result.stderr


def test_stream_requests_are_counted_each(pool):
    c, _agent = pool
    before = total(c.scrape(), "xpud_router_requests_total", model="iris", code="OK")
    answers: list[object] = []
    with grpcclient.InferenceServerClient(c.inference_url) as client:
        client.start_stream(callback=lambda result, error: answers.append(error))
        for i in range(3):
            x = grpcclient.InferInput("X", [1, 4], "FP32")
            x.set_data_from_numpy(np.array(SETOSA, np.float32))
            client.async_stream_infer("iris", [x], request_id=str(i))
        wait_for(lambda: len(answers) == 3, what="three stream answers")
        client.stop_stream()
    assert answers == [None, None, None]
    assert metric(c.scrape(), "xpud_router_requests_total", model="iris", code="OK") == before + 3


def test_model_label_names_the_model_series_of_a_deleted_deployment_go_and_no_created(pool):
    c, agent = pool
    assert c.admin("deploy", "flowers", "--model", "iris", "--device", "gpu").returncode == 0
    wait_for(lambda: c.deployment("flowers").get("phase") == "Running", timeout=60, what="flowers Running")
    assert infer(c.inference_url, "flowers") == 0
    text = c.scrape()
    assert metric(text, "xpud_router_requests_total", model="iris", deployment="flowers", code="OK") == 1
    assert "_created" not in text  # no creation-time series next to the counters
    served = agent.scrape()  # the agent labels alike: the model it is, the deployment it is served as
    assert metric(served, "xpud_inference_requests_total", model="iris", deployment="flowers", status="success") == 1
    assert "_created" not in served
    assert c.admin("undeploy", "flowers").returncode == 0
    wait_for(lambda: 'deployment="flowers"' not in c.scrape(), timeout=30, what="flowers' series gone")
    wait_for(lambda: 'deployment="flowers"' not in agent.scrape(), timeout=30, what="the agent's flowers series gone")
    assert metric(c.scrape(), "xpud_router_requests_total", deployment="iris", code="OK") >= 1  # others stay
