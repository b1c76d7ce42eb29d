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
  policy allows it (:class:`cas.trust.AllowedCommits`). When ``ref`` is the write
  branch itself, the writes not yet committed are served too; a door that reads a tag
  (or another branch) serves exactly that ref's commit, whatever anyone writes (design
  invariant 7). Every value is re-hashed (BLAKE3) before it is served. A revoked entry
  (:mod:`cas.revocations`) is nil, from the first request after its revocation arrives.
* Writes (write-scope tokens only) are accepted at once and committed to ``branch`` in batches
  (``batch`` entries, or every ``flush_every`` seconds, and at shutdown) by a commit
  process (cas.server.redis_commit), so that the commit work does not hold the GIL the
  event loop needs; the commit's metadata names the token that wrote them, so a batch
  never mixes two tokens. If the commit process dies, its batch is re-queued, ``SET`` is
  refused with an ``-ERR`` line until the process is restarted at the next flush. A key
  outside its kind's grammar (cas.entrykeys) is refused at ``SET``; a value that cannot
  be decoded or stored is dropped at commit, logged and counted, and the rest commits.
* ``AUTH [user] <cas token>``: the password is a cas token; a read token gets
  ``-NOPERM`` on ``SET``, except on a read-only door (no branch), which drops writes. Without AUTH a connection may only handshake, unless the
  server runs without tokens or the door allows anonymous reads (or reads and writes,
  for Triton's client, which cannot send a password).
* ``DEL``, ``FLUSHALL`` and every other command that would rewrite history are refused:
  entries leave a store through ``cas gc``, not through a cache client.
* What a stranger may make the door hold is bounded (docs/server.md, "Limits"): each
  connection's commands by its scope (cas.server.redis_session), write values across
  the door by a byte budget (cas.server.redis_budget), connections per door and per
  peer address, and silence by an idle timeout (cas.server.peers).

This module is the store side (env, served ref, reads, write batches); the wire codec is
cas.server.resp, and a connection's handshake and command handlers cas.server.redis_session.

Reads happen on the event loop's thread (LMDB reads are memory-mapped and take
microseconds), which keeps the per-request cost to a parse and a dictionary lookup
instead of a hop to a thread pool. The commit thread only hands each batch to the commit
process and waits for its answer (pipe I/O, which releases the GIL).
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
from typing import Any

from cas import entrykeys, refs, revocations
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import CasError, UsageError
from cas.objects import Env
from cas.server.auth import Tokens
from cas.server.door_report import DoorReporter
from cas.server.peers import ConnectionLimits, Peers
from cas.server.redis_budget import WriteBudget
from cas.server.redis_commit import Batches, CommitProcess, CommitProcessDied, CommitResult
from cas.server.redis_session import Connection
from cas.server.resp import bulk_string
from cas.store import Store
from cas.torch.live import LiveCache
from cas.torch.wire import parse_backend_key
from cas.trust import AllowedCommits

LOG = logging.getLogger("cas.server.redis")

#: Memory for values already read, checked and re-wrapped (blobs are immutable, so a
#: value stays right for as long as the served commit does).
HOT_BYTES = 256 << 20

#: Called after each command: (command, key kind or "", outcome, bytes in, bytes out,
#: seconds); outcome is "hit", "miss", "ok" or "error". The metrics module listens here.
Observer = Callable[[str, str, str, int, int, float], None]
#: Called, from the commit thread, for each accepted write dropped at commit, with the
#: reason: "key" (outside the entry-key grammar) or "value" (not of its kind's shape).
DropObserver = Callable[[str], None]


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
    #: Seconds between miss reports (cas.server.door_report); None: no reports.
    report_every: float | None = None
    #: Largest value a write-scope connection may send (a bulk string of SET or MSET).
    max_value: int = 128 << 20
    #: Bytes of values the door holds at once: being received, or accepted and not yet
    #: committed (cas.server.redis_budget). Past it, writers wait.
    max_pending: int = 256 << 20
    #: Connection caps and idle timeout (Redis clients keep a pooled connection open for
    #: a whole run, and reconnect when it was closed, so the timeout is long).
    connections: ConnectionLimits = ConnectionLimits(idle_timeout=300)


class RedisDoor:
    """Answers Redis commands from one store (see the module docstring)."""

    def __init__(
        self,
        store_path: str | Path,
        tokens: Tokens | None,
        options: RedisOptions,
        observe: Observer | None = None,
        on_drop: DropObserver | None = None,
    ) -> None:
        self.options = options
        self.tokens = tokens
        self.observe = observe
        self.on_drop = on_drop
        self.path = Path(store_path)
        #: Used on the event loop's thread only (reads); commits use their own handle.
        self.store = Store(self.path)
        self.read_ref = options.ref or options.branch
        if self.read_ref is None:
            raise UsageError("the Redis door needs a ref to read or a branch to write")
        self.env = self._pick_env()
        #: The write branch's full ref: only a door reading it serves uncommitted writes.
        self._own_ref = refs.branch_ref(options.branch) if options.branch else None
        # A door reading its write branch reads that branch even before it exists (a tag
        # of the same name, made meanwhile, must not take its place).
        self._ref_full: str | None = self._own_ref if self.read_ref == options.branch else None
        self._ref_raw: ObjectId | None = None
        #: The commit reads answer from (peeled, allowed by the policy; None: nothing
        #: served); a new write branch starts here.
        self.pin: ObjectId | None = None
        self.reporter = (DoorReporter(self.read_ref, self.env.id.hex, options.report_every)
                         if options.report_every is not None else None)
        #: The trust policy, for a ref that moves (checks only what is new since).
        self._policy = AllowedCommits(self.store)
        self.reader = LiveCache(self.store, self.env, root=None, branch=None)
        #: Served values of the current commit, already BLAKE3-checked:
        #: {key: (wire value as a RESP bulk string, blob id, key kind)}; the id so that a
        #: hit here still counts as a read.
        self._hot: OrderedDict[str, tuple[bytes, ObjectId, str]] = OrderedDict()
        self._hot_bytes = 0
        #: Blobs served from _hot since the last tick: noted as read once a tick (a read
        #: time is an epoch second, for gc's order), not once per GET.
        self._hot_reads: set[ObjectId] = set()
        #: The raw values of the served ref and the revocations branch, read at store
        #: generation _generation.
        self._watched: tuple[bytes | None, ...] = ()
        self._generation = -1
        self._refresh()
        #: Accepted writes not yet committed, per token: {redis key: wire value}.
        self._pending: dict[str, dict[str, bytes]] = {}
        self._npending = 0
        self._pending_bytes = 0
        self._flushing_bytes = 0
        self.budget = WriteBudget(options.max_pending)
        self.peers = Peers(options.connections)
        #: The batch being committed (still served until its commit is visible).
        self._flushing: dict[str, bytes] = {}
        self._flush_task: asyncio.Future[CommitResult | None] | None = None
        self._last_flush = time.monotonic()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cas-redis-commit")
        self._writer_store: Store | None = None  # miss reports only
        self.committer = (CommitProcess(self.path, self.env.id.hex, options.branch)
                          if options.branch else None)
        #: The commit process died with a batch: SETs are refused until it is restarted.
        self.commit_down = False
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
            got = self.store.objects.get_typed(self.store.objects.resolve_unique(wanted))
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
        raw = self.store.refs.get(self._ref_full)
        if raw == self._ref_raw:
            return
        self._ref_raw = raw
        root, self.pin = None, None
        if raw is not None:
            try:
                commit = self._policy.check(self._ref_full, raw)
                root = refs.load_commit(self.store, commit).manifest
                self.pin = commit
            except CasError as exc:
                LOG.warning("redis door serves nothing from %s: %s", self.read_ref, exc)
        self.reader.serve_from(root)
        self._hot.clear()
        self._hot_bytes = 0

    # -- commands ---------------------------------------------------------------------------

    def _serves_writes(self) -> bool:
        """Whether uncommitted writes are served: only when the read ref is the write branch."""
        return self._own_ref is not None and self._ref_full == self._own_ref

    def get(self, key: bytes) -> tuple[bytes | None, str]:
        """(the value of ``key`` as a RESP bulk string (``$<n>\r\n<value>\r\n``, the
        same in RESP2 and RESP3), or None for a miss; the key's kind, "" if none)."""
        bulk, kind = self._lookup(key)
        if self.reporter is not None:
            self.reporter.lookup(self.pin, key, bulk is not None)
        return bulk, kind

    def _lookup(self, key: bytes) -> tuple[bytes | None, str]:
        text = key.decode("utf-8", "replace")
        if self._serves_writes():
            for batch in self._pending.values():
                if text in batch:
                    return bulk_string(batch[text]), _kind(text)
            if text in self._flushing:
                return bulk_string(self._flushing[text]), _kind(text)
        self._check_moved()
        hot = self._hot.get(text)
        if hot is not None:
            self._hot.move_to_end(text)
            self._hot_reads.add(hot[1])
            return hot[0], hot[2]
        kind = _kind(text)
        found = self.reader.get_entry(text)  # notes the read itself
        if found is None:
            return None, kind
        # Kept encoded: a hit is then written as it is, without a copy of the value.
        bulk = bulk_string(found[0])
        if len(bulk) <= HOT_BYTES // 64:
            self._hot[text] = (bulk, found[1], kind)
            self._hot_bytes += len(bulk)
            while self._hot_bytes > HOT_BYTES:
                self._hot_bytes -= len(self._hot.popitem(last=False)[1][0])
        return bulk, kind

    def _check_moved(self) -> None:
        """Serve the read ref's new commit, and drop revoked values, as soon as either
        moved. Per GET, one look at the store's generation (no transaction); when
        something was committed since, one read of both refs; the work only when one of
        them changed."""
        if self._ref_full is None:  # the read ref does not exist yet
            self._refresh()
            self._drop_revoked()
            return
        generation = self.store.generation()  # before the read: a commit after it shows next GET
        if generation == self._generation:
            return
        self._generation = generation
        now = self.store.refs.raw((self._ref_full, revocations.REF))
        if now == self._watched:
            return
        revocations_moved = now[1:] != self._watched[1:]
        self._watched = now
        self._refresh()
        self._drop_revoked()
        if revocations_moved:
            # Also when the reader had already seen the new revocations (a miss read them
            # between our read and its own): a value served a moment ago may be revoked.
            self._hot.clear()
            self._hot_bytes = 0

    def note_hot_reads(self) -> None:
        """Note the blobs served from memory since the last call as read (gc's order)."""
        if self._hot_reads:
            read, self._hot_reads = self._hot_reads, set()
            self.store.maintenance.note_reads(read)

    def _drop_revoked(self) -> None:
        """Forget the served values when the revocations changed (cas.revocations): a
        revoked entry is nil from then on, even one served a moment ago."""
        if self.reader.check_revocations():
            self._hot.clear()
            self._hot_bytes = 0

    def set(self, pairs: list[tuple[bytes, bytes]], token: str) -> tuple[str | None, str]:
        """Accept writes for the next batch, all or none (as ``MSET``); returns (an error
        text, or None when accepted; the kind of the last key, "" if none)."""
        if self.commit_down:
            return "ERR cas: the commit process is restarting; nothing was accepted, retry", ""
        accepted: list[tuple[str, bytes]] = []
        kind = ""
        for key, value in pairs:
            text = key.decode("utf-8", "replace")
            parsed = parse_backend_key(text)
            err = _refusal(text, parsed)
            if err:
                return err, ""
            kind = parsed[0] if parsed else ""
            if parsed is not None:
                accepted.append((text, value))
        # The value is decoded once, in the commit process (a malformed one is dropped and
        # logged there): decoding it here too would double the CPU cost of a SET.
        batch = self._pending.setdefault(token, {})
        for text, value in accepted:
            self._npending += text not in batch
            grown = len(value) - len(batch.get(text, b""))
            batch[text] = value
            self._pending_bytes += grown
            self.budget.accept(grown)
        if self._flush_task is None and self._full():
            self.start_flush()
        return None, kind

    def _full(self) -> bool:
        """Whether the pending writes make a batch: by count, or half the byte budget (so
        a commit lands before writers have to wait)."""
        return self._npending >= self.options.batch or self._pending_bytes * 2 >= self.budget.limit

    # -- batch commits --------------------------------------------------------------------

    def start_flush(self) -> None:
        """Commit the pending writes through the commit process, unless a commit is running."""
        self._last_flush = time.monotonic()
        if not self._pending or self._flush_task is not None:
            return
        batches, self._pending, self._npending = self._pending, {}, 0
        self._flushing_bytes, self._pending_bytes = self._pending_bytes, 0
        self._flushing = {k: v for batch in batches.values() for k, v in batch.items()}
        self._refresh()  # a write branch made by this commit starts at the served commit
        loop = asyncio.get_running_loop()
        self._flush_task = loop.run_in_executor(self._pool, self._commit, batches, self.pin)
        self._flush_task.add_done_callback(lambda f: self._flushed(batches, f.result()))

    def _flushed(self, batches: Batches, result: CommitResult | None) -> None:
        self._flush_task = None
        self._refresh()  # the new commit is visible before its entries leave _flushing
        self._flushing = {}
        done, self._flushing_bytes = self._flushing_bytes, 0
        self.commit_down = result is None
        if result is None:
            done = self._requeue(batches)
        self.budget.free(done)  # wakes waiting writers, which may start the next commit
        if self._full():
            self.start_flush()

    def _requeue(self, batches: Batches) -> int:
        """Put a batch the commit process died with back in front of the pending writes
        (a newer write of the same key wins); returns the bytes no longer held."""
        freed = 0
        for token, batch in batches.items():
            newer = self._pending.get(token, {})
            for key, value in batch.items():
                if key in newer:
                    freed += len(value)
                else:
                    self._npending += 1
                    self._pending_bytes += len(value)
            self._pending[token] = {**batch, **newer}
        return freed

    def _commit(self, batches: Batches, base: ObjectId | None) -> CommitResult | None:
        """One commit per token on the write branch, made by the commit process (runs in
        the commit thread, which waits on the pipe); None if the process died."""
        assert self.committer is not None
        n = sum(map(len, batches.values()))
        try:
            if not self.committer.alive():
                self.committer.start()  # first flush, or the last one found it dead
            result = self.committer.commit(batches, base.raw if base is not None else None)
        except (CommitProcessDied, OSError) as exc:  # OSError: it could not be started
            LOG.error("redis door commit process died (%s): %d entries re-queued, "
                      "SETs refused until it restarts", exc, n)
            return None
        except Exception:  # a bug: logged, and the door keeps serving
            LOG.exception("redis door could not commit %d entries", n)
            return CommitResult(0, n, [])
        if self.on_drop is not None:
            for reason in result.drops:
                self.on_drop(reason)
        if self.on_commit is not None and result.committed:
            self.on_commit()
        return result

    # -- serving --------------------------------------------------------------------------

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on ``sock`` (bound already, by ``cas serve``) or on the options' host:port."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(self._connection, sock=sock)
        else:
            self._server = await loop.create_server(self._connection, self.options.host, self.options.port)
        if self.committer is not None:
            self._pool.submit(self.committer.start)  # its imports overlap the first writes
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
            self.note_hot_reads()
            if self.reporter is not None and self.reporter.due():
                self._pool.submit(self._write_reports, self.reporter.take())

    def _write_reports(self, reports: list[dict[str, Any]]) -> None:
        """Commit miss reports (runs in the commit thread; a failure is logged)."""
        from cas.coverage import write_report

        try:
            if self._writer_store is None:
                self._writer_store = Store(self.path)
            for report in reports:
                write_report(self._writer_store, report)
        except Exception:  # the door keeps serving; the counts of this report are lost
            LOG.exception("redis door could not commit a miss report")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        tries = 3  # a commit process that dies at every start must not hang the stop
        while self._flush_task is not None or (self._pending and tries):
            if self._flush_task is not None:
                await self._flush_task
                await asyncio.sleep(0)  # let its done-callback run
                tries -= self.commit_down
            else:
                self.start_flush()
        if self._pending:
            LOG.error("redis door stopped with %d entries not committed", self._npending)
        if self.reporter is not None:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._write_reports, self.reporter.take())
        if self.committer is not None:
            self._pool.submit(self.committer.close)
        self._pool.shutdown()
        if self._writer_store is not None:
            self._writer_store.close()
        self.note_hot_reads()
        self.store.close()

    def _connection(self) -> Connection:
        return Connection(self)


def _refusal(key: str, parsed: tuple[str, str, str] | None) -> str | None:
    """Why a ``SET`` of ``key`` (``parsed`` by parse_backend_key) is refused, as a one-line
    error reply, or None when it is accepted: a key of no torch or Triton cache is refused,
    and so is an entry key outside its kind's grammar (cas.entrykeys), which would make
    its whole batch fail to commit."""
    if parsed is None:
        if key.startswith("pt2:"):
            return None  # a torch cache cas does not keep (bundled autotune): dropped
        return "ERR cas: not a torch or Triton remote-cache key"
    why = entrykeys.problem(parsed[0], parsed[1])
    return f"ERR cas: {why}" if why else None


def _kind(key: str) -> str:
    """The kind of entry a Redis key names ("" for none), the label of its metrics."""
    parsed = parse_backend_key(key)
    return parsed[0] if parsed else ""


def _envs_of(store: Store, tip: ObjectId) -> set[ObjectId]:
    from cas import manifest

    root = refs.load_commit(store, tip).manifest
    return {k.env for k, _ in manifest.entries(store, root)}
