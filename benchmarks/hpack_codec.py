"""HPACK (RFC 7541) as much as a gRPC client needs: literal header encoding, and a full decoder.

The encoder writes every field as a literal without indexing (no dynamic table to keep on the peer's side); the
decoder handles everything a server may send (static and dynamic table, table size updates, Huffman strings) so
that response headers and trailers (grpc-status, grpc-message) are read exactly.
"""

from __future__ import annotations

STATIC_TABLE: tuple[tuple[str, str], ...] = (  # RFC 7541 Appendix A, index 1 first
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"), (":path", "/index.html"),
    (":scheme", "http"), (":scheme", "https"), (":status", "200"), (":status", "204"), (":status", "206"),
    (":status", "304"), (":status", "400"), (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""), ("accept", ""),
    ("access-control-allow-origin", ""), ("age", ""), ("allow", ""), ("authorization", ""), ("cache-control", ""),
    ("content-disposition", ""), ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""), ("date", ""),
    ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""), ("if-match", ""),
    ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""), ("if-unmodified-since", ""),
    ("last-modified", ""), ("link", ""), ("location", ""), ("max-forwards", ""), ("proxy-authenticate", ""),
    ("proxy-authorization", ""), ("range", ""), ("referer", ""), ("refresh", ""), ("retry-after", ""),
    ("server", ""), ("set-cookie", ""), ("strict-transport-security", ""), ("transfer-encoding", ""),
    ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
)
# The Huffman code of RFC 7541 Appendix B is canonical: the code length of each symbol (0-255, then EOS 256)
# defines it. One letter per symbol, "a" = 5 bits ... "z" = 30 bits.
_HUFFMAN_LENGTHS = (
    "isxxxxxxxtzxxzxxxxxxxxzxxxxxxxxxbffhibdgffdgdbbbaaabbbbbbbcdkbhfibccccccccccccccccccccccdcdioijbkabababbbacc"
    "bbbabcbaabccccckgjixprpprrrsrssssststtrstssssqrsrsstrqprrssqsrrtqrssqqrqsrssprrrsrrsvvporsruvvvwwvtuoqvwwvwtqq"
    "vvxwwwptpqrqqsrruuttvsvwvvwwwwwxwwwwwvz"
)
DEFAULT_TABLE_SIZE = 4096  # SETTINGS_HEADER_TABLE_SIZE's default, which the client never changes


class HpackError(ValueError):
    """A header block that does not decode (a COMPRESSION_ERROR in HTTP/2 terms)."""


def _huffman_codes() -> dict[tuple[int, int], int]:
    """(bit length, code) -> symbol, built canonically from the code lengths."""
    lengths = [ord(c) - ord("a") + 5 for c in _HUFFMAN_LENGTHS]
    order = sorted(range(len(lengths)), key=lambda s: (lengths[s], s))
    codes: dict[tuple[int, int], int] = {}
    code, previous = -1, lengths[order[0]]
    for symbol in order:
        code = (code + 1) << (lengths[symbol] - previous)
        previous = lengths[symbol]
        codes[(previous, code)] = symbol
    return codes


_HUFFMAN = _huffman_codes()
EOS = 256


def encode_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 5.1: an integer with an N-bit prefix, the first byte's high bits taken from ``first``."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes((first | value,))
    out, value = [first | top], value - top
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def literal(name: int | str, value: str) -> bytes:
    """A header field literal without indexing (RFC 7541 6.2.2): a static-table name index or a new name."""
    if isinstance(name, int):
        head = encode_int(name, 4)
    else:
        head = b"\x00" + encode_int(len(name), 7) + name.encode()
    return head + encode_int(len(value), 7) + value.encode()


def huffman_decode(data: bytes) -> bytes:
    """RFC 7541 5.2: the padding must be fewer than 8 bits, all ones, and EOS never appears."""
    out = bytearray()
    code = bits = 0
    for byte in data:
        for shift in range(7, -1, -1):
            code, bits = code << 1 | (byte >> shift) & 1, bits + 1
            symbol = _HUFFMAN.get((bits, code))
            if symbol is not None:
                if symbol == EOS:
                    raise HpackError("EOS in a Huffman string")
                out.append(symbol)
                code = bits = 0
    if bits >= 8 or code != (1 << bits) - 1:
        raise HpackError("bad Huffman padding")
    return bytes(out)


class Decoder:
    """One connection's header block decoder (its dynamic table lives as long as the connection)."""

    def __init__(self, max_size: int = DEFAULT_TABLE_SIZE) -> None:
        self.limit = max_size  # what we allow the peer (our SETTINGS_HEADER_TABLE_SIZE)
        self.max_size = max_size  # the peer's current choice, at most the limit
        self.size = 0
        self.dynamic: list[tuple[str, str]] = []  # newest first

    def decode(self, block: bytes) -> list[tuple[str, str]]:
        """The header fields of one complete header block, in order."""
        fields: list[tuple[str, str]] = []
        at = 0
        while at < len(block):
            byte = block[at]
            if byte & 0x80:  # indexed field
                index, at = self._int(block, at, 7)
                fields.append(self._entry(index))
            elif byte & 0x40:  # literal with incremental indexing
                field, at = self._literal(block, at, 6)
                fields.append(field)
                self._add(field)
            elif byte & 0x20:  # dynamic table size update
                size, at = self._int(block, at, 5)
                if size > self.limit:
                    raise HpackError(f"table size {size} over {self.limit}")
                self.max_size = size
                self._evict()
            else:  # literal without indexing (0000) or never indexed (0001)
                field, at = self._literal(block, at, 4)
                fields.append(field)
        return fields

    def _entry(self, index: int) -> tuple[str, str]:
        if 1 <= index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        if 0 <= index - len(STATIC_TABLE) - 1 < len(self.dynamic):
            return self.dynamic[index - len(STATIC_TABLE) - 1]
        raise HpackError(f"no table entry {index}")

    def _literal(self, block: bytes, at: int, prefix_bits: int) -> tuple[tuple[str, str], int]:
        index, at = self._int(block, at, prefix_bits)
        if index:
            name = self._entry(index)[0]
        else:
            name, at = self._string(block, at)
        value, at = self._string(block, at)
        return (name, value), at

    def _add(self, field: tuple[str, str]) -> None:
        self.dynamic.insert(0, field)
        self.size += _entry_size(field)
        self._evict()

    def _evict(self) -> None:
        while self.size > self.max_size:
            self.size -= _entry_size(self.dynamic.pop())

    @staticmethod
    def _int(block: bytes, at: int, prefix_bits: int) -> tuple[int, int]:
        top = (1 << prefix_bits) - 1
        value, at = block[at] & top, at + 1
        if value < top:
            return value, at
        shift = 0
        while True:
            if at >= len(block):
                raise HpackError("truncated integer")
            byte, at = block[at], at + 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, at

    @classmethod
    def _string(cls, block: bytes, at: int) -> tuple[str, int]:
        if at >= len(block):
            raise HpackError("truncated string")
        huffman = block[at] & 0x80
        size, at = cls._int(block, at, 7)
        if at + size > len(block):
            raise HpackError("truncated string")
        raw = block[at:at + size]
        return (huffman_decode(raw) if huffman else raw).decode("latin-1"), at + size


def _entry_size(field: tuple[str, str]) -> int:
    return 32 + len(field[0]) + len(field[1])  # RFC 7541 4.1 (latin-1: one character, one byte)
