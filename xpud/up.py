"""`xpud up`: a controller and a local agent in one process, with the bundled demo model deployed."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from importlib import resources
from pathlib import Path

import grpc

from xpud.agent.config import AgentConfig
from xpud.agent.daemon import StartupError as AgentStartupError
from xpud.agent.daemon import run_standalone
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


async def run_up(args: argparse.Namespace, state: Path) -> int:
    stop = asyncio.Event()
    try:
        controller = await start_controller(args.listen, args.inference_port, state)
    except (StartupError, StoreError) as exc:
        sys.stderr.write(f"xpud up: error: {exc}\n")
        return 1
    host = args.listen.rpartition(":")[0]
    config = AgentConfig(controller=f"{host}:{controller.port}", grpc_port=args.grpc_port,
                         metrics_port=args.metrics_port, advertise="127.0.0.1")
    if args.sim:
        config.enable_sim(args.sim)
    agent = asyncio.create_task(run_standalone(config, stop))
    code = 1
    try:
        await deploy_demo(f"{host}:{controller.port}")
        print(
            f"xpud is up.\n"
            f"  inference (Triton gRPC, any deployment by name): {host}:{controller.inference_port}\n"
            f"  this node's own endpoint:                        127.0.0.1:{args.grpc_port}\n"
            f"  admin (xpud nodes/pool/deploy ...):              {host}:{controller.port}\n"
            f"  metrics:                                         http://127.0.0.1:{args.metrics_port}/metrics\n"
            f"  demo deployment '{DEMO}': try `xpud deployments`",
            flush=True,
        )
        code = await agent
    except AgentStartupError as exc:
        sys.stderr.write(f"xpud up: error: {exc}\n")
    finally:
        stop.set()
        if not agent.done():
            await asyncio.gather(agent, return_exceptions=True)
        await controller.stop()
    return code
