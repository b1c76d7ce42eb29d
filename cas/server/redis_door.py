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

This module is the store side (env, served ref, reads, write batches); the wire codec is
cas.server.resp, and a connection's handshake and command handlers cas.server.redis_session.

All store work happens on the event loop's thread (LMDB reads are memory-mapped and take
microseconds; a batch commit takes milliseconds), which keeps the per-request cost to a
parse and a dictionary lookup instead of a hop to a thread pool.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from cas import provenance, refs
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import CasError, UsageError
from cas.objects import Env
from cas.server.auth import Tokens
from cas.server.redis_session import Connection
from cas.store import Store
from cas.torch.live import LiveCache
from cas.torch.policy import check_ref_allowed
from cas.torch.wire import parse_backend_key

LOG = logging.getLogger("cas.server.redis")

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
        #: Served values of the current commit, already BLAKE3-checked:
        #: {key: (wire value, blob id)}; the id so that a hit here still counts as a read.
        self._hot: OrderedDict[str, tuple[bytes, ObjectId]] = OrderedDict()
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
        #: Called (in the commit thread) after each batch commit: the budget keeper.
        self.on_commit: Callable[[], None] | None = None

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
        hot = self._hot.get(text)
        if hot is not None:
            self._hot.move_to_end(text)
            self.store.note_reads((hot[1],))  # in memory; written in batches
            return hot[0]
        found = self.reader.get_entry(text)  # notes the read itself
        if found is None:
            return None
        value = found[0]
        if len(value) <= HOT_BYTES // 64:
            self._hot[text] = found
            self._hot_bytes += len(value)
            while self._hot_bytes > HOT_BYTES:
                self._hot_bytes -= len(self._hot.popitem(last=False)[1][0])
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
            if self.on_commit is not None:
                self.on_commit()
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

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on ``sock`` (bound already, by ``cas serve``) or on the options' host:port."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(self._connection, sock=sock)
        else:
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

    def _connection(self) -> Connection:
        return Connection(self)


def _envs_of(store: Store, tip: ObjectId) -> set[ObjectId]:
    from cas import manifest

    root = refs.load_commit(store, tip).manifest
    return {k.env for k, _ in manifest.entries(store, root)}
