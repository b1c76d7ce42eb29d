"""One client connection of the Redis door: framing, authentication, command handlers.

A connection parses what arrives (cas.server.resp) and answers each whole command at
once; its session holds the protocol version and who authenticated, and turns each
command into a call on the door (:class:`cas.server.redis_door.RedisDoor`), which owns
the store, the served ref and the write batches.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from cas.server.auth import Scope
from cas.server.resp import ProtocolError, Reply, parse_command
from cas.torch.wire import parse_backend_key

#: Most bytes a connection may hold buffered before it authenticates (AUTH and HELLO are
#: small): past it the connection is closed, so a stranger cannot make the door buffer
#: 65,536 bulk strings of MAX_BULK bytes each.
PRE_AUTH_BUFFER = 64 << 10

if TYPE_CHECKING:
    from cas.server.redis_door import RedisDoor


class Connection(asyncio.Protocol):
    """One client connection: parses what arrives, answers each whole command at once.

    A protocol rather than a stream reader: one callback per packet instead of a
    coroutine step per line, and pipelined commands are answered in one write.
    """

    def __init__(self, door: RedisDoor) -> None:
        self.door = door
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.session = Session(self.door, transport.get_extra_info("peername"))

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None and self.session is not None
        self.buf += data
        out: list[bytes] = []
        pos = 0
        try:
            while pos < len(self.buf):
                got = parse_command(self.buf, pos)
                if got is None:
                    break
                args, end = got
                out.append(self._run(args, end - pos))
                pos = end
                if self.session.closing:
                    break
            if self.session.scope is None and len(self.buf) - pos > PRE_AUTH_BUFFER:
                raise ProtocolError(f"more than {PRE_AUTH_BUFFER} bytes before AUTH")
        except ProtocolError as exc:
            out.append(Reply.error(f"ERR protocol error: {exc}"))
            self.session.closing = True
        del self.buf[:pos]
        if out:
            self.transport.write(b"".join(out))
        if self.session.closing:
            self.transport.close()

    def _run(self, args: list[bytes], size: int) -> bytes:
        assert self.session is not None
        start = time.perf_counter()
        reply, kind, outcome = self.session.run(args)
        if self.door.observe is not None and args:
            name = args[0].decode("ascii", "replace").upper()
            if name not in _KNOWN:
                name = "OTHER"  # a client cannot grow the metrics' label set
            self.door.observe(name, kind, outcome, size, len(reply), time.perf_counter() - start)
        return reply


_HANDSHAKE = frozenset({"HELLO", "AUTH", "PING", "QUIT", "CLIENT", "SELECT", "COMMAND", "ECHO", "RESET"})
_REFUSED = frozenset(
    {"DEL", "UNLINK", "FLUSHDB", "FLUSHALL", "EXPIRE", "PEXPIRE", "RENAME", "GETDEL", "GETEX", "SWAPDB"}
)


class Session:
    """The state of one connection: protocol version and who authenticated."""

    def __init__(self, door: RedisDoor, peer: Any) -> None:
        self.door = door
        self.reply = Reply()
        self.closing = False
        self.scope: Scope | None
        if door.tokens is None or door.options.anonymous_write:
            self.token, self.scope = "anonymous", Scope.WRITE
        elif door.options.anonymous_read:
            self.token, self.scope = "anonymous", Scope.READ
        else:
            self.token, self.scope = "", None
        self.peer = peer

    def run(self, args: list[bytes]) -> tuple[bytes, str, str]:
        """(reply, key kind, outcome) for one command."""
        if not args:
            return b"", "", "ok"
        name = args[0].decode("ascii", "replace").upper()
        if self.scope is None and name not in _HANDSHAKE:
            return self.reply.error("NOAUTH Authentication required."), "", "error"
        handler = getattr(self, "cmd_" + name.lower(), None)
        if name in _REFUSED:
            return self.reply.error(f"ERR cas: {name} is refused: entries leave a store through `cas gc`"), "", "error"
        if handler is None:
            return self.reply.error(f"ERR unknown command '{name}'"), "", "error"
        try:
            return handler(args[1:])
        except (IndexError, ValueError):
            return self.reply.error(f"ERR wrong number or kind of arguments for '{name}'"), "", "error"

    # handshake --------------------------------------------------------------------------

    def _auth(self, user: bytes | None, password: bytes) -> bytes | None:
        tokens = self.door.tokens
        if tokens is None:
            return None  # no auth on this server: any password is fine, as in Redis
        rec = tokens.check(password.decode("utf-8", "replace"))
        if rec is None:
            return self.reply.error("WRONGPASS invalid username-password pair or user is disabled.")
        self.token, self.scope = rec.name, rec.scope
        return None

    def cmd_auth(self, args: list[bytes]) -> tuple[bytes, str, str]:
        user, password = (args[0], args[1]) if len(args) == 2 else (None, args[0])
        err = self._auth(user, password)
        return (err, "", "error") if err else (self.reply.ok(), "", "ok")

    def cmd_hello(self, args: list[bytes]) -> tuple[bytes, str, str]:
        if args:
            proto = int(args[0])
            if proto not in (2, 3):
                return self.reply.error("NOPROTO unsupported protocol version"), "", "error"
        i = 1
        while i < len(args):
            opt = args[i].upper()
            if opt == b"AUTH":
                err = self._auth(args[i + 1], args[i + 2])
                if err:
                    return err, "", "error"
                i += 3
            else:
                i += 2  # SETNAME name
        if args:
            self.reply.proto = int(args[0])
        r = self.reply
        info = [
            (r.bulk(b"server"), r.bulk(b"cas")),
            (r.bulk(b"version"), r.bulk(b"7.0.0")),
            (r.bulk(b"proto"), r.integer(r.proto)),
            (r.bulk(b"id"), r.integer(1)),
            (r.bulk(b"mode"), r.bulk(b"standalone")),
            (r.bulk(b"role"), r.bulk(b"master")),
            (r.bulk(b"modules"), r.array([])),
        ]
        return r.map(info), "", "ok"

    def cmd_ping(self, args: list[bytes]) -> tuple[bytes, str, str]:
        return (self.reply.bulk(args[0]) if args else b"+PONG\r\n"), "", "ok"

    def cmd_echo(self, args: list[bytes]) -> tuple[bytes, str, str]:
        return self.reply.bulk(args[0]), "", "ok"

    def cmd_quit(self, args: list[bytes]) -> tuple[bytes, str, str]:
        self.closing = True
        return self.reply.ok(), "", "ok"

    def cmd_reset(self, args: list[bytes]) -> tuple[bytes, str, str]:
        self.reply.proto = 2
        return b"+RESET\r\n", "", "ok"

    def cmd_select(self, args: list[bytes]) -> tuple[bytes, str, str]:
        if int(args[0]) != 0:
            return self.reply.error("ERR DB index is out of range"), "", "error"
        return self.reply.ok(), "", "ok"

    def cmd_client(self, args: list[bytes]) -> tuple[bytes, str, str]:
        sub = args[0].upper() if args else b""
        if sub in (b"SETINFO", b"SETNAME"):
            return self.reply.ok(), "", "ok"
        if sub == b"ID":
            return self.reply.integer(1), "", "ok"
        return self.reply.error(f"ERR cas: CLIENT {sub.decode(errors='replace')} is not supported"), "", "error"

    def cmd_command(self, args: list[bytes]) -> tuple[bytes, str, str]:
        return self.reply.array([]), "", "ok"

    # data -------------------------------------------------------------------------------

    def _get(self, key: bytes) -> tuple[bytes | None, str]:
        parsed = parse_backend_key(key.decode("utf-8", "replace"))
        value = self.door.get(key)
        return value, parsed[0] if parsed else ""

    def cmd_get(self, args: list[bytes]) -> tuple[bytes, str, str]:
        value, kind = self._get(args[0])
        return self.reply.bulk(value), kind, "miss" if value is None else "hit"

    def cmd_mget(self, args: list[bytes]) -> tuple[bytes, str, str]:
        got = [self._get(k) for k in args]
        hits = sum(v is not None for v, _ in got)
        kind = got[0][1] if got else ""
        return self.reply.array([self.reply.bulk(v) for v, _ in got]), kind, "hit" if hits else "miss"

    def cmd_exists(self, args: list[bytes]) -> tuple[bytes, str, str]:
        return self.reply.integer(sum(self._get(k)[0] is not None for k in args)), "", "ok"

    def _set(self, pairs: list[tuple[bytes, bytes]]) -> tuple[bytes, str, str]:
        if self.door.options.branch is None:
            # A read-only door: torch puts every miss, and its AOTAutograd save does not
            # catch an error reply, so a quiet drop keeps stock clients compiling.
            return self.reply.ok(), "", "ok"
        if self.scope is not Scope.WRITE:
            return self.reply.error(f"NOPERM cas: token {self.token!r} has read scope only"), "", "error"
        err = self.door.set(pairs, self.token)
        if err:
            return self.reply.error(err), "", "error"
        parsed = parse_backend_key(pairs[-1][0].decode("utf-8", "replace"))
        return self.reply.ok(), parsed[0] if parsed else "", "ok"

    def cmd_set(self, args: list[bytes]) -> tuple[bytes, str, str]:
        # Options (EX, PX, NX, KEEPTTL, ...) are accepted and ignored: entries do not expire.
        return self._set([(args[0], args[1])])

    def cmd_mset(self, args: list[bytes]) -> tuple[bytes, str, str]:
        if not args or len(args) % 2:
            raise ValueError("MSET needs key value pairs")
        return self._set(list(zip(args[::2], args[1::2], strict=True)))


_KNOWN = frozenset(n[4:].upper() for n in dir(Session) if n.startswith("cmd_")) | _REFUSED
