"""The Redis door: stock torch and Triton use a cas store as their remote cache.

torch's ``RedisRemoteCacheBackend`` and Triton's speak the Redis protocol through the
``redis`` client package; this module speaks enough of it (RESP2 and RESP3) for them:
the connect handshake (``HELLO``, ``AUTH``, ``CLIENT SETINFO``, ``SELECT 0``, ``PING``),
then ``GET``/``MGET``/``EXISTS`` and ``SET``/``MSET``. It runs as an asyncio server in the
event loop of the HTTP server (started from the app's lifespan), so one process serves
both doors.

How a Redis key becomes an entry (:func:`cas.torch.live.parse_backend_key`, the same
mapping as the in-process live backend): ``pt2:<cache id>::<key>:c1`` is torch's FX,
AOTAutograd, PGO or autotune cache, ``triton:<kernel hash>:<file>`` Triton's. The key
does not say which environment it belongs to (torch folds its version and build into the
hash, but not in a form we can read back), so **one door serves one env**: the operator
names it (``cas serve --redis-env``), or the served ref holds exactly one env. Entries
of other envs are never served.

* Reads answer from ``ref`` (a tag or a branch), re-read when it moves, if the trust
  policy allows it (:func:`cas.torch.policy.check_ref_allowed`), plus the writes not yet
  committed. Every value is re-hashed (BLAKE3) before it is served.
* Writes (write-scope tokens only) are accepted at once and committed to ``branch`` in batches
  (``batch`` entries, or every ``flush_every`` seconds, and at shutdown); the commit's
  metadata names the token that wrote them, so a batch never mixes two tokens.
* ``AUTH [user] <cas token>``: the password is a cas token; a read token gets
  ``-NOPERM`` on ``SET``, except on a read-only door (no branch), which drops writes. Without AUTH a connection may only handshake, unless the
  server runs without tokens or the door allows anonymous reads (or reads and writes,
  for Triton's client, which cannot send a password).
* ``DEL``, ``FLUSHALL`` and every other command that would rewrite history are refused:
  entries leave a store through ``cas gc``, not through a cache client.

All store work happens on the event loop's thread (LMDB reads are memory-mapped and take
microseconds; a batch commit takes milliseconds), which keeps the per-request cost to a
parse and a dictionary lookup instead of a hop to a thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cas import provenance, refs
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import CasError, UsageError
from cas.objects import Env
from cas.server.auth import Scope, Tokens
from cas.store import Store
from cas.torch.live import LiveCache, parse_backend_key
from cas.torch.policy import check_ref_allowed

LOG = logging.getLogger("cas.server.redis")

#: Largest bulk string accepted (a Redis value is at most 512 MB; torch's are far smaller).
MAX_BULK = 512 << 20
_MAX_ARGS = 1 << 16
#: Memory for values already read, checked and re-wrapped (blobs are immutable, so a
#: value stays right for as long as the served commit does).
HOT_BYTES = 256 << 20

#: Called after each command: (command, key kind or "", outcome, bytes in, bytes out,
#: seconds); outcome is "hit", "miss", "ok" or "error". The metrics module listens here.
Observer = Callable[[str, str, str, int, int, float], None]


@dataclass(frozen=True)
class RedisOptions:
    """What the Redis door serves and where it records."""

    port: int
    host: str = "127.0.0.1"
    #: Ref reads answer from (a tag or a branch); None: the write branch.
    ref: str | None = None
    #: Branch writes are committed to; None: the door is read-only.
    branch: str | None = "main"
    #: Env id (hex or unique prefix) of the clients; None: the only env of ``ref``.
    env: str | None = None
    batch: int = 1024
    flush_every: float = 5.0
    #: Let connections that never AUTH read (e.g. a loopback-only fleet cache).
    anonymous_read: bool = False
    #: Let connections that never AUTH read and write (Triton's client sends no password);
    #: their commits name the token ``anonymous``.
    anonymous_write: bool = False


class _Reply:
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


class _ProtocolError(Exception):
    """The client sent something that is not RESP; the connection is closed."""


def parse_command(buf: bytearray | bytes, pos: int) -> tuple[list[bytes], int] | None:
    """One command at ``buf[pos:]`` (a RESP array of bulk strings, or an inline line) and
    the position after it; None if the buffer does not hold all of it yet."""
    eol = buf.find(b"\r\n", pos)
    if eol < 0:
        if len(buf) - pos > 64 << 10:
            raise _ProtocolError("line too long")
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
            raise _ProtocolError("expected a bulk string")
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
        raise _ProtocolError("bad length") from exc
    if not 0 <= n <= limit:
        raise _ProtocolError(f"length {n} out of range")
    return n


class RedisDoor:
    """Answers Redis commands from one store (see the module docstring)."""

    def __init__(
        self,
        store_path: str | Path,
        tokens: Tokens | None,
        options: RedisOptions,
        observe: Observer | None = None,
    ) -> None:
        self.options = options
        self.tokens = tokens
        self.observe = observe
        self.path = Path(store_path)
        #: Used on the event loop's thread only (reads); commits use their own handle.
        self.store = Store(self.path)
        self.read_ref = options.ref or options.branch
        if self.read_ref is None:
            raise UsageError("the Redis door needs a ref to read or a branch to write")
        self.env = self._pick_env()
        self._ref_full: str | None = None
        self._ref_raw: ObjectId | None = None
        #: Commits the trust policy allowed (tips served so far).
        self._allowed: set[ObjectId] = set()
        self.reader = LiveCache(self.store, self.env, root=None, branch=None)
        #: Served values of the current commit, already BLAKE3-checked: {key: wire value}.
        self._hot: OrderedDict[str, bytes] = OrderedDict()
        self._hot_bytes = 0
        self._refresh()
        #: Accepted writes not yet committed, per token: {redis key: wire value}.
        self._pending: dict[str, dict[str, bytes]] = {}
        self._npending = 0
        #: The batch being committed (still served until its commit is visible).
        self._flushing: dict[str, bytes] = {}
        self._flush_task: asyncio.Future[None] | None = None
        self._last_flush = time.monotonic()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cas-redis-commit")
        self._writer_store: Store | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ticker: asyncio.Task[None] | None = None

    # -- env and ref ----------------------------------------------------------------------

    def _tip(self) -> ObjectId | None:
        assert self.read_ref is not None
        found = refs.find_ref(self.store, self.read_ref)
        return refs.peel(self.store, found[1]) if found else None

    def _pick_env(self) -> Env:
        wanted = self.options.env
        if wanted is None:
            tip = self._tip()
            envs = sorted(_envs_of(self.store, tip)) if tip else []
            if len(envs) != 1:
                raise UsageError(
                    f"cannot tell which env the Redis door serves: {self.read_ref} holds "
                    f"{len(envs)} envs",
                    hint="pass --redis-env ENV_ID (see `cas ls`), or --redis-env here",
                )
            wanted = envs[0].hex
        try:
            got = self.store.get_typed(self.store.resolve_unique(wanted))
        except (CasError, ValueError):
            got = None
        if got is None or got[0] is not ObjType.ENV:
            raise UsageError(f"env {wanted} is not in the store", hint="see `cas ls` for env ids")
        return Env.decode(got[1])

    def _refresh(self) -> None:
        """Serve the read ref's current commit if it moved and the trust policy allows it.

        One LMDB read per request once the ref exists (its full name is kept).
        """
        assert self.read_ref is not None
        if self._ref_full is None:
            found = refs.find_ref(self.store, self.read_ref)
            if found is None:
                return
            self._ref_full = found[0]
        raw = self.store.get_ref(self._ref_full)
        if raw == self._ref_raw:
            return
        self._ref_raw = raw
        root = None
        if raw is not None:
            try:
                commit = refs.peel(self.store, raw)
                if not self._local_since_allowed(commit):
                    check_ref_allowed(self.store, self._ref_full)
                self._allowed.add(commit)
                root = refs.load_commit(self.store, commit).manifest
            except CasError as exc:
                LOG.warning("redis door serves nothing from %s: %s", self.read_ref, exc)
        self.reader.serve_from(root)
        self._hot.clear()
        self._hot_bytes = 0

    def _local_since_allowed(self, commit: ObjectId) -> bool:
        """Whether every commit between ``commit`` and the tips allowed before is local.

        The trust policy walks the whole history of a ref; a branch the door commits to
        every few seconds would make that walk longer each time. A commit made here on
        top of allowed ones is allowed by the same rule, so only the new ones are read
        (bounded; anything else, e.g. a merge from a remote, takes the full check).
        """
        todo, walked = [commit], 0
        while todo:
            c = todo.pop()
            if c in self._allowed:
                continue
            walked += 1
            if not self._allowed or walked > 1000 or provenance.origin(self.store, c) != "local":
                return False
            todo.extend(refs.load_commit(self.store, c).parents)
        return True

    # -- commands ---------------------------------------------------------------------------

    def get(self, key: bytes) -> bytes | None:
        text = key.decode("utf-8", "replace")
        for batch in self._pending.values():
            if text in batch:
                return batch[text]
        if text in self._flushing:
            return self._flushing[text]
        self._refresh()
        value = self._hot.get(text)
        if value is not None:
            self._hot.move_to_end(text)
            return value
        value = self.reader.get(text)
        if value is not None and len(value) <= HOT_BYTES // 64:
            self._hot[text] = value
            self._hot_bytes += len(value)
            while self._hot_bytes > HOT_BYTES:
                self._hot_bytes -= len(self._hot.popitem(last=False)[1])
        return value

    def set(self, key: bytes, value: bytes, token: str) -> str | None:
        """Accept a write for the next batch; returns an error text, or None when accepted."""
        text = key.decode("utf-8", "replace")
        parsed = parse_backend_key(text)
        if parsed is None:
            if text.startswith("pt2:"):
                return None  # a torch cache cas does not keep (bundled autotune): dropped
            return "ERR cas: not a torch or Triton remote-cache key"
        # The value is decoded once, in the commit thread (a malformed one is dropped with
        # a warning there): decoding it here too would double the CPU cost of a SET.
        batch = self._pending.setdefault(token, {})
        self._npending += text not in batch
        batch[text] = value
        if self._npending >= self.options.batch:
            self.start_flush()
        return None

    # -- batch commits --------------------------------------------------------------------

    def start_flush(self) -> None:
        """Commit the pending writes in the commit thread, unless a commit is running."""
        self._last_flush = time.monotonic()
        if not self._pending or self._flush_task is not None:
            return
        batches, self._pending, self._npending = self._pending, {}, 0
        self._flushing = {k: v for batch in batches.values() for k, v in batch.items()}
        loop = asyncio.get_running_loop()
        self._flush_task = loop.run_in_executor(self._pool, self._commit, batches)
        self._flush_task.add_done_callback(lambda _: self._flushed())

    def _flushed(self) -> None:
        self._flush_task = None
        self._refresh()  # the new commit is visible before its entries leave _flushing
        self._flushing = {}
        if self._npending >= self.options.batch:
            self.start_flush()

    def _commit(self, batches: dict[str, dict[str, bytes]]) -> None:
        """One commit per token on the write branch (runs in the commit thread)."""
        try:
            self._commit_batches(batches)
        except Exception:  # a bug or a broken store: logged, and the door keeps serving
            LOG.exception("redis door could not commit %d entries", sum(map(len, batches.values())))

    def _commit_batches(self, batches: dict[str, dict[str, bytes]]) -> None:
        if self._writer_store is None:
            self._writer_store = Store(self.path)
        assert self.options.branch is not None
        for token, batch in batches.items():
            rec = LiveCache(
                self._writer_store, self.env, root=None, branch=self.options.branch,
                message="redis: artifacts recorded through the Redis door",
                metadata={"producer": "redis", "token": token},
                base=self._ref_raw,
            )
            for key, value in batch.items():
                rec.put(key, value)
            oid = rec.flush()
            if oid is not None:
                LOG.info("redis door committed %s (%d entries, token %s)", oid.short(), len(batch), token)

    # -- serving --------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, self.options.host, self.options.port)
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.options.flush_every))
            if time.monotonic() - self._last_flush >= self.options.flush_every:
                self.start_flush()

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        while self._flush_task is not None or self._pending:
            if self._flush_task is not None:
                await self._flush_task
                await asyncio.sleep(0)  # let its done-callback run
            else:
                self.start_flush()
        self._pool.shutdown()
        if self._writer_store is not None:
            self._writer_store.close()
        self.store.close()

    def _connection(self) -> _Connection:
        return _Connection(self)


class _Connection(asyncio.Protocol):
    """One client connection: parses what arrives, answers each whole command at once.

    A protocol rather than a stream reader: one callback per packet instead of a
    coroutine step per line, and pipelined commands are answered in one write.
    """

    def __init__(self, door: RedisDoor) -> None:
        self.door = door
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.session: _Session | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.session = _Session(self.door, transport.get_extra_info("peername"))

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
        except _ProtocolError as exc:
            out.append(_Reply.error(f"ERR protocol error: {exc}"))
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


def _envs_of(store: Store, tip: ObjectId) -> set[ObjectId]:
    from cas import manifest

    root = refs.load_commit(store, tip).manifest
    return {k.env for k, _ in manifest.entries(store, root)}


_HANDSHAKE = frozenset({"HELLO", "AUTH", "PING", "QUIT", "CLIENT", "SELECT", "COMMAND", "ECHO", "RESET"})
_REFUSED = frozenset(
    {"DEL", "UNLINK", "FLUSHDB", "FLUSHALL", "EXPIRE", "PEXPIRE", "RENAME", "GETDEL", "GETEX", "SWAPDB"}
)


class _Session:
    """The state of one connection: protocol version and who authenticated."""

    def __init__(self, door: RedisDoor, peer: Any) -> None:
        self.door = door
        self.reply = _Reply()
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
        kind = ""
        for key, value in pairs:
            err = self.door.set(key, value, self.token)
            if err:
                return self.reply.error(err), "", "error"
            parsed = parse_backend_key(key.decode("utf-8", "replace"))
            kind = parsed[0] if parsed else kind
        return self.reply.ok(), kind, "ok"

    def cmd_set(self, args: list[bytes]) -> tuple[bytes, str, str]:
        # Options (EX, PX, NX, KEEPTTL, ...) are accepted and ignored: entries do not expire.
        return self._set([(args[0], args[1])])

    def cmd_mset(self, args: list[bytes]) -> tuple[bytes, str, str]:
        if not args or len(args) % 2:
            raise ValueError("MSET needs key value pairs")
        return self._set(list(zip(args[::2], args[1::2], strict=True)))


_KNOWN = frozenset(n[4:].upper() for n in dir(_Session) if n.startswith("cmd_")) | _REFUSED
