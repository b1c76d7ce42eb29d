"""The LMDB environment of a store: opened once per path per process, its named
databases, transactions that grow the map on demand, and LMDB's errors as CasErrors.

This package is the only code that imports lmdb, and transactions never leave it: the
other modules of the package hand :meth:`Env.read` / :meth:`Env.write` a function of a
transaction, and :class:`cas.store.Store` offers purpose-named methods to everyone else.

* The map starts small and doubles on ``MapFullError``; the transaction is replayed, so a
  full map is never an error the caller sees. Other processes pick the new size up on
  ``MapResizedError`` and retry (every txn begin goes through :meth:`Env.begin`).
* A full *disk* is different: LMDB fails the commit, nothing of the txn is kept, and the
  caller gets :class:`StoreFull`.
* py-lmdb refuses a second ``lmdb.open`` of one env in one process, so envs are shared
  through a per-process registry with reference counts.
"""

from __future__ import annotations

import errno
import os
import resource
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import lmdb

from cas.errors import StoreError, StoreFull, StoreNotFound, UsageError
from cas.store import reads
from cas.store.blobcache import BlobCache
from cas.store.reads import ReadBuffer

STORE_FORMAT = 1
INITIAL_MAP_SIZE = 64 << 20
MAX_MAP_SIZE = 1 << 44
#: Free space below which an I/O error at commit is taken for a full disk.
_LOW_SPACE = 16 << 20
_DBS = ("objects", "refs", "reflog", "meta", "stage", "otime", "atime", "evicted")

T = TypeVar("T")
Txn = lmdb.Transaction


class _Shared:
    """One open LMDB env per path per process, with a reference count."""

    lock = threading.Lock()
    envs: dict[str, tuple[lmdb.Environment, dict[str, Any], int]] = {}
    #: Reads noted and not yet written, per path: every handle of a process shares them.
    reads: dict[str, ReadBuffer] = {}
    #: Decoded compressed objects, per path: every handle of a process shares them.
    caches: dict[str, BlobCache] = {}


def _is_enospc(exc: BaseException) -> bool:
    text = str(exc)
    return "No space left" in text or getattr(exc, "errno", None) == errno.ENOSPC or (
        isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    )


def _out_of_space(exc: BaseException, path: str) -> bool:
    """True if ``exc`` means the disk (or the process's file size limit) is exhausted.

    LMDB reports a short write at commit as a bare EIO ("Input/output error"), which is
    what a full file system gives; so on EIO/EFBIG we look at the free space and the
    file size limit before calling it an I/O error.
    """
    if _is_enospc(exc):
        return True
    text = str(exc)
    if "Input/output error" not in text and "File too large" not in text:
        return False
    try:
        st = os.statvfs(path)
        if st.f_bavail * st.f_frsize < _LOW_SPACE:
            return True
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        size = os.path.getsize(os.path.join(path, "data.mdb"))
    except OSError:
        return False
    return limit != resource.RLIM_INFINITY and size + _LOW_SPACE >= limit


def translate(exc: BaseException, path: str) -> Exception:
    """The CasError for an LMDB or OS error of the store at ``path``."""
    if _out_of_space(exc, path):
        return StoreFull(
            f"no space left on the disk holding the store at {path}",
            hint="free disk space or run `cas gc`; the store is unchanged",
            path=path,
        )
    return StoreError(f"store at {path}: {exc}", path=path)


class Env:
    """A store's shared LMDB environment and its named databases."""

    def __init__(self, path: Path, *, create: bool, durable: bool, clock: Callable[[], float]) -> None:
        data = path / "data.mdb"
        if not data.exists():
            if not create:
                raise StoreNotFound(
                    f"no cas store at {path}",
                    hint="run `cas init` or pass --store / set CAS_DIR",
                    path=str(path),
                )
            if path.is_dir() and any(p.name != "lock.mdb" for p in path.iterdir()):
                raise UsageError(
                    f"{path} is not empty and holds no cas store",
                    hint="choose a new or empty directory",
                    path=str(path),
                )
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise translate(exc, str(path)) from exc
        key = str(path.resolve())
        with _Shared.lock:
            if key in _Shared.envs:
                env, dbs, count = _Shared.envs[key]
                _Shared.envs[key] = (env, dbs, count + 1)
            else:
                env, dbs = _open(key, durable, clock)
                _Shared.envs[key] = (env, dbs, 1)
                _Shared.reads[key] = ReadBuffer()
                _Shared.caches[key] = BlobCache()
        self.key = key
        self.handle: lmdb.Environment = env
        self.objects = dbs["objects"]
        self.refs = dbs["refs"]
        self.reflog = dbs["reflog"]
        self.meta = dbs["meta"]
        self.stage = dbs["stage"]
        self.otime = dbs["otime"]
        self.atime = dbs["atime"]
        self.evicted = dbs["evicted"]
        self.reads = _Shared.reads[key]
        self.cache = _Shared.caches[key]

    def close(self) -> None:
        if not self.key:
            return
        with _Shared.lock:
            env, dbs, count = _Shared.envs[self.key]
            if count <= 1:
                self.flush_reads()  # the last handle of the process: nothing noted is lost
                del _Shared.envs[self.key]
                del _Shared.reads[self.key]
                del _Shared.caches[self.key]
                env.close()
            else:
                _Shared.envs[self.key] = (env, dbs, count - 1)
        self.key = ""

    def begin(self, write: bool = False, buffers: bool = False) -> Txn:
        for _ in range(5):
            try:
                return self.handle.begin(write=write, buffers=buffers)  # type: ignore[call-overload]
            except lmdb.MapResizedError:
                # Another process grew the map: adopt its size and retry.
                self.handle.set_mapsize(0)
            except lmdb.Error as exc:
                raise translate(exc, self.key) from exc
        raise StoreError(f"store at {self.key}: map keeps being resized")

    def read(self, fn: Callable[[Txn], T], *, buffers: bool = False) -> T:
        """``fn`` of a read transaction (with ``buffers``, values are views into the map,
        valid only inside ``fn``)."""
        txn = self.begin(buffers=buffers)
        try:
            return fn(txn)
        finally:
            txn.abort()

    def write(self, fn: Callable[[Txn], T]) -> T:
        """Run ``fn`` in one write transaction; grow the map and replay on MapFull.

        ``fn`` may run more than once, so it must not have side effects outside the txn.
        """
        while True:
            txn = self.begin(write=True)
            try:
                result = fn(txn)
                txn.commit()
                return result
            except lmdb.MapFullError:
                txn.abort()
                self._grow()
            except lmdb.Error as exc:
                txn.abort()
                raise translate(exc, self.key) from exc
            except BaseException:
                txn.abort()
                raise

    def _grow(self) -> None:
        current = self.handle.info()["map_size"]
        if current >= MAX_MAP_SIZE:
            raise StoreFull(f"store at {self.key} reached its maximum size")
        try:
            self.handle.set_mapsize(min(current * 2, MAX_MAP_SIZE))
        except lmdb.Error as exc:
            raise translate(exc, self.key) from exc

    def info(self) -> dict[str, int]:
        """Map size, bytes used, and entries of objects, refs and reflog."""
        info = self.handle.info()
        stat = self.handle.stat()

        def go(txn: Txn) -> dict[str, int]:
            return {
                name: txn.stat(db)["entries"]
                for name, db in (("objects", self.objects), ("refs", self.refs), ("reflog", self.reflog))
            }

        counts = self.read(go)
        used = (info["last_pgno"] + 1) * stat["psize"]
        return {"map_size": info["map_size"], "used_bytes": used, **counts}

    def flush_reads(self) -> int:
        """Write the noted reads in one transaction; returns how many ids it wrote."""
        pending = self.reads.take()
        if pending:
            try:
                self.write(lambda txn: reads.write(txn, self.atime, pending))
            except StoreError:
                pass  # read times are a hint for gc's order: a full disk must not fail a read
        return len(pending)

    def sync(self) -> None:
        """Flush every commit to the disk (for a store opened with ``durable=False``)."""
        try:
            self.handle.sync(True)
        except lmdb.Error as exc:
            raise translate(exc, self.key) from exc

    def generation(self) -> int:
        return int(self.handle.info()["last_txnid"])


def _open(key: str, durable: bool, clock: Callable[[], float]) -> tuple[lmdb.Environment, dict[str, Any]]:
    try:
        env = lmdb.open(
            key,
            map_size=INITIAL_MAP_SIZE,
            sync=durable,
            metasync=durable,
            max_dbs=12,
            subdir=True,
            readahead=False,
            meminit=False,
        )
    except lmdb.Error as exc:
        raise translate(exc, key) from exc
    dbs = {}
    try:
        with env.begin(write=True) as txn:
            for name in _DBS:
                dbs[name] = env.open_db(name.encode(), txn=txn)
            meta = dbs["meta"]
            if txn.get(b"format", db=meta) is None:
                txn.put(b"format", str(STORE_FORMAT).encode(), db=meta)
                txn.put(b"created", str(int(clock())).encode(), db=meta)
    except lmdb.Error as exc:
        env.close()
        raise translate(exc, key) from exc
    return env, dbs
