"""`xpud up`: a controller and a local agent in one process, with the bundled demo model deployed."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from importlib import resources
from pathlib import Path

import grpc

from xpud.agent.config import AgentConfig
from xpud.agent.daemon import StartupError as AgentStartupError
from xpud.agent.daemon import serve_agent, start_agent
from xpud.controller.server import StartupError, start_controller
from xpud.controller.store import StoreError
from xpud.proto import admin_pb2 as apb
from xpud.proto import admin_pb2_grpc

log = logging.getLogger("xpud.up")
DEMO = "iris"


def demo_model() -> Path:
    return Path(str(resources.files("xpud.demo").joinpath(DEMO, "1", "model.onnx")))


async def deploy_demo(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        models = await admin.ListModels(apb.ListModelsRequest())
        if not any(m.name == DEMO for m in models.models):
            data = demo_model().read_bytes()
            await admin.PushModel(iter([apb.PushModelChunk(name=DEMO, filename="model.onnx", data=data)]))
        deployments = await admin.ListDeployments(apb.ListDeploymentsRequest())
        if not any(d.spec.name == DEMO for d in deployments.deployments):
            await admin.CreateDeployment(apb.Deployment(name=DEMO, model=DEMO, replicas=1, device="any",
                                                        max_batch_size=64))


def set_aside(state: Path) -> Path | None:
    """Move an earlier state directory out of the way (renamed beside it, never deleted); None if there was none."""
    if not state.exists() or not any(state.iterdir()):
        return None
    moved = state.with_name(f"{state.name}.before-{time.strftime('%Y%m%d-%H%M%S')}")
    state.rename(moved)
    return moved


async def run_up(args: argparse.Namespace, state: Path) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    from xpud.proto.credentials import is_loopback

    if not is_loopback(args.listen.rpartition(":")[0]) and not args.insecure:
        sys.stderr.write(f"xpud up: error: refusing to serve plaintext on {args.listen.rpartition(':')[0]}: xpud up "
                         "is for this machine (--listen 127.0.0.1:7070); a pool on a network needs `xpud "
                         "controller` with TLS (`xpud certs init`), or pass --insecure\n")
        return 2
    if getattr(args, "fresh", False):
        if args.store:
            sys.stderr.write("xpud up: error: --fresh starts an empty state directory; with --store the state is "
                             "in that store: empty it there, or leave --store out\n")
            return 2
        if (moved := set_aside(state)) is not None:
            print(f"xpud up: --fresh: the earlier state is kept at {moved}", flush=True)
    try:
        controller = await start_controller(args.listen, args.inference_port, state, store_url=args.store,
                                            metrics_port=args.controller_metrics_port)
    except (StartupError, StoreError) as exc:
        sys.stderr.write(f"xpud up: error: {exc}\n")
        return 1
    recovered = sorted(controller.controller.specs)
    where = args.store or str(state)
    print(f"xpud up: state in {where}: " + (f"{len(recovered)} deployment(s) recovered ({', '.join(recovered)}); "
                                          "`xpud up --fresh` starts empty" if recovered else "empty"), flush=True)
    host = args.listen.rpartition(":")[0]
    admin = f"{host}:{controller.port}"
    config = AgentConfig(controller=admin, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                         advertise="127.0.0.1", cache_dir=args.cache_dir)
    if args.sim:
        config.enable_sim(args.sim)
    try:
        agent = await start_agent(config)
    except AgentStartupError as exc:
        sys.stderr.write(f"xpud up: error: {exc}\n")
        await controller.stop()
        return 1
    serving = asyncio.create_task(serve_agent(agent, config, stop))
    try:
        await deploy_demo(admin)
        print(
            f"xpud is up.\n"
            f"  inference (Triton gRPC, any deployment by name): {host}:{controller.inference_port}\n"
            f"  this node's own endpoint:                        {config.serving_host()}:{agent.grpc_port}\n"
            f"  admin (xpud nodes/pool/deploy ...):              {admin}\n"
            f"  metrics:                                         "
            f"http://{config.metrics_host}:{agent.metrics_port}/metrics\n"
            f"  controller metrics:                              "
            f"http://127.0.0.1:{controller.metrics_port}/metrics\n"
            f"  demo deployment '{DEMO}': try `xpud deployments --controller {admin}` "
            f"(`. .venv/bin/activate` first puts `xpud` on PATH)",
            flush=True,
        )
        return await serving
    finally:
        stop.set()
        await asyncio.gather(serving, return_exceptions=True)
        await controller.stop()
