"""RESP, the Redis wire protocol (RESP2 and RESP3): parsing commands, encoding replies.

Only what the Redis door needs: a command is a RESP array of bulk strings (or an inline
line, as redis-cli and telnet send); replies are simple strings, errors, integers, bulk
strings, arrays and (RESP3) maps and nil. Nothing here knows a command or a store.
"""

from __future__ import annotations

#: Largest bulk string the parser accepts at all (a Redis value is at most 512 MB); the
#: connection narrows it by scope (cas.server.redis_session).
MAX_BULK = 512 << 20
#: Longest line: an inline command, or an array or bulk string header.
MAX_LINE = 64 << 10
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
        return bulk_string(data)

    def array(self, items: list[bytes]) -> bytes:
        return b"*%d\r\n" % len(items) + b"".join(items)

    def map(self, pairs: list[tuple[bytes, bytes]]) -> bytes:
        if self.proto == 3:
            return b"%%%d\r\n" % len(pairs) + b"".join(k + v for k, v in pairs)
        return self.array([x for kv in pairs for x in kv])


def bulk_string(data: bytes) -> bytes:
    """``data`` as a RESP bulk string (the same bytes in RESP2 and RESP3)."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


_GET = b"*2\r\n$3\r\nGET\r\n"
_SET = b"*3\r\n$3\r\nSET\r\n"


def get_or_set(data: bytes, max_arg: int) -> list[bytes] | None:
    """``[b"GET", key]`` or ``[b"SET", key, value]`` when ``data`` is exactly one such
    command, no string of it over ``max_arg`` bytes; None for anything else.

    The door's common case at the cost of a few slices: redis-py (torch's and Triton's
    client) sends each command in one packet, its name in upper case. Whatever does not
    match exactly (another command, two commands, part of one, bad framing) is left to
    the Parser, which reads it or says what is wrong; so this adds no accepted input.
    """
    head = data[:13]
    left = 1 if head == _GET else 2 if head == _SET else 0
    if not left:
        return None
    args, p = [head[8:11]], 13
    while left:
        eol = data.find(b"\r\n", p + 1, p + 14)  # "$", at most 12 digits
        digits = data[p + 1:eol]
        if eol < 0 or data[p:p + 1] != b"$" or not digits.isdigit():
            return None
        n = int(digits)
        start, p = eol + 2, eol + 4 + n
        if n > max_arg or data[p - 2:p] != b"\r\n":
            return None
        args.append(data[start:p - 2])
        left -= 1
    return args if p == len(data) else None


class ProtocolError(Exception):
    """The client sent something that is not RESP, or more than it may; the connection is
    answered this error and closed."""


class Parser:
    """Commands out of a byte stream (RESP arrays of bulk strings, or inline lines), kept
    in step across packets.

    The parser keeps its place: the array elements still to read, the length of the bulk
    string being read, and where the search for the next CRLF resumes. So a packet costs
    work in proportion to its own size, however a command is split: a command trickled a
    byte at a time is examined once, not re-parsed from its start on every packet (which
    cost an event loop shared with the HTTP door seconds per connection). ``examined``
    counts the bytes looked at, for the tests that hold it to that.

    Limits are checked on what a command *declares*, before its bytes arrive: a bulk
    string longer than ``max_arg``, or a command longer than ``max_command`` in all
    (headers and declared strings), is a ProtocolError at its header. The connection sets
    both from who authenticated (cas.server.redis_session).
    """

    def __init__(self, max_arg: int = MAX_BULK, max_command: int = MAX_BULK + MAX_LINE) -> None:
        self.max_arg = max_arg
        self.max_command = max_command
        #: Says which limit applies, in errors ("before AUTH", ...).
        self.why = "for a Redis value"
        self.examined = 0
        #: Bytes consumed by commands so far (headers and strings).
        self.consumed = 0
        self._buf = bytearray()
        self._pos = 0  # first byte not consumed
        self._scan = 0  # where the search for the next CRLF resumes
        self._left = -1  # array elements still to read; -1: between commands
        self._bulk = -1  # length of the bulk string being read; -1: its header is next
        self._args: list[bytes] = []
        self._start = 0  # the current command's bytes consumed so far are _start + _pos
        self._tried_at = -1  # where the one-pass parse last failed: a command's start

    @property
    def size(self) -> int:
        """Bytes the unfinished command holds or has declared (0 between commands)."""
        if self._left < 0:
            return 0
        return self._start + self._pos + max(self._bulk, 0)

    @property
    def idle(self) -> bool:
        """Between commands, with nothing buffered."""
        return self._left < 0 and self._pos == len(self._buf)

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as part of a command."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next(self) -> list[bytes] | None:
        """The next whole command (``[]`` for an empty one), or None until more bytes
        arrive; ProtocolError for anything that is not RESP or passes a limit."""
        if self._left < 0 and self._tried_at != self._pos < len(self._buf):
            whole = self._whole()
            if whole is not None:
                return whole
            self._tried_at = self._pos  # once per command: a trickled one costs no more passes
        while True:
            if self._left < 0:
                line = self._line()
                if line is None:
                    return self._wait()
                if not line.startswith(b"*"):
                    return line.split()  # an inline command (redis-cli, telnet)
                self._left, self._args = _length(line, _MAX_ARGS), []
                self._start = len(line) + 2 - self._pos
                if self._left == 0:
                    self._left = -1
                    return []
                continue
            if self._bulk < 0:
                line = self._line()
                if line is None:
                    return self._wait()
                if not line.startswith(b"$"):
                    raise ProtocolError("expected a bulk string")
                self._bulk = self._declare(_length(line, 10**12))  # max_arg <= MAX_BULK
            if len(self._buf) - self._pos < self._bulk + 2:
                return self._wait()
            args = self._take()
            if args is not None:
                return args

    def _declare(self, n: int) -> int:
        if n > self.max_arg:
            raise ProtocolError(f"a string of {n} bytes: more than {self.max_arg} bytes {self.why}")
        if self._start + self._pos + n > self.max_command:
            raise ProtocolError(f"a command of more than {self.max_command} bytes {self.why}")
        return n

    def _take(self) -> list[bytes] | None:
        """Consume the bulk string in full; the command's arguments once it is complete."""
        start, end = self._pos, self._pos + self._bulk
        if self._buf[end:end + 2] != b"\r\n":
            raise ProtocolError("a bulk string must end with CRLF")
        self._args.append(_copy(self._buf, start, end))
        self.examined += self._bulk + 2
        self.consumed += self._bulk + 2
        self._pos = self._scan = end + 2
        self._bulk = -1
        self._left -= 1
        if self._left:
            return None
        args, self._args, self._left = self._args, [], -1
        return args

    def _whole(self) -> list[bytes] | None:
        """The next command in one pass when the buffer holds all of it (one packet, one
        command: the common case), with every check of the step-by-step path; None, with
        nothing consumed, when it is not all there or is anything unusual (the step-by-step
        path then parses it, or says what is wrong)."""
        buf, pos = self._buf, self._pos
        if buf[pos:pos + 1] != b"*":
            return None
        eol = buf.find(b"\r\n", pos, pos + MAX_LINE)
        digits = buf[pos + 1:eol]
        if eol < 0 or not 0 < len(digits) <= 12 or not digits.isdigit():
            return None
        left = int(digits)
        if not 0 < left <= _MAX_ARGS:
            return None
        p, args = eol + 2, []
        while left:
            eol = buf.find(b"\r\n", p, p + 14)
            digits = buf[p + 1:eol]
            if eol < 0 or buf[p:p + 1] != b"$" or not 0 < len(digits) <= 12 or not digits.isdigit():
                return None
            n = int(digits)
            start, p = eol + 2, eol + 4 + n
            if n > self.max_arg or p - 2 - pos > self.max_command or buf[p - 2:p] != b"\r\n":
                return None
            args.append(_copy(buf, start, p - 2))
            left -= 1
        self.examined += p - pos
        self.consumed += p - pos
        self._pos = self._scan = p
        return args

    def _line(self) -> bytes | None:
        """The next CRLF-terminated line, searched from where the last search stopped."""
        eol = self._buf.find(b"\r\n", self._scan)
        if eol < 0:
            end = len(self._buf)
            self.examined += end - self._scan
            self._scan = max(self._pos, end - 1)  # a CR may be the last byte so far
            if end - self._pos > MAX_LINE:
                raise ProtocolError("line too long")
            return None
        self.examined += eol + 2 - self._scan
        if eol - self._pos > MAX_LINE:
            raise ProtocolError("line too long")
        line = bytes(self._buf[self._pos:eol])
        self.consumed += eol + 2 - self._pos
        self._pos = self._scan = eol + 2
        return line

    def _wait(self) -> list[bytes] | None:
        """Drop consumed bytes when they are at least half the buffer (amortized O(1) a
        byte: what is moved is never more than what was consumed)."""
        if self._pos and self._pos * 2 >= len(self._buf):
            self._start += self._pos
            if self._pos == len(self._buf):
                self._buf = bytearray()  # gives a large value's buffer back at once
            else:
                del self._buf[:self._pos]
            self._scan -= self._pos
            self._tried_at -= self._pos
            self._pos = 0
        return None


def _copy(buf: bytearray, start: int, end: int) -> bytes:
    """``buf[start:end]`` as bytes, copied once (``bytes(buf[start:end])`` copies twice:
    for a 100 KiB value, two fresh allocations the size of the value)."""
    with memoryview(buf) as view:
        return bytes(view[start:end])


def _length(line: bytes, limit: int) -> int:
    digits = line[1:]
    if not (0 < len(digits) <= 12 and digits.isdigit()):
        raise ProtocolError("bad length")
    n = int(digits)
    if n > limit:
        raise ProtocolError(f"length {n} out of range")
    return n
