"""Upload speed to the controller's --listen server (`xpud models push`) with its HTTP/2 settings, side by side.

The controller's link server turns BDP probing off (`controller/server.py`): with probing on, each burst of 1 Hz
telemetry was answered with a PING, a third of the server's CPU at 2,000 agents (`benchmarks/scale.py`). BDP
probing is how gRPC grows a connection's receive window for large transfers, so this measures what the fixed
window (`grpc.http2.lookahead_bytes`) costs an upload instead.

Each case runs a grpc.aio server on 127.0.0.1 with one set of options and one client-streaming method that counts
the bytes it gets (the shape of Admin.PushModel: 1 MiB chunks). The client reaches it through an asyncio TCP proxy
that holds every read for --delay ms each way (a round trip of 2 x delay), which is what bounds a flow-control
window: at most one window per round trip. Cases:

- grpc_default: the server options without the two settings (BDP probing on, windows grown by it);
- controller:   controller.server.OPTIONS as shipped;
- no_bdp_64k:   BDP probing off and the default 64 KiB window (what turning probing off alone would do).

Prints JSON: MB/s per case and delay. Loopback only; --mib bounds each upload (default 64 MiB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from xpud.controller.server import OPTIONS

WINDOW_SETTINGS = ("grpc.http2.bdp_probe", "grpc.http2.lookahead_bytes")
CHUNK = 1 << 20


def cases() -> dict[str, list[tuple[str, Any]]]:
    base = [o for o in OPTIONS if o[0] not in WINDOW_SETTINGS]
    return {"grpc_default": base, "controller": list(OPTIONS), "no_bdp_64k": [*base, ("grpc.http2.bdp_probe", 0)]}


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Forward bytes, each read held `delay` seconds (the one-way delay of a long link)."""
    loop = asyncio.get_running_loop()
    held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def forward() -> None:
        while True:
            at, data = await held.get()
            if not data:
                writer.close()
                return
            if (wait := at + delay - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    task = asyncio.create_task(forward())
    try:
        while True:
            data = await reader.read(1 << 16)
            held.put_nowait((loop.time(), data))
            if not data:
                break
        await task
    except (ConnectionError, asyncio.CancelledError):
        task.cancel()


async def upload(options: list[tuple[str, Any]], delay: float, size: int) -> float:
    async def count(chunks: AsyncIterator[bytes], context: Any) -> bytes:
        n = 0
        async for chunk in chunks:
            n += len(chunk)
        return str(n).encode()

    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Upload", {"Push": grpc.stream_unary_rpc_method_handler(count)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    pipes: set[asyncio.Task[Any]] = set()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        both = asyncio.gather(_pipe(reader, up_writer, delay), _pipe(up_reader, writer, delay),
                              return_exceptions=True)
        pipes.add(both)  # type: ignore[arg-type]
        await both

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{proxy.sockets[0].getsockname()[1]}",
                                        options=[("grpc.max_send_message_length", 64 << 20)])
    push = channel.stream_unary("/bench.Upload/Push")
    chunk = b"\x5a" * CHUNK

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(size // CHUNK):
            yield chunk

    try:
        await push(iter([b"warm"]))  # connect first: the upload alone is timed
        started = time.perf_counter()
        got = await push(chunks())
        seconds = time.perf_counter() - started
        assert int(got) == size, got
        return size / seconds / 1e6
    finally:
        await channel.close()
        proxy.close()
        for task in pipes:
            task.cancel()
        await server.stop(0)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for delay in args.delays:
        out[f"{delay:g}"] = {name: round(await upload(options, delay / 1000, args.mib << 20), 1)
                             for name, options in cases().items()}
    return {"benchmark": "link_window", "upload_mib": args.mib, "chunk_bytes": CHUNK,
            "controller_settings": {k: v for k, v in OPTIONS if k in WINDOW_SETTINGS},
            "machine": {"python": platform.python_version(), "grpcio": grpc.__version__},
            "mb_per_s_by_one_way_delay_ms": out}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64, help="bytes per upload, MiB")
    parser.add_argument("--delays", type=float, nargs="+", default=[0.0, 1.0, 10.0],
                        help="one-way delays to add, ms (the round trip is twice this)")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
