"""benchmarks/h2grpc.py against a real grpc.aio server on 127.0.0.1: every frame it writes must be one grpc's own
HTTP/2 stack accepts, and it must read everything grpc sends back (flow control, keepalive, trailers)."""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from xpud.proto import link_pb2 as lpb
from xpud.proto import link_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from h2grpc import CallEnd, H2GrpcCall, request_headers
from hpack_codec import Decoder, encode_int, huffman_decode, literal

pytestmark = pytest.mark.timeout(30)
MiB = 1 << 20
# grpc's server starts with a 64 KiB connection window and announces 4 MiB frames and stream windows: a client
# must wait for its WINDOW_UPDATEs, and split messages over 16 KiB (before the SETTINGS) or 4 MiB (after).
SERVER_OPTIONS = [("grpc.max_receive_message_length", 8 * MiB), ("grpc.max_send_message_length", 8 * MiB)]


def blob(i: int, size: int) -> bytes:
    """Message i of `size` bytes, different in every block so that a lost or reordered chunk shows."""
    seed = hashlib.sha256(i.to_bytes(4, "big")).digest()
    return (seed * (size // 32 + 1))[:size]


class Recorder:
    """A bidi handler: records every request (bytes, as grpc decoded them); what it answers depends on the method."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.finished = asyncio.Event()

    async def record(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:
            self.received.append(request)
        self.finished.set()
        yield b"done"

    async def flood(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        """The first request says how many messages of how many bytes to send back."""
        first = await requests.__anext__()
        count, size = int.from_bytes(first[:4], "big"), int.from_bytes(first[4:8], "big")
        for i in range(count):
            yield blob(i, size)
        async for request in requests:
            self.received.append(request)
        self.finished.set()

    async def abort(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        self.received.append(await requests.__anext__())
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "node x%y is not known: say Hello first")
        yield b""  # never reached: makes this a generator


class Client:
    """An H2GrpcCall with what it received collected."""

    def __init__(self, port: int, method: str, **kwargs: Any) -> None:
        self.port = port
        self.messages: list[bytes] = []
        self.ended: asyncio.Future[CallEnd] = asyncio.get_running_loop().create_future()
        self.call = H2GrpcCall(request_headers(f"127.0.0.1:{port}", f"/test.Wire/{method}"), self._message,
                               self.ended.set_result, **kwargs)

    def _message(self, message: bytes) -> None:
        self.messages.append(message)

    async def connect(self) -> H2GrpcCall:
        await asyncio.get_running_loop().create_connection(lambda: self.call, "127.0.0.1", self.port)
        return self.call

    async def until(self, check: Callable[[], bool], seconds: float = 5.0) -> None:
        async def poll() -> None:
            while not check():
                await asyncio.sleep(0.01)

        await asyncio.wait_for(poll(), seconds)


class Relay:
    """A TCP relay in front of the server that parses the HTTP/2 frames both ways and checks each of the client's
    DATA frames against what the server had told it by then: within the connection and stream windows, within the
    server's SETTINGS_MAX_FRAME_SIZE (the server's frames are forwarded only after they are counted)."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.conn_window = self.stream_window = self.initial_window = 65535
        self.max_frame = 16384
        self.data_frames: list[int] = []  # the client's DATA payload lengths
        self.violations: list[str] = []

    async def start(self) -> int:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        preface = await reader.readexactly(24)
        up_writer.write(preface)
        await asyncio.gather(self._pump(reader, up_writer, self._client_frame),
                             self._pump(up_reader, writer, self._server_frame), return_exceptions=True)
        writer.close()
        up_writer.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    seen: Callable[[int, int, int, bytes], None]) -> None:
        try:
            while True:
                head = await reader.readexactly(9)
                payload = await reader.readexactly(int.from_bytes(head[:3], "big"))
                seen(head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFFFFFF, payload)
                writer.write(head + payload)
        finally:
            writer.close()

    def _server_frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == 4 and not flags & 1:  # SETTINGS
            for k in range(0, len(payload), 6):
                key, value = int.from_bytes(payload[k:k + 2], "big"), int.from_bytes(payload[k + 2:k + 6], "big")
                if key == 4:
                    self.stream_window += value - self.initial_window
                    self.initial_window = value
                elif key == 5:
                    self.max_frame = value
        elif kind == 8:  # WINDOW_UPDATE
            increment = int.from_bytes(payload[:4], "big")
            if stream == 0:
                self.conn_window += increment
            else:
                self.stream_window += increment

    def _client_frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind != 0:
            return
        self.data_frames.append(len(payload))
        self.conn_window -= len(payload)
        self.stream_window -= len(payload)
        if len(payload) > self.max_frame:
            self.violations.append(f"DATA frame of {len(payload)} bytes, max frame {self.max_frame}")
        if self.conn_window < 0 or self.stream_window < 0:
            self.violations.append(f"DATA past the window: {self.conn_window} {self.stream_window}")


async def start_server(recorder: Recorder, options: list[tuple[str, Any]]) -> tuple[grpc.aio.Server, int]:
    handlers = {name: grpc.stream_stream_rpc_method_handler(getattr(recorder, name))
                for name in ("record", "flood", "abort")}
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Wire", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, int]]:
    rec = Recorder()
    server, port = await start_server(rec, SERVER_OPTIONS)
    yield rec, port
    await server.stop(None)


async def finish(client: Client) -> CallEnd:
    client.call.close_send()
    return await asyncio.wait_for(client.ended, 5)


# -- what the client sends ----------------------------------------------------------------------------------------
SIZES = [100_000, 0, 1, 100, 16379, 16380, 16384, 65531, 65536, 70_000, 300_000, 2 * MiB, 17, 5 * MiB + 3]


async def test_every_message_sent_is_decoded_by_the_server_in_order(recorder: tuple[Recorder, int]) -> None:
    """Small messages in one frame; larger than a frame (split), than the initial window (waits for
    WINDOW_UPDATE), several MiB; the first queued before the connection exists (sent in 16 KiB frames)."""
    rec, port = recorder
    relay = Relay(port)
    client = Client(await relay.start(), "record")
    sent = [blob(i, size) for i, size in enumerate(SIZES)]
    assert client.call.send(sent[0]) is False  # not connected yet: queued
    call = await client.connect()
    waited = [not call.send(m) for m in sent[1:]]
    assert any(waited), "some message should have waited for the server's window"
    end = await finish(client)
    assert end == CallEnd(0, "") and end.ok, end
    assert [len(m) for m in rec.received] == SIZES
    assert rec.received == sent
    assert client.messages == [b"done"]
    assert call.pending == bytearray()
    assert relay.violations == []
    # the first message before the server's SETTINGS: 16 KiB frames up to the 64 KiB connection window
    assert relay.data_frames[:4] == [16384, 16384, 16384, 16383], relay.data_frames
    assert sum(relay.data_frames) == sum(size + 5 for size in SIZES)


@pytest.mark.parametrize("count", [1, 50, 2000])
async def test_many_small_messages_in_order(recorder: tuple[Recorder, int], count: int) -> None:
    rec, port = recorder
    client = Client(port, "record")
    await client.connect()
    sent = [i.to_bytes(4, "big") * (i % 7) for i in range(count)]
    for m in sent:
        client.call.send(m)
    assert (await finish(client)).ok
    assert rec.received == sent


# -- what the server sends ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("count", "size", "recv_window"), [(40, 200_000, 65535), (3, 3 * MiB, 65535),
                                                            (1000, 10, 65535), (20, 200_000, 1 << 30)])
async def test_client_receives_every_server_message_intact(recorder: tuple[Recorder, int], count: int, size: int,
                                                           recv_window: int) -> None:
    """Megabytes from the server: with a 64 KiB window the server only goes on because the client grants more."""
    rec, port = recorder
    client = Client(port, "flood", recv_window=recv_window)
    call = await client.connect()
    call.send(count.to_bytes(4, "big") + size.to_bytes(4, "big"))
    await client.until(lambda: len(client.messages) >= count, 10)
    assert len(client.messages) == count
    assert dict(call.response_headers)[":status"] == "200"
    assert dict(call.response_headers)["content-type"] == "application/grpc"
    assert all(m == blob(i, size) for i, m in enumerate(client.messages))
    if recv_window == 65535:
        assert call.window_updates_sent >= count * size // 65535 // 2
    call.send(b"bye")
    end = await finish(client)
    assert end.ok, end
    assert rec.received == [b"bye"]


# -- keepalive ----------------------------------------------------------------------------------------------------
async def test_client_keepalive_pings_are_answered(recorder: tuple[Recorder, int]) -> None:
    _, port = recorder
    client = Client(port, "record")
    call = await client.connect()
    call.ping()
    await client.until(lambda: call.pings_acked == 1)
    assert call.ping_rtt is not None and 0 <= call.ping_rtt < 1
    assert (await finish(client)).ok


@pytest.mark.parametrize("keepalive", ["client", "server"])
async def test_keepalive_both_ways(keepalive: str) -> None:
    """The client's keepalive timer pings on its own (a server allowing frequent pings acks each); a server with
    keepalive on pings an idle client, which answers (else the server would close the connection)."""
    rec = Recorder()
    options = [*SERVER_OPTIONS, ("grpc.http2.min_ping_interval_without_data_ms", 10),
               ("grpc.http2.max_ping_strikes", 0)]
    if keepalive == "server":
        options += [("grpc.keepalive_time_ms", 50), ("grpc.keepalive_timeout_ms", 500),
                    ("grpc.http2.max_pings_without_data", 0)]
    server, port = await start_server(rec, options)
    try:
        client = Client(port, "record", keepalive_s=0.05 if keepalive == "client" else 0.0, keepalive_timeout_s=1.0)
        call = await client.connect()
        if keepalive == "client":
            await client.until(lambda: call.pings_acked >= 3)
        else:
            await client.until(lambda: call.pings_answered >= 3)
            await asyncio.sleep(0.6)  # past the server's keepalive timeout: it is still up
        call.send(b"still here")
        end = await finish(client)
        assert end.ok, end
        assert rec.received == [b"still here"]
    finally:
        await server.stop(None)


async def test_keepalive_ends_the_call_when_the_peer_is_silent() -> None:
    """A peer that accepts the connection and never answers: the call ends after the keepalive timeout."""
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 20)
        await asyncio.sleep(5)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    client = Client(int(server.sockets[0].getsockname()[1]), "record", keepalive_s=0.05, keepalive_timeout_s=0.2)
    call = await client.connect()
    end = await asyncio.wait_for(client.ended, 5)
    assert end == CallEnd(None, "keepalive PING not answered in 0.2 s")
    assert call.pings_sent >= 1 and call.pings_acked == 0
    server.close()


async def test_too_many_pings_get_a_goaway_that_ends_the_call() -> None:
    """grpc's default policy: pings more often than allowed earn GOAWAY ENHANCE_YOUR_CALM (error 11)."""
    rec = Recorder()
    server, port = await start_server(rec, SERVER_OPTIONS)
    try:
        client = Client(port, "record", keepalive_s=0.02)
        await client.connect()
        end = await asyncio.wait_for(client.ended, 10)
        assert end.status is None and "GOAWAY (HTTP/2 error 11)" in end.message, end
    finally:
        await server.stop(None)


# -- how calls end ------------------------------------------------------------------------------------------------
async def test_an_aborting_servicer_surfaces_its_status(recorder: tuple[Recorder, int]) -> None:
    rec, port = recorder
    client = Client(port, "abort")
    await client.connect()
    client.call.send(b"hello")
    end = await asyncio.wait_for(client.ended, 5)
    assert end == CallEnd(grpc.StatusCode.FAILED_PRECONDITION.value[0], "node x%y is not known: say Hello first")
    assert not end.ok and "grpc-status 9" in str(end)
    assert rec.received == [b"hello"]
    assert dict(client.call.trailers)["grpc-status"] == "9"


@pytest.mark.parametrize(("method", "message", "status"), [
    ("record", 9 * MiB, grpc.StatusCode.RESOURCE_EXHAUSTED),  # over the server's max_receive_message_length
    ("missing", 1, grpc.StatusCode.UNIMPLEMENTED),  # no such method: a trailers-only response
])
async def test_the_server_refusing_a_call_surfaces_its_status(recorder: tuple[Recorder, int], method: str,
                                                              message: int, status: grpc.StatusCode) -> None:
    _, port = recorder
    client = Client(port, method)
    await client.connect()
    client.call.send(b"x" * message)
    end = await asyncio.wait_for(client.ended, 10)
    assert end.status == status.value[0], end


@pytest.mark.parametrize("grace", [0.2, None])
async def test_a_stopped_server_ends_the_call(grace: float | None) -> None:
    """The calls are cancelled (UNAVAILABLE trailers) after the grace period; with none, the connection may go
    away first (GOAWAY)."""
    rec = Recorder()
    server, port = await start_server(rec, SERVER_OPTIONS)
    client = Client(port, "record")
    call = await client.connect()
    call.send(b"one")
    await client.until(lambda: bool(rec.received))
    await server.stop(grace)
    end = await asyncio.wait_for(client.ended, 5)
    unavailable = end.status == grpc.StatusCode.UNAVAILABLE.value[0]
    assert unavailable or (grace is None and end.status is None and "GOAWAY" in end.message), end
    assert rec.received == [b"one"]
    assert call.send(b"late") is False  # an ended call takes nothing more


async def test_closed_port_ends_with_connection_error() -> None:
    server, port = await start_server(Recorder(), SERVER_OPTIONS)
    await server.stop(None)
    client = Client(port, "record")
    with pytest.raises(OSError):
        await client.connect()


# -- the real link --------------------------------------------------------------------------------------------------
class Link(link_pb2_grpc.AgentLinkServicer):
    def __init__(self) -> None:
        self.received: list[lpb.AgentMessage] = []

    async def Connect(self, request_iterator: Any, context: Any) -> Any:
        async for message in request_iterator:
            self.received.append(message)
            if message.WhichOneof("kind") == "hello":
                yield lpb.ControllerMessage(welcome=lpb.Welcome(telemetry_interval_s=1.0, controller_version="t"))


async def test_agent_link_connect_round_trip() -> None:
    """xpud.v1.AgentLink/Connect with the real messages: Hello answered by Welcome, telemetry decoded."""
    link = Link()
    server = grpc.aio.server(options=SERVER_OPTIONS)
    link_pb2_grpc.add_AgentLinkServicer_to_server(link, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        client = Client(port, "record")
        client.call.headers = request_headers(f"127.0.0.1:{port}", "/xpud.v1.AgentLink/Connect")
        call = await client.connect()
        sent = [lpb.AgentMessage(hello=lpb.Hello(node="n1", labels={"rack": "r1"})),
                *(lpb.AgentMessage(telemetry=lpb.Telemetry(seq=s)) for s in range(1, 6))]
        for m in sent:
            call.send(m.SerializeToString())
        await client.until(lambda: bool(client.messages))
        welcome = lpb.ControllerMessage.FromString(client.messages[0])
        assert welcome.welcome.controller_version == "t"
        assert (await finish(client)).ok
        assert link.received == sent
    finally:
        await server.stop(None)


# -- HPACK ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("block", "fields"), [
    # RFC 7541 C.3.1 / C.4.1: a request, plain and Huffman-coded
    ("828684410f7777772e6578616d706c652e636f6d", [(":method", "GET"), (":scheme", "http"), (":path", "/"),
                                                  (":authority", "www.example.com")]),
    ("828684418cf1e3c2e5f23a6ba0ab90f4ff", [(":method", "GET"), (":scheme", "http"), (":path", "/"),
                                            (":authority", "www.example.com")]),
    # a table size update, then an indexed field
    ("2088", [(":status", "200")]),
    # what request_headers writes: literals without indexing
    (literal(4, "/a.B/C").hex() + literal("te", "trailers").hex(), [(":path", "/a.B/C"), ("te", "trailers")]),
])
def test_hpack_decoder(block: str, fields: list[tuple[str, str]]) -> None:
    assert Decoder().decode(bytes.fromhex(block)) == fields


def test_hpack_dynamic_table_and_integers() -> None:
    decoder = Decoder()
    assert decoder.decode(bytes.fromhex("400b677270632d7374617475730130")) == [("grpc-status", "0")]
    assert decoder.decode(bytes.fromhex("be")) == [("grpc-status", "0")]  # index 62: the newest dynamic entry
    assert [encode_int(v, 5) for v in (10, 31, 1337)] == [b"\x0a", b"\x1f\x00", b"\x1f\x9a\x0a"]  # RFC 7541 C.1
    assert huffman_decode(bytes.fromhex("a8eb10649cbf")) == b"no-cache"
