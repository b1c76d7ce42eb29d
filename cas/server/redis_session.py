"""One client connection of the Redis door: framing, authentication, command handlers.

A connection parses what arrives (cas.server.resp) and answers each whole command at
once; its session holds the protocol version and who authenticated, and turns each
command into a call on the door (:class:`cas.server.redis_door.RedisDoor`), which owns
the store, the served ref and the write batches.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, cast

from cas.server.auth import Scope
from cas.server.peers import peer_of
from cas.server.resp import Parser, ProtocolError, Reply, get_or_set

#: Most bytes one command may hold when its connection may not send values: before AUTH
#: (AUTH and HELLO are small), and with read scope (a key is short). Past it the
#: connection is answered an error and closed, before the bytes arrive.
SMALL_COMMAND = 64 << 10
#: Reply bytes gathered before they are written: pipelined commands are answered in one
#: write, and a client that does not read its replies stops being read (pause_writing)
#: instead of making the door hold them all.
REPLY_CHUNK = 256 << 10
#: After a protocol error, bytes still read (and dropped) while the error reaches the
#: client: closing a socket with unread bytes resets it, and the client would see a reset
#: instead of the error (a client sends the whole command before it reads the reply).
LINGER = 1 << 20

if TYPE_CHECKING:
    from cas.server.redis_door import RedisDoor


class Connection(asyncio.Protocol):
    """One client connection: parses what arrives, answers each whole command at once.

    A protocol rather than a stream reader: one callback per packet instead of a
    coroutine step per line, and pipelined commands are answered in one write.

    What one connection may make the door hold is bounded: the parser refuses a command
    past the connection's limits at its header (64 KiB unless it may send values; then
    ``--redis-max-value``); a connection that may send values reserves what its command
    declares from the door's WriteBudget and, when it does not fit, is not read until a
    commit frees room; replies wait in the parser's buffer while the client is not
    reading them. Reading is paused for either reason (``_paused``) and resumed when both
    are gone. A connection silent for the idle timeout is closed.
    """

    def __init__(self, door: RedisDoor) -> None:
        self.door = door
        self.parser = Parser(SMALL_COMMAND, SMALL_COMMAND)
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.peer = ""
        self._admitted = False
        self._reserved = 0
        self._mark = 0  # parser.consumed after the last command (bytes in, for metrics)
        self._paused: set[str] = set()  # "budget", "replies"
        self._last = 0.0
        #: asyncio's loop clock (BaseEventLoop.time), called without the method's frame.
        self._clock = time.monotonic
        self._timer: asyncio.TimerHandle | None = None
        self._linger = -1  # bytes still dropped after a protocol error; -1: none

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not isinstance: uvloop's transports implement asyncio.Transport without it.
        self.transport = tr = cast(asyncio.Transport, transport)
        self.peer = peer_of(tr.get_extra_info("peername"))
        refused = self.door.peers.admit(self.peer)
        if refused is not None:
            tr.write(Reply.error(f"ERR {refused}"))  # what Redis says past maxclients
            tr.close()
            return
        self._admitted = True
        self.session = Session(self.door, tr.get_extra_info("peername"))
        self._limit()
        self._last = self._clock()
        self._arm(self.door.options.connections.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._admitted = False
        self.door.peers.leave(self.peer)
        self.door.budget.forget(id(self))
        self.door.budget.reserve(self._reserved, 0)
        self._reserved = 0
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self._linger >= 0:
            self._drop(len(data))
            return
        if self.session is None or self.session.closing:
            return
        self._last = self._clock()
        if not self._paused and self.parser.idle and len(data) <= self.parser.max_command:
            args = get_or_set(data, self.parser.max_arg)
            if args is not None:
                # One whole GET or SET in one packet (how redis-py sends them): answered
                # without the generic loop below, which would find the same command and
                # then nothing to limit, reserve or resume (a GET or SET changes neither
                # the scope nor the connection's state, and holds no unfinished command).
                assert self.transport is not None
                self.transport.write(self._run(args, len(data), "GET" if len(args) == 2 else "SET"))
                if self.door.budget.full():  # what this SET added filled it: read no more for now
                    self._reserve()
                return
        self.parser.feed(data)
        self._process()

    def _process(self) -> None:
        """Answer the whole commands buffered, until replies back up."""
        assert self.transport is not None and self.session is not None
        out: list[bytes] = []
        size = 0
        try:
            while "replies" not in self._paused and not self.session.closing:
                args = self.parser.next()
                if args is None:
                    break
                out.append(self._run(args, self.parser.consumed - self._mark))
                size += len(out[-1])
                self._mark = self.parser.consumed
                self._limit()  # AUTH may have changed what this connection may send
                if size >= REPLY_CHUNK:
                    self.transport.write(b"".join(out))  # may call pause_writing at once
                    out, size = [], 0
            self._reserve()
        except ProtocolError as exc:
            self.transport.write(b"".join(out) + Reply.error(f"ERR protocol error: {exc}"))
            self._refuse()
            return
        if out:
            self.transport.write(b"".join(out))
        if self.session.closing:
            self.transport.close()
        else:
            self._resume()

    def _refuse(self) -> None:
        """After the error reply: send EOF, drop what still arrives (up to LINGER), close."""
        assert self.transport is not None and self.session is not None
        self.session.closing = True
        self.parser = Parser(0, 0)  # frees what the parser held
        self._linger = LINGER
        self._paused.clear()
        self.transport.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()

    def _drop(self, n: int) -> None:
        assert self.transport is not None
        self._linger -= n
        if self._linger < 0:
            self.transport.abort()

    def _may_send_values(self) -> bool:
        """Write scope; or any authenticated scope on a read-only door, which answers a
        SET with OK and drops the value (stock clients put every miss, values included)."""
        assert self.session is not None
        scope = self.session.scope
        return scope is Scope.WRITE or (scope is not None and self.door.options.branch is None)

    def _limit(self) -> None:
        assert self.session is not None
        if self._may_send_values():
            value = self.door.options.max_value
            self.parser.max_arg, self.parser.max_command = value, value + SMALL_COMMAND
            self.parser.why = "(the door's largest value, --redis-max-value)"
        else:
            self.parser.max_arg = self.parser.max_command = SMALL_COMMAND
            self.parser.why = "before AUTH" if self.session.scope is None else "with read scope"

    # -- backpressure -----------------------------------------------------------------------

    def _reserve(self) -> None:
        """Hold room in the door's write budget for what the unfinished command declared;
        stop reading until there is room."""
        assert self.transport is not None
        if not self._may_send_values():
            return
        want = self.parser.size
        if self.door.budget.reserve(self._reserved, want):
            self._reserved = want
            if not self.door.budget.full():
                self._paused.discard("budget")
                return
        self._pause("budget")
        self.door.budget.wait(id(self), self._retry)
        self.door.start_flush()  # the commit that lands frees room and wakes us

    def _retry(self) -> None:
        if self._admitted and self.transport is not None and not self.transport.is_closing():
            self._reserve()
            self._resume()

    def _pause(self, why: str) -> None:
        assert self.transport is not None
        self._paused.add(why)
        self.transport.pause_reading()

    def _resume(self) -> None:
        assert self.transport is not None
        if not self._paused and not self.transport.is_closing():
            self.transport.resume_reading()  # a no-op when reading was not paused

    def pause_writing(self) -> None:
        self._pause("replies")

    def resume_writing(self) -> None:
        self._paused.discard("replies")
        if self.session is not None and not self.session.closing:
            self._process()  # the commands that waited in the buffer; resumes reading

    # -- idle -------------------------------------------------------------------------------

    def _arm(self, delay: float) -> None:
        self._timer = asyncio.get_running_loop().call_later(delay, self._idle)

    def _idle(self) -> None:
        """Close a connection silent for the idle timeout (one timer a connection, moved
        on lazily: a packet only records its time). Waiting on the write budget is the
        door's doing, not the client's: it does not count as silence."""
        assert self.transport is not None
        timeout = self.door.options.connections.idle_timeout
        quiet = self._clock() - self._last
        if quiet >= timeout and "budget" not in self._paused:
            self.transport.close()
        else:
            self._arm(max(timeout - quiet, 0.0) or timeout)

    def _run(self, args: list[bytes], size: int, name: str = "") -> bytes:
        """The reply to one command (``name``: its name in upper case, when known)."""
        assert self.session is not None
        start = time.perf_counter()
        if not args:
            return b""
        name = name or args[0].decode("ascii", "replace").upper()
        reply, kind, outcome = self.session.run(name, args)
        if self.door.observe is not None:
            # Any other name counts as OTHER: a client cannot grow the metrics' label set.
            self.door.observe(name if name in _KNOWN else "OTHER", kind, outcome, size, len(reply),
                              time.perf_counter() - start)
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

    def run(self, name: str, args: list[bytes]) -> tuple[bytes, str, str]:
        """(reply, key kind, outcome) for one command: ``args``, named ``name`` (its first
        argument in upper case)."""
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

    def cmd_get(self, args: list[bytes]) -> tuple[bytes, str, str]:
        bulk, kind = self.door.get(args[0])
        if bulk is None:
            return self.reply.nil(), kind, "miss"
        return bulk, kind, "hit"

    def cmd_mget(self, args: list[bytes]) -> tuple[bytes, str, str]:
        got = [self.door.get(k) for k in args]
        hits = sum(v is not None for v, _ in got)
        kind = got[0][1] if got else ""
        nil = self.reply.nil()
        return self.reply.array([v if v is not None else nil for v, _ in got]), kind, "hit" if hits else "miss"

    def cmd_exists(self, args: list[bytes]) -> tuple[bytes, str, str]:
        return self.reply.integer(sum(self.door.get(k)[0] is not None for k in args)), "", "ok"

    def _set(self, pairs: list[tuple[bytes, bytes]]) -> tuple[bytes, str, str]:
        if self.door.options.branch is None:
            # A read-only door: torch puts every miss, and its AOTAutograd save does not
            # catch an error reply, so a quiet drop keeps stock clients compiling.
            return self.reply.ok(), "", "ok"
        if self.scope is not Scope.WRITE:
            return self.reply.error(f"NOPERM cas: token {self.token!r} has read scope only"), "", "error"
        err, kind = self.door.set(pairs, self.token)
        if err:
            return self.reply.error(err), "", "error"
        return self.reply.ok(), kind, "ok"

    def cmd_set(self, args: list[bytes]) -> tuple[bytes, str, str]:
        # Options (EX, PX, NX, KEEPTTL, ...) are accepted and ignored: entries do not expire.
        return self._set([(args[0], args[1])])

    def cmd_mset(self, args: list[bytes]) -> tuple[bytes, str, str]:
        if not args or len(args) % 2:
            raise ValueError("MSET needs key value pairs")
        return self._set(list(zip(args[::2], args[1::2], strict=True)))


_KNOWN = frozenset(n[4:].upper() for n in dir(Session) if n.startswith("cmd_")) | _REFUSED
