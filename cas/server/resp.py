"""RESP, the Redis wire protocol (RESP2 and RESP3): parsing commands, encoding replies.

Only what the Redis door needs: a command is a RESP array of bulk strings (or an inline
line, as redis-cli and telnet send); replies are simple strings, errors, integers, bulk
strings, arrays and (RESP3) maps and nil. Nothing here knows a command or a store.
"""

from __future__ import annotations

#: Largest bulk string accepted (a Redis value is at most 512 MB; torch's are far smaller).
MAX_BULK = 512 << 20
_MAX_ARGS = 1 << 16


class Reply:
    """RESP encoders for one connection (RESP2 until ``HELLO 3``)."""

    def __init__(self) -> None:
        self.proto = 2

    def nil(self) -> bytes:
        return b"_\r\n" if self.proto == 3 else b"$-1\r\n"

    @staticmethod
    def ok() -> bytes:
        return b"+OK\r\n"

    @staticmethod
    def error(text: str) -> bytes:
        return b"-" + text.replace("\r", " ").replace("\n", " ").encode() + b"\r\n"

    @staticmethod
    def integer(n: int) -> bytes:
        return b":%d\r\n" % n

    def bulk(self, data: bytes | None) -> bytes:
        if data is None:
            return self.nil()
        return b"$%d\r\n%s\r\n" % (len(data), data)

    def array(self, items: list[bytes]) -> bytes:
        return b"*%d\r\n" % len(items) + b"".join(items)

    def map(self, pairs: list[tuple[bytes, bytes]]) -> bytes:
        if self.proto == 3:
            return b"%%%d\r\n" % len(pairs) + b"".join(k + v for k, v in pairs)
        return self.array([x for kv in pairs for x in kv])


class ProtocolError(Exception):
    """The client sent something that is not RESP; the connection is closed."""


def parse_command(buf: bytearray | bytes, pos: int) -> tuple[list[bytes], int] | None:
    """One command at ``buf[pos:]`` (a RESP array of bulk strings, or an inline line) and
    the position after it; None if the buffer does not hold all of it yet."""
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        if len(buf) - pos > 64 << 10:
            raise ProtocolError("line too long")
        return None
    if buf[pos] != ord("*"):
        return bytes(buf[pos:eol]).split(), eol + 2  # inline command (redis-cli, telnet)
    n = _length(buf[pos:eol + 2], _MAX_ARGS)
    args: list[bytes] = []
    at = eol + 2
    for _ in range(n):
        eol = buf.find(b"\r\n", at)
        if eol < 0:
            return None
        if buf[at] != ord("$"):
            raise ProtocolError("expected a bulk string")
        length = _length(buf[at:eol + 2], MAX_BULK)
        start, at = eol + 2, eol + 2 + length + 2
        if at > len(buf):
            return None
        args.append(bytes(buf[start:start + length]))
    return args, at


def _length(line: bytearray | bytes, limit: int) -> int:
    try:
        n = int(line[1:-2])
    except ValueError as exc:
        raise ProtocolError("bad length") from exc
    if not 0 <= n <= limit:
        raise ProtocolError(f"length {n} out of range")
    return n

