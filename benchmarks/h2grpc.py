"""A minimal gRPC client: one bidirectional-streaming call per TCP connection over cleartext HTTP/2.

For load generators that need many calls from one core: an ``asyncio.Protocol`` that writes the frames grpc's own
client writes (connection preface, SETTINGS, one HEADERS with HPACK literals, DATA carrying gRPC's 5-byte length
prefix, PING, WINDOW_UPDATE) and reads what a gRPC server sends back (DATA, HEADERS and trailers with grpc-status,
PING, SETTINGS, WINDOW_UPDATE, RST_STREAM, GOAWAY). Flow control both ways: it never sends past the server's
connection and stream windows or its SETTINGS_MAX_FRAME_SIZE (what does not fit waits for WINDOW_UPDATE), and it
grants the server ``recv_window`` again as it consumes. What it leaves out: TLS, compression, retries, more than
one stream per connection.

Usage::

    call = H2GrpcCall(request_headers("127.0.0.1:50051", "/pkg.Service/Method"), on_message, on_end)
    call.send(first_message_bytes)  # queued until connected
    await loop.create_connection(lambda: call, "127.0.0.1", 50051)
    call.send(more_bytes); call.ping(); call.close_send()  # on_message(bytes) per reply, on_end(CallEnd) once
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from hpack_codec import Decoder, HpackError, literal

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_ENABLE_PUSH, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 2, 4, 5
DEFAULT_WINDOW, DEFAULT_MAX_FRAME = 65535, 16384  # RFC 9113 6.5.2, until the peer's SETTINGS say otherwise
STREAM = 1  # the call's stream: the first one a client opens
_DATA_FRAME = bytes((DATA, 0)) + STREAM.to_bytes(4, "big")  # a DATA frame header after its length
_DATA_MESSAGE = _DATA_FRAME + b"\x00"  # ... then gRPC's flag "not compressed", before the message length


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    """One HTTP/2 frame (RFC 9113 4.1)."""
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def request_headers(authority: str, path: str, user_agent: str = "xpud-scale-wire") -> bytes:
    """The HPACK block of a gRPC request (POST, http, :path, :authority, content-type, te, user-agent)."""
    return (b"\x83\x86"  # :method POST, :scheme http (static table 3 and 6)
            + literal(4, path) + literal(1, authority)  # :path, :authority
            + literal(31, "application/grpc") + literal("te", "trailers") + literal(58, user_agent))


@dataclass(frozen=True)
class CallEnd:
    """How the call ended: the trailers' grpc-status (0 OK) and grpc-message, or status None and what happened."""

    status: int | None
    message: str

    @property
    def ok(self) -> bool:
        return self.status == 0

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        return f"server ended the call: grpc-status {self.status}" + (f" ({self.message})" if self.message else "")


class H2GrpcCall(asyncio.Protocol):
    """One gRPC bidirectional-streaming call on its own HTTP/2 connection (client side, stream 1, no TLS).

    ``on_message(bytes)`` gets each serialized reply, ``on_end(CallEnd)`` is called once when the call ends (trailers,
    RST_STREAM, GOAWAY with an error, a lost connection); the connection is then closed. ``recv_window`` is what
    the server may send ahead, per connection and per stream (at most 2**31 - 1). ``keepalive_s`` sends a PING
    that often and ends the call if one is not answered within ``keepalive_timeout_s`` (0: PINGs only when
    ``ping()`` is called).
    """

    def __init__(self, headers: bytes, on_message: Callable[[bytes], None], on_end: Callable[[CallEnd], None],
                 recv_window: int = DEFAULT_WINDOW, keepalive_s: float = 0.0,
                 keepalive_timeout_s: float = 20.0) -> None:
        self.headers, self.on_message, self.on_end = headers, on_message, on_end
        self.recv_window, self.keepalive_s, self.keepalive_timeout_s = recv_window, keepalive_s, keepalive_timeout_s
        self.transport: asyncio.Transport | None = None
        self.ended = False
        self.send_conn = self.send_stream = DEFAULT_WINDOW  # the server's windows for what we send
        self.initial_window, self.max_frame = DEFAULT_WINDOW, DEFAULT_MAX_FRAME
        self.pending = bytearray()  # gRPC-framed messages waiting for window, oldest first
        self.half_close = False  # close_send() called: END_STREAM goes out after the pending bytes
        self.recv_unacked = 0
        self.inbuf = bytearray()  # bytes of incomplete frames
        self.msgbuf = bytearray()  # DATA payload not yet a whole gRPC message
        self.decoder = Decoder()
        self.header_block = bytearray()  # HEADERS + CONTINUATION until END_HEADERS
        self.header_flags = 0
        self.response_headers: list[tuple[str, str]] = []
        self.trailers: list[tuple[str, str]] = []
        self.pings_sent = self.pings_acked = self.pings_answered = self.window_updates_sent = 0
        self.ping_rtt: float | None = None  # seconds, the last answered PING
        self._ping_at: float | None = None  # when the oldest unanswered PING went out
        self._keepalive: asyncio.TimerHandle | None = None

    # -- sending ------------------------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        settings = (SETTINGS_ENABLE_PUSH.to_bytes(2, "big") + (0).to_bytes(4, "big")
                    + SETTINGS_INITIAL_WINDOW_SIZE.to_bytes(2, "big") + self.recv_window.to_bytes(4, "big"))
        out = PREFACE + frame(SETTINGS, 0, 0, settings)
        if self.recv_window > DEFAULT_WINDOW:  # the connection window grows by WINDOW_UPDATE only
            out += frame(WINDOW_UPDATE, 0, 0, (self.recv_window - DEFAULT_WINDOW).to_bytes(4, "big"))
        transport.write(out + frame(HEADERS, END_HEADERS, STREAM, self.headers))
        self._flush()
        if self.keepalive_s > 0:
            self._keepalive = asyncio.get_running_loop().call_later(self.keepalive_s, self._keepalive_tick)

    def send(self, message: bytes) -> bool:
        """Send one serialized message: True if it went out now; False if it (or its tail) waits for the server's
        window or its connection, or the call has ended (then it is dropped)."""
        size = len(message) + 5
        if (size <= self.send_conn and size <= self.send_stream and size <= self.max_frame and not self.pending
                and self.transport is not None):
            self.send_conn -= size
            self.send_stream -= size
            self.transport.write(size.to_bytes(3, "big") + _DATA_MESSAGE + len(message).to_bytes(4, "big") + message)
            return True
        if not self.ended:
            self.pending += b"\x00" + len(message).to_bytes(4, "big")
            self.pending += message
            self._flush()
        return False

    def close_send(self) -> None:
        """Half-close: END_STREAM after what is queued (the server's request iterator then ends)."""
        self.half_close = True
        self._flush()

    def ping(self) -> None:
        """Send a PING (the reply is counted in ``pings_acked`` and timed in ``ping_rtt``)."""
        if self.transport is None or self.ended:
            return
        self.pings_sent += 1
        if self._ping_at is None:
            self._ping_at = asyncio.get_running_loop().time()
        self.transport.write(frame(PING, 0, 0, self.pings_sent.to_bytes(8, "big")))

    def close(self) -> None:
        """Drop the connection now, without calling ``on_end``."""
        self.ended = True
        self._stop_keepalive()
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _flush(self) -> None:
        """Send what the windows allow of the pending bytes, in frames of at most the server's max frame size."""
        if self.transport is None or self.ended:
            return
        pending = self.pending
        while pending:
            n = min(len(pending), self.send_conn, self.send_stream, self.max_frame)
            if n <= 0:
                return
            self.send_conn -= n
            self.send_stream -= n
            self.transport.write(n.to_bytes(3, "big") + _DATA_FRAME + pending[:n])
            del pending[:n]
        if self.half_close:
            self.half_close = False
            self.transport.write(frame(DATA, END_STREAM, STREAM, b""))

    def _keepalive_tick(self) -> None:
        loop = asyncio.get_running_loop()
        if self._ping_at is not None and loop.time() - self._ping_at > self.keepalive_timeout_s:
            self._end(CallEnd(None, f"keepalive PING not answered in {self.keepalive_timeout_s:g} s"))
            return
        self.ping()
        self._keepalive = loop.call_later(self.keepalive_s, self._keepalive_tick)

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    # -- receiving ----------------------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        buf = self.inbuf
        buf += data
        at = 0
        while len(buf) - at >= 9 and not self.ended:
            size = int.from_bytes(buf[at:at + 3], "big")
            if len(buf) - at < 9 + size:
                break
            kind, flags = buf[at + 3], buf[at + 4]
            stream = int.from_bytes(buf[at + 5:at + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[at + 9:at + 9 + size])
            at += 9 + size
            self._frame(kind, flags, stream, payload)
        del buf[:at]

    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        assert self.transport is not None  # data_received stops at the end of the call
        if kind == DATA:
            self._data(flags, payload)
        elif kind in (HEADERS, CONTINUATION):
            self._headers(kind, flags, payload)
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
        elif kind == PING:
            if flags & ACK:
                self.pings_acked += 1
                if self._ping_at is not None:
                    self.ping_rtt = asyncio.get_running_loop().time() - self._ping_at
                    self._ping_at = None
            else:
                self.pings_answered += 1
                self.transport.write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            increment = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if stream == 0:
                self.send_conn += increment
            else:
                self.send_stream += increment
            self._flush()
        elif kind == RST_STREAM:
            self._end(CallEnd(None, f"server reset the stream (HTTP/2 error {int.from_bytes(payload[:4], 'big')})"))
        elif kind == GOAWAY:
            last_stream, error = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF, int.from_bytes(payload[4:8], "big")
            if error or last_stream < STREAM:  # else a graceful shutdown: the call may still finish
                self._end(CallEnd(None, f"server sent GOAWAY (HTTP/2 error {error})"))

    def _data(self, flags: int, payload: bytes) -> None:
        assert self.transport is not None
        self.recv_unacked += len(payload)  # padding counts against the window too
        if flags & PADDED:
            payload = payload[1:len(payload) - payload[0]]
        self.msgbuf += payload
        buf = self.msgbuf
        while len(buf) >= 5 and not self.ended:
            size = int.from_bytes(buf[1:5], "big")
            if len(buf) < 5 + size:
                break
            if buf[0]:
                self._end(CallEnd(None, "server sent a compressed message (none was negotiated)"))
                return
            message = bytes(buf[5:5 + size])
            del buf[:5 + size]
            self.on_message(message)
        if self.recv_unacked > self.recv_window // 2 and not self.ended:
            grow = self.recv_unacked.to_bytes(4, "big")
            self.transport.write(frame(WINDOW_UPDATE, 0, 0, grow) + frame(WINDOW_UPDATE, 0, STREAM, grow))
            self.window_updates_sent += 1
            self.recv_unacked = 0
        if flags & END_STREAM:
            self._end(CallEnd(None, "server ended the stream without trailers"))

    def _headers(self, kind: int, flags: int, payload: bytes) -> None:
        if kind == HEADERS:
            if flags & PADDED:
                payload = payload[1:len(payload) - payload[0]]
            if flags & PRIORITY:
                payload = payload[5:]
            self.header_flags = flags
        self.header_block += payload
        if not flags & END_HEADERS:
            return
        try:
            fields = self.decoder.decode(bytes(self.header_block))
        except HpackError as exc:
            self._end(CallEnd(None, f"bad header block: {exc}"))
            return
        self.header_block.clear()
        if not self.header_flags & END_STREAM:
            self.response_headers = fields
            return
        self.trailers = fields  # trailers, or a trailers-only response
        values = dict(fields)
        status = values.get("grpc-status")
        message = urllib.parse.unquote(values.get("grpc-message", ""))
        if status is None or not status.isdigit():
            self._end(CallEnd(None, f"trailers without a valid grpc-status: {status!r}"))
        else:
            self._end(CallEnd(int(status), message))

    def _settings(self, payload: bytes) -> None:
        assert self.transport is not None
        for k in range(0, len(payload) - 5, 6):
            key, value = int.from_bytes(payload[k:k + 2], "big"), int.from_bytes(payload[k + 2:k + 6], "big")
            if key == SETTINGS_INITIAL_WINDOW_SIZE:  # applies to open streams as a delta (RFC 9113 6.9.2)
                self.send_stream += value - self.initial_window
                self.initial_window = value
            elif key == SETTINGS_MAX_FRAME_SIZE:
                self.max_frame = value
        self.transport.write(frame(SETTINGS, ACK, 0, b""))
        self._flush()

    def _end(self, end: CallEnd) -> None:
        if self.ended:
            return
        self.close()
        self.on_end(end)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(CallEnd(None, f"connection lost: {exc!r}"))
