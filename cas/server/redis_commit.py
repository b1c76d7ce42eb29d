"""The Redis door's commit process: batch commits out of the serving process's GIL.

The door (cas.server.redis_door) accepts ``SET`` values at once and commits them in
batches. The commit work (decode torch's JSON, BLAKE3, LMDB writes, manifest update,
fsync) is CPU in Python; run in a thread of the serving process it held the GIL the
event loop needs, and 1 KiB ``SET`` throughput was 0.40× of redis-server
(docs/benchmarks.md). So it runs in a child process, ``python -m cas.server.redis_commit
STORE ENV BRANCH``, fed over a pipe:

* a request is one batch: ``[base, [[token, [[key, value], ...]], ...]]`` (msgpack), the
  commit the write branch starts at (when it does not exist yet) and the writes of each
  token; the child makes one commit per token, exactly as the door's thread did;
* a reply is ``{"committed": entries, "failed": entries, "drops": [reason, ...]}``:
  what was committed, what could not be (a store error: logged by the child), and why
  each dropped write was dropped ("key" or "value", for the door's counter).

Each message is a frame: an 8-byte big-endian length, then that many bytes. The parent
writes a request and reads its reply from the door's commit thread, where both are
blocking I/O that releases the GIL. A reply is answered only after the commit is
durable (LMDB commits with fsync), so a ``SET`` that the door reports committed
survives a kill -9 of the server.

The child exits when its stdin closes: at the door's stop, or when the server dies
(kill -9 included; a commit under way finishes first, LMDB keeps it whole either way).
It ignores SIGINT, so a Ctrl-C on the terminal reaches the server, which then flushes
what is pending through the child before closing it. If the child dies, the request
fails with :class:`CommitProcessDied`; the door re-queues the batch and restarts the
child at its next flush.

Rejected: a ``multiprocessing`` child (fork would copy the server's threads and
listening sockets; spawn re-imports the ``cas`` entry script) and shared memory (values
are written once and read once; a pipe costs one copy, and the batch is one write).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import msgpack

LOG = logging.getLogger("cas.server.redis")

_FRAME = struct.Struct(">Q")
#: Largest reply the parent reads (a reason per dropped write: far below this).
MAX_REPLY = 64 << 20
#: Largest request the child reads: the door's batches are bounded by its write budget
#: (--redis-max-pending, at most a few GiB); this only stops a corrupt length.
MAX_REQUEST = 1 << 40

#: One batch: {token: {redis key: wire value}}.
Batches = dict[str, dict[str, bytes]]


class CommitProcessDied(Exception):
    """The commit process exited (or its pipe broke) before it answered."""


@dataclass(frozen=True)
class CommitResult:
    committed: int
    failed: int
    #: Why each dropped write was dropped: "key" or "value".
    drops: list[str]


def write_frame(out: IO[bytes], payload: bytes) -> None:
    out.write(_FRAME.pack(len(payload)))
    out.write(payload)
    out.flush()


def read_frame(src: IO[bytes], limit: int) -> bytes | None:
    """The next frame's payload; None at a clean end of stream. EOFError if the stream
    ends inside a frame, ValueError for a length past ``limit``."""
    head = src.read(_FRAME.size)
    if not head:
        return None
    if len(head) != _FRAME.size:
        raise EOFError("the stream ended inside a frame header")
    (size,) = _FRAME.unpack(head)
    if size > limit:
        raise ValueError(f"a frame of {size} bytes: more than {limit}")
    payload = src.read(size)
    if len(payload) != size:
        raise EOFError("the stream ended inside a frame")
    return bytes(payload)


class CommitProcess:
    """The parent's handle on the commit process (used from the door's commit thread)."""

    def __init__(self, store_path: Path, env_hex: str, branch: str) -> None:
        self.args = [sys.executable, "-m", "cas.server.redis_commit", str(store_path), env_hex, branch]
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the child (again, after it died); its log lines go to our stderr."""
        self.close()
        self._proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def commit(self, batches: Batches, base: bytes | None) -> CommitResult:
        """Commit ``batches`` (one commit per token) in the child; blocks until it is
        durable. CommitProcessDied if the child is gone or dies meanwhile (the caller
        restarts it: :meth:`start`)."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise CommitProcessDied("not started")
        request = msgpack.packb([base, [[t, list(b.items())] for t, b in batches.items()]])
        try:
            write_frame(proc.stdin, request)
            reply = read_frame(proc.stdout, MAX_REPLY)
        except (OSError, EOFError, ValueError) as exc:
            raise CommitProcessDied(str(exc)) from exc
        if reply is None:
            raise CommitProcessDied(f"exited with {proc.wait()}")
        got = msgpack.unpackb(reply)
        return CommitResult(got["committed"], got["failed"], list(got["drops"]))

    def close(self) -> None:
        """Let the child finish and exit (its stdin closes), or reap a dead one."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except OSError:
            pass  # the child is dead already: its pipe broke
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# -- the child --------------------------------------------------------------------------


class _Committer:
    """The child's side: one store handle, one commit per token and batch."""

    def __init__(self, store_path: Path, env_hex: str, branch: str) -> None:
        from cas.objects import Env
        from cas.store import Store

        self.store = Store(store_path)
        got = self.store.objects.get_typed(self.store.objects.resolve_unique(env_hex))
        if got is None:
            raise SystemExit(f"cas: env {env_hex} is not in the store")
        self.env = Env.decode(got[1])
        self.branch = branch

    def run(self, request: bytes) -> dict[str, Any]:
        from cas.digest import ObjectId

        base_raw, batches = msgpack.unpackb(request)
        base = ObjectId(base_raw) if base_raw is not None else None
        committed = failed = 0
        drops: list[str] = []
        for token, pairs in batches:
            done, left = self._commit_token(token, pairs, base, drops)
            committed += done
            failed += left
        return {"committed": committed, "failed": failed, "drops": drops}

    def _commit_token(self, token: str, pairs: list[list[Any]], base: Any,
                      drops: list[str]) -> tuple[int, int]:
        from cas.torch.live import LiveCache

        rec = LiveCache(
            self.store, self.env, root=None, branch=self.branch,
            message="redis: artifacts recorded through the Redis door",
            metadata={"producer": "redis", "token": token},
            base=base,
        )
        for key, value in pairs:
            reason = _record(rec, key, value, token)
            if reason is not None:
                drops.append(reason)
        oid = rec.flush()
        if oid is not None:
            LOG.info("redis door committed %s (%d entries, token %s)", oid.short(), rec.stats.recorded, token)
        elif rec.pending:
            LOG.error("redis door could not commit %d entries (token %s)", rec.pending, token)
        return rec.stats.recorded - rec.pending, rec.pending


def _record(rec: Any, key: str, value: bytes, token: str) -> str | None:
    """Buffer one write for its token's commit; or drop it, log it and say why ("key",
    "value"): one entry that cannot be stored must not sink the others of its batch."""
    from cas.errors import BadEntryKey

    try:
        rec.record(key, value)
    except Exception as exc:  # whatever a stranger's bytes make a decoder raise
        LOG.warning("redis door dropped %r (token %s): %s", key[:200], token, _one_line(exc))
        return "key" if isinstance(exc, BadEntryKey) else "value"
    return None


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]


#: Objects allocated between young collections of Python's cyclic GC in the commit
#: process (Python's default: 700). A batch is tens of thousands of entries, each a few
#: objects that live until its commit: at 700 the collector walked them again and again,
#: ~20 % of the process's CPU per 1 KiB SET (`bench/redis_cpu.py --commit-batch 6400`
#: with and without ``--default-gc``: 37-42 -> 34 us per SET; docs/benchmarks.md).
#: The batch's objects are freed by reference counting when it is committed; cycles are
#: still collected, in larger steps.
COMMIT_GC_YOUNG = 100_000


def _collect_less() -> None:
    """Fewer cyclic-GC passes, and none over what start-up imported (``gc.freeze``)."""
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(COMMIT_GC_YOUNG, older, oldest)


def main(argv: list[str]) -> int:
    """The child: answer each request frame on stdin with a reply frame on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops us by closing stdin
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print must not corrupt the reply stream
    requests = os.fdopen(0, "rb")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s:     %(message)s")
    store_path, env_hex, branch = argv
    committer = _Committer(Path(store_path), env_hex, branch)
    _collect_less()
    LOG.info("redis door commit process %d started", os.getpid())
    try:
        while (request := read_frame(requests, MAX_REQUEST)) is not None:
            write_frame(replies, msgpack.packb(committer.run(request)))
    except (BrokenPipeError, EOFError):
        pass  # the server died: whatever was committed stays committed
    finally:
        committer.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
