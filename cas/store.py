"""The store: one LMDB environment holding objects, refs, the reflog and format metadata.

This is the only module that imports lmdb. Everything that touches the disk goes through
:class:`Store`; see docs/format.md ("On-disk layout") for the byte layout of each record.

Design notes
------------
* Writes are batched: callers hand over many objects at once and they land in one
  transaction (a durable LMDB commit costs ~0.5 ms; a put inside a txn ~7 us).
* The map starts small and doubles on ``MapFullError``; the transaction is replayed, so a
  full map is never an error the caller sees. Other processes pick the new size up on
  ``MapResizedError`` and retry (every txn begin goes through :meth:`_begin`).
* A full *disk* is different: LMDB fails the commit, nothing of the txn is kept, and the
  caller gets :class:`StoreFull`.
* py-lmdb refuses a second ``lmdb.open`` of one env in one process, so envs are shared
  through a per-process registry with reference counts.
* Ref updates are compare-and-swap inside a write txn; LMDB serializes writers across
  processes, so the read-compare-write is atomic.
"""

from __future__ import annotations

import errno
import os
import resource
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import lmdb
import zstandard

from cas import codec
from cas.codec import ObjType
from cas.digest import DIGEST_SIZE, Hasher, ObjectId
from cas.errors import (
    AmbiguousId,
    BadRefTarget,
    CorruptObject,
    FormatVersionError,
    ObjectNotFound,
    RefConflict,
    StoreError,
    StoreFull,
    StoreNotFound,
    UsageError,
)

STORE_FORMAT = 1
INITIAL_MAP_SIZE = 64 << 20
MAX_MAP_SIZE = 1 << 44
CHUNK_SIZE = 4 << 20
#: Blobs larger than this are split into CHUNK_SIZE chunks.
CHUNK_THRESHOLD = CHUNK_SIZE
#: Payloads smaller than this are never compressed: below LMDB's overflow-page size
#: (half a 4 KiB page) a record shares its leaf page, and zstd's per-call setup costs
#: more than storing it (~20 us vs ~2 us for 1 KiB; see bench/bench_store.py).
COMPRESS_MIN = 2048
#: Store compressed only when it saves at least this fraction.
COMPRESS_GAIN = 0.9
ZSTD_LEVEL = 3
#: Flush streamed chunks in transactions of about this many bytes.
STREAM_TXN_BYTES = 64 << 20

#: Free space below which an I/O error at commit is taken for a full disk.
_LOW_SPACE = 16 << 20
#: ``otime`` holds a write-time log: the ids written by a write transaction, 32 bytes
#: each, concatenated, in records keyed by _LOG_KEY (u32 BE epoch seconds, u64 BE LMDB
#: txn id, u32 BE part: sorted by time). Parts hold at most _LOG_PART bytes, so that a
#: record fits in a leaf page (an overflow record needs contiguous free pages, which often
#: means growing the file: a slower fsync). Records keyed by a 32-byte id with a u32 LE
#: time (_TIME) are the per-object form of earlier versions; both are read, and gc's
#: prune_times folds the old form into the log.
_TIME = struct.Struct("<I")
_LOG_KEY = struct.Struct(">IQI")
_LOG_PART = 60 * DIGEST_SIZE
_PART = struct.Struct(">I")

#: Payloads larger than 4 samples are probed with one sample before a full compression.
COMPRESS_SAMPLE = 4 << 10
_TYPE_OF = {int(t): t for t in ObjType}
#: Reads of records at least this large use zero-copy views (see Store._read_one).
_BIG_READ = 16 << 10

FLAG_ZSTD = 1
FLAG_CHUNKED = 2
_HEAD = struct.Struct("<BBQ")  # type, flags, raw size
_HEAD_SIZE = _HEAD.size
_CHUNK_REF = struct.Struct("<32sQ")  # chunk id, chunk size

ANY = object()  # expected value for a ref update that does not compare

T = TypeVar("T")


@dataclass(frozen=True)
class Record:
    """What the store knows about one object without reading its payload."""

    oid: ObjectId
    type: ObjType
    flags: int
    raw_size: int
    stored_size: int

    @property
    def compressed(self) -> bool:
        return bool(self.flags & FLAG_ZSTD)

    @property
    def chunked(self) -> bool:
        return bool(self.flags & FLAG_CHUNKED)


@dataclass(frozen=True)
class ReflogEntry:
    ref: str
    old: ObjectId | None
    new: ObjectId | None
    time: float
    who: str
    message: str


class _Shared:
    """One open LMDB env per path per process, with a reference count."""

    lock = threading.Lock()
    envs: dict[str, tuple[lmdb.Environment, dict[str, Any], int]] = {}


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


def _translate(exc: BaseException, path: str) -> Exception:
    if _out_of_space(exc, path):
        return StoreFull(
            f"no space left on the disk holding the store at {path}",
            hint="free disk space or run `cas gc`; the store is unchanged",
            path=path,
        )
    return StoreError(f"store at {path}: {exc}", path=path)


class Store:
    """A content-addressed object store with refs, in one LMDB environment."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = False,
        durable: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open the store at ``path`` (``create``: make it if absent).

        ``clock`` gives the epoch seconds stamped on writes, ref updates and the reflog
        (gc's grace periods are measured against it); tests pass a fake one.

        ``durable=False`` skips the fsync of each commit (LMDB ``sync=False``): a crash of
        the *machine* may lose the last commits, a crash of the process loses nothing.
        For throwaway stores and benchmarks; it applies to the process's first open of
        a path (the environment is shared by later opens).
        """
        self.path = Path(path)
        self._durable = durable
        self.clock = clock
        self._key = ""
        # zstd contexts must not be used by two threads at once (a server shares a Store
        # between threads), so each thread gets its own.
        self._z = threading.local()
        self._big_reads = False
        self._open(create)

    # -- life cycle ---------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str],
        *,
        durable: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> Store:
        """Create a store at ``path`` (or open the one already there)."""
        return cls(path, create=True, durable=durable, clock=clock)

    def _open(self, create: bool) -> None:
        data = self.path / "data.mdb"
        if not data.exists():
            if not create:
                raise StoreNotFound(
                    f"no cas store at {self.path}",
                    hint="run `cas init` or pass --store / set CAS_DIR",
                    path=str(self.path),
                )
            if self.path.is_dir() and any(p.name != "lock.mdb" for p in self.path.iterdir()):
                raise UsageError(
                    f"{self.path} is not empty and holds no cas store",
                    hint="choose a new or empty directory",
                    path=str(self.path),
                )
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _translate(exc, str(self.path)) from exc
        key = str(self.path.resolve())
        with _Shared.lock:
            if key in _Shared.envs:
                env, dbs, count = _Shared.envs[key]
                _Shared.envs[key] = (env, dbs, count + 1)
            else:
                env, dbs = self._open_env(key)
                _Shared.envs[key] = (env, dbs, 1)
        self._key = key
        self._env: lmdb.Environment = env
        self._objects = dbs["objects"]
        self._refs = dbs["refs"]
        self._reflog = dbs["reflog"]
        self._meta = dbs["meta"]
        self._stage = dbs["stage"]
        self._otime = dbs["otime"]
        self._check_format()

    def _open_env(self, key: str) -> tuple[lmdb.Environment, dict[str, Any]]:
        try:
            env = lmdb.open(
                key,
                map_size=INITIAL_MAP_SIZE,
                sync=self._durable,
                metasync=self._durable,
                max_dbs=8,
                subdir=True,
                readahead=False,
                meminit=False,
            )
        except lmdb.Error as exc:
            raise _translate(exc, key) from exc
        dbs = {}
        try:
            with env.begin(write=True) as txn:
                for name in ("objects", "refs", "reflog", "meta", "stage", "otime"):
                    dbs[name] = env.open_db(name.encode(), txn=txn)
                meta = dbs["meta"]
                if txn.get(b"format", db=meta) is None:
                    txn.put(b"format", str(STORE_FORMAT).encode(), db=meta)
                    txn.put(b"created", str(int(self.clock())).encode(), db=meta)
        except lmdb.Error as exc:
            env.close()
            raise _translate(exc, key) from exc
        return env, dbs

    def _check_format(self) -> None:
        raw = self.get_meta("format")
        if raw is None or raw != str(STORE_FORMAT):
            self.close()
            raise FormatVersionError(
                f"store format {raw!r} at {self.path} is not supported (this cas reads {STORE_FORMAT})",
                hint="upgrade cas",
            )

    def close(self) -> None:
        if not self._key:
            return
        with _Shared.lock:
            env, dbs, count = _Shared.envs[self._key]
            if count <= 1:
                del _Shared.envs[self._key]
                env.close()
            else:
                _Shared.envs[self._key] = (env, dbs, count - 1)
        self._key = ""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # -- transactions --------------------------------------------------------------------

    def _begin(self, write: bool = False, buffers: bool = False) -> lmdb.Transaction:
        for _ in range(5):
            try:
                return self._env.begin(write=write, buffers=buffers)  # type: ignore[call-overload]
            except lmdb.MapResizedError:
                # Another process grew the map: adopt its size and retry.
                self._env.set_mapsize(0)
            except lmdb.Error as exc:
                raise _translate(exc, self._key) from exc
        raise StoreError(f"store at {self._key}: map keeps being resized")

    def read(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        txn = self._begin()
        try:
            return fn(txn)
        finally:
            txn.abort()

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn`` in one write transaction; grow the map and replay on MapFull.

        ``fn`` may run more than once, so it must not have side effects outside the txn.
        """
        while True:
            txn = self._begin(write=True)
            try:
                result = fn(txn)
                txn.commit()
                return result
            except lmdb.MapFullError:
                txn.abort()
                self._grow()
            except lmdb.Error as exc:
                txn.abort()
                raise _translate(exc, self._key) from exc
            except BaseException:
                txn.abort()
                raise

    def _grow(self) -> None:
        current = self._env.info()["map_size"]
        if current >= MAX_MAP_SIZE:
            raise StoreFull(f"store at {self._key} reached its maximum size")
        try:
            self._env.set_mapsize(min(current * 2, MAX_MAP_SIZE))
        except lmdb.Error as exc:
            raise _translate(exc, self._key) from exc

    # -- records -------------------------------------------------------------------------

    def _encode_payload(
        self, data: bytes | memoryview, *, fast: bool = False
    ) -> tuple[int, bytes | memoryview]:
        n = len(data)
        if n < COMPRESS_MIN:
            return 0, data
        if n > COMPRESS_SAMPLE * 4:
            # Probe a sample from the middle (headers are often more compressible than
            # the rest) with a fast level; a full zstd pass over incompressible bytes
            # costs more than hashing and storing them (docs/robustness.md, benchmarks).
            mid = n // 2
            sample = data[mid : mid + COMPRESS_SAMPLE]
            if len(self._zstd().probe.compress(sample)) > COMPRESS_SAMPLE * COMPRESS_GAIN:
                return 0, data
        z = self._zstd()
        packed = (z.probe if fast else z.compressor).compress(data)
        if len(packed) <= n * COMPRESS_GAIN:
            return FLAG_ZSTD, packed
        return 0, data

    def _zstd(self) -> Any:
        z = self._z
        if not hasattr(z, "compressor"):
            z.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
            z.probe = zstandard.ZstdCompressor(level=1)
            z.decompressor = zstandard.ZstdDecompressor()
        return z

    def _record(self, otype: ObjType, data: bytes | memoryview) -> bytes:
        n = len(data)
        if n < COMPRESS_MIN:  # the common small case, without the compression detour
            return _HEAD.pack(otype, 0, n) + data
        flags, payload = self._encode_payload(data)
        return b"".join((_HEAD.pack(otype, flags, n), payload))

    def _decode_record(self, oid: ObjectId, value: bytes | memoryview) -> Record:
        if len(value) < _HEAD.size:
            raise CorruptObject(f"object {oid.short()} has a truncated record", oid=oid)
        t, flags, raw = _HEAD.unpack_from(value)
        otype = _TYPE_OF.get(t)
        if otype is None:
            raise CorruptObject(f"object {oid.short()} has unknown type {t}", oid=oid)
        return Record(oid, otype, flags, raw, len(value))

    def _unpack(self, txn: lmdb.Transaction, oid: ObjectId, value: bytes | memoryview) -> tuple[ObjType, bytes]:
        """Type and bytes of a record; the hot path of every read, so kept flat."""
        if len(value) >= _HEAD.size:
            t, flags, _raw = _HEAD.unpack_from(value)
            otype = _TYPE_OF.get(t)
            if otype is not None and not flags:
                return otype, bytes(value[_HEAD.size :])
        rec = self._decode_record(oid, value)
        return rec.type, self._payload(txn, oid, value)

    def _payload(self, txn: lmdb.Transaction, oid: ObjectId, value: bytes | memoryview) -> bytes:
        view = self._payload_view(txn, oid, value)
        return view if isinstance(view, bytes) else bytes(view)

    def _payload_view(
        self, txn: lmdb.Transaction, oid: ObjectId, value: bytes | memoryview
    ) -> bytes | memoryview:
        """The object's bytes; a view into the map (valid in ``txn`` only) when stored plain."""
        rec = self._decode_record(oid, value)
        body = value[_HEAD.size :]
        if rec.chunked:
            # one copy: join the chunks' views straight into the result
            return b"".join(self._iter_chunks(txn, oid, body))
        if rec.compressed:
            try:
                return self._zstd().decompressor.decompress(body, max_output_size=rec.raw_size)
            except zstandard.ZstdError as exc:
                raise CorruptObject(f"object {oid.short()}: bad zstd payload", oid=oid) from exc
        return body

    def _iter_chunks(
        self, txn: lmdb.Transaction, oid: ObjectId, body: bytes | memoryview
    ) -> Iterator[bytes | memoryview]:
        for cid_raw, size in _chunk_refs(oid, body):
            value = txn.get(cid_raw, db=self._objects)
            if value is None:
                raise CorruptObject(
                    f"object {oid.short()} is missing chunk {cid_raw.hex()[:12]}", oid=oid
                )
            data = self._payload_view(txn, ObjectId(cid_raw), value)
            if len(data) != size:
                raise CorruptObject(f"object {oid.short()}: chunk size mismatch", oid=oid)
            yield data

    # -- objects: reads ------------------------------------------------------------------

    def has(self, oid: ObjectId) -> bool:
        return self.read(lambda txn: txn.get(oid.raw, db=self._objects) is not None)

    def missing(self, oids: Iterable[ObjectId]) -> list[ObjectId]:
        """The subset of ``oids`` not in the store, in the given order."""

        def go(txn: lmdb.Transaction) -> list[ObjectId]:
            return [o for o in oids if txn.get(o.raw, db=self._objects) is None]

        return self.read(go)

    def record(self, oid: ObjectId) -> Record | None:
        def go(txn: lmdb.Transaction) -> Record | None:
            value = txn.get(oid.raw, db=self._objects)
            return None if value is None else self._decode_record(oid, value)

        return self.read(go)

    def records(self, oids: Iterable[ObjectId]) -> dict[ObjectId, Record]:
        """:meth:`record` of several objects in one read txn; absent ids are left out."""

        def go(txn: lmdb.Transaction) -> dict[ObjectId, Record]:
            out = {}
            for oid in oids:
                value = txn.get(oid.raw, db=self._objects)
                if value is not None:
                    out[oid] = self._decode_record(oid, value)
            return out

        return self.read(go)

    def get(self, oid: ObjectId, *, verify: bool = False) -> bytes | None:
        """The object's raw bytes, or None if absent (a miss is a value, not an error)."""
        if verify:
            got = self.get_typed(oid, verify=True)
            return None if got is None else got[1]
        # _read_one, inlined: a call and a tuple are a tenth of a small get
        big = self._big_reads
        try:
            txn = self._env.begin(buffers=big)  # type: ignore[call-overload]
        except lmdb.Error:
            txn = self._begin(buffers=big)
        try:
            value = txn.get(oid.raw, None, self._objects)
            if value is None:
                return None
            self._big_reads = len(value) >= _BIG_READ
            if len(value) >= _HEAD_SIZE and not value[1] and value[0] in _TYPE_OF:
                return bytes(value[_HEAD_SIZE:]) if big else value[_HEAD_SIZE:]
            return self._unpack(txn, oid, value)[1]
        finally:
            txn.abort()

    def _read_one(self, oid: ObjectId) -> tuple[ObjType, bytes] | None:
        """One object in one read txn: the hot path, kept flat (bench/bench_store.py).

        A plain record is ``header + payload`` and Python copies a slice, so a read costs
        either two copies (LMDB's bytes, then the slice) or a zero-copy view plus one copy
        (``buffers=True``), which has a fixed cost of its own. The mode follows the size
        of the previous read on this handle: views for large objects, copies for small.
        """
        big = self._big_reads
        try:
            txn = self._env.begin(buffers=big)  # type: ignore[call-overload]
        except lmdb.Error:
            txn = self._begin(buffers=big)
        try:
            value = txn.get(oid.raw, None, self._objects)
            if value is None:
                return None
            self._big_reads = len(value) >= _BIG_READ
            if len(value) >= _HEAD_SIZE and not value[1]:
                otype = _TYPE_OF.get(value[0])
                if otype is not None:
                    body = value[_HEAD_SIZE:]
                    return otype, bytes(body) if big else body
            return self._unpack(txn, oid, value)
        finally:
            txn.abort()

    def get_typed(self, oid: ObjectId, *, verify: bool = False) -> tuple[ObjType, bytes] | None:
        got = self._read_one(oid)
        if got is not None and verify:
            actual = ObjectId.of(got[1])
            if actual != oid:
                raise CorruptObject(
                    f"object {oid.short()} is corrupt: its bytes hash to {actual.short()}",
                    oid=oid,
                    expected=oid,
                    actual=actual,
                )
        return got

    def get_many(self, oids: Iterable[ObjectId]) -> dict[ObjectId, tuple[ObjType, bytes]]:
        """Several objects in one read txn; absent ids are left out of the result."""

        txn = self._begin(buffers=True)
        try:
            out = {}
            for oid in oids:
                value = txn.get(oid.raw, db=self._objects)
                if value is not None:
                    out[oid] = self._unpack(txn, oid, value)
            return out
        finally:
            txn.abort()

    def get_many_frames(
        self, oids: Iterable[ObjectId]
    ) -> dict[ObjectId, tuple[ObjType, bytes, bytes | None]]:
        """Like :meth:`get_many`, each object with its stored zstd frame (None if the
        record is not one plain zstd payload), so a push can send it without compressing
        the bytes again (cas.pack.Framed)."""
        txn = self._begin(buffers=True)
        try:
            out: dict[ObjectId, tuple[ObjType, bytes, bytes | None]] = {}
            for oid in oids:
                value = txn.get(oid.raw, db=self._objects)
                if value is None:
                    continue
                otype, data = self._unpack(txn, oid, value)
                frame = bytes(value[_HEAD_SIZE:]) if value[1] == FLAG_ZSTD else None
                out[oid] = (otype, data, frame)
            return out
        finally:
            txn.abort()

    def require(self, oid: ObjectId, *, verify: bool = False) -> tuple[ObjType, bytes]:
        got = self.get_typed(oid, verify=verify)
        if got is None:
            raise ObjectNotFound(f"object {oid} not found", oid=oid)
        return got

    def iter_blob(self, oid: ObjectId) -> Iterator[bytes]:
        """Stream a blob's bytes chunk by chunk (one chunk in memory at a time)."""
        rec = self.record(oid)
        if rec is None:
            raise ObjectNotFound(f"object {oid} not found", oid=oid)
        if not rec.chunked:
            yield self.require(oid)[1]
            return
        value = self.read(lambda txn: bytes(txn.get(oid.raw, b"", db=self._objects)))
        for cid_raw, _size in _chunk_refs(oid, value[_HEAD.size :]):
            yield self.require(ObjectId(cid_raw))[1]

    def chunk_ids(self, oid: ObjectId) -> list[ObjectId]:
        """The chunk ids of a chunked blob ([] for a plain one)."""

        def go(txn: lmdb.Transaction) -> list[ObjectId]:
            value = txn.get(oid.raw, db=self._objects)
            if value is None:
                return []
            rec = self._decode_record(oid, value)
            if not rec.chunked:
                return []
            return [ObjectId(c) for c, _ in _chunk_refs(oid, value[_HEAD.size :])]

        return self.read(go)

    def iter_records(self) -> Iterator[Record]:
        """Every object's record, in id order (a snapshot taken at the call)."""
        batch: list[Record] = []
        start = b""
        while True:

            def go(txn: lmdb.Transaction, start: bytes = start) -> list[Record]:
                out: list[Record] = []
                cur = txn.cursor(db=self._objects)
                if not cur.set_range(start):
                    return out
                for key, value in cur:
                    if key == start:
                        continue
                    out.append(self._decode_record(ObjectId(bytes(key)), value))
                    if len(out) >= 10_000:
                        break
                return out

            batch = self.read(go)
            if not batch:
                return
            yield from batch
            start = batch[-1].oid.raw

    def iter_ids(self, batch: int = 10_000) -> Iterator[ObjectId]:
        """Every object id, in id order, read in batches of short read transactions.

        Unlike :meth:`iter_records` this never decodes a record, so a corrupt one does
        not stop the iteration (fsck relies on that).
        """
        start = b""
        while True:

            def go(txn: lmdb.Transaction, start: bytes = start) -> list[bytes]:
                out: list[bytes] = []
                cur = txn.cursor(db=self._objects)
                if not cur.set_range(start):
                    return out
                for key in cur.iternext(keys=True, values=False):
                    key = bytes(key)
                    if key == start:
                        continue
                    out.append(key)
                    if len(out) >= batch:
                        break
                return out

            keys = self.read(go)
            if not keys:
                return
            for key in keys:
                if len(key) == DIGEST_SIZE:
                    yield ObjectId(key)
            start = keys[-1]

    def resolve_prefix(self, prefix: str, limit: int = 2) -> list[ObjectId]:
        """Ids that start with the hex ``prefix`` (at most ``limit``)."""
        prefix = prefix.lower()
        even = prefix[: len(prefix) // 2 * 2]
        start = bytes.fromhex(even)

        def go(txn: lmdb.Transaction) -> list[ObjectId]:
            out: list[ObjectId] = []
            cur = txn.cursor(db=self._objects)
            if not cur.set_range(start):
                return out
            for key in cur.iternext(keys=True, values=False):
                key = bytes(key)
                if not key.startswith(start):
                    break
                if key.hex().startswith(prefix):
                    out.append(ObjectId(key))
                    if len(out) >= limit:
                        break
            return out

        return self.read(go)

    def resolve_unique(self, prefix: str) -> ObjectId:
        found = self.resolve_prefix(prefix, limit=2)
        if not found:
            raise ObjectNotFound(f"no object matches {prefix!r}")
        if len(found) > 1:
            raise AmbiguousId(
                f"id prefix {prefix!r} is ambiguous", hint="give more characters of the id"
            )
        return found[0]

    # -- objects: writes -----------------------------------------------------------------

    def put_many(self, items: Iterable[tuple[ObjType, bytes]]) -> list[ObjectId]:
        """Store objects in one transaction; existing ones are left as they are.

        Ids are computed here from the bytes, so a caller cannot store under a wrong id.
        Callers keep the closure order (children before parents) within ``items``. Large
        blobs are split into chunks written before the blob's record; a batch larger than
        STREAM_TXN_BYTES is written in several transactions, in order.
        """
        ids: list[ObjectId] = []
        batch = _Batch(self)
        of, head = ObjectId.of, _HEAD.pack
        for otype, data in items:
            n = len(data)
            if n < COMPRESS_MIN:  # the common small case, flat (as in _record, _Batch.add)
                oid = of(data)
                batch.records.append((oid, otype, head(otype, 0, n), data))
                batch.size += n
                if batch.size >= STREAM_TXN_BYTES:
                    batch.flush()
            elif otype == ObjType.BLOB and n > CHUNK_THRESHOLD:
                view = memoryview(data)
                chunks = [view[i : i + CHUNK_SIZE] for i in range(0, len(view), CHUNK_SIZE)]
                oid = ObjectId.of(data)
                refs = []
                for chunk in chunks:
                    cid = ObjectId.of(chunk)
                    refs.append(_CHUNK_REF.pack(cid.raw, len(chunk)))
                    batch.add(cid, ObjType.CHUNK, self._record(ObjType.CHUNK, chunk))
                batch.add(oid, ObjType.BLOB, _chunked_record(len(data), refs))
            else:
                oid = ObjectId.of(data)
                batch.add(oid, otype, self._record(otype, data))
            ids.append(oid)
        batch.flush()
        return ids

    def put_verified(
        self, items: Iterable[tuple[ObjectId, ObjType, bytes | memoryview]]
    ) -> list[ObjectId]:
        """Store objects whose ids the caller has already checked against their bytes.

        Records are encoded (and compressed) before the write transaction starts, so the
        writer lock is held only for the puts.
        """
        records = [(oid, otype, self._record(otype, data)) for oid, otype, data in items]
        if records:
            self._write_records(records)
        return [oid for oid, _, _ in records]

    def encode_verified(
        self, items: Iterable[tuple[ObjectId, ObjType, bytes | memoryview, bytes | None]]
    ) -> list[tuple[ObjectId, ObjType, bytes]]:
        """Records for :meth:`put_encoded`, made without touching LMDB (so outside any lock).

        Each item is ``(id, type, bytes, packed)``: the caller has checked the id against
        the bytes, and ``packed``, when not None, is a zstd frame that the caller has
        checked decompresses to them (a pack frame as sent, see cas.pack.decode_frames);
        it is stored as it is. Other payloads are compressed at zstd level 1, not
        ZSTD_LEVEL: about 1.4x faster at a near-equal ratio on compiled artifacts, which
        matters where bytes arrive at network speed (a server ingesting packs).
        """
        out = []
        for oid, otype, data, packed in items:
            n = len(data)
            if packed is not None and n >= COMPRESS_MIN and len(packed) <= n * COMPRESS_GAIN:
                out.append((oid, otype, b"".join((_HEAD.pack(otype, FLAG_ZSTD, n), packed))))
            elif n < COMPRESS_MIN:
                out.append((oid, otype, _HEAD.pack(otype, 0, n) + data))
            else:
                flags, payload = self._encode_payload(data, fast=True)
                out.append((oid, otype, b"".join((_HEAD.pack(otype, flags, n), payload))))
        return out

    def encode_frame(
        self, oid: ObjectId, otype: ObjType, raw_size: int, frame: bytes
    ) -> tuple[ObjectId, ObjType, bytes]:
        """A record for :meth:`put_encoded` holding ``frame`` as it is: a zstd frame the
        caller has checked decompresses to exactly ``raw_size`` bytes hashing to ``oid``
        (cas.pack.Frame.verify), so the bytes need never be held whole."""
        return oid, otype, b"".join((_HEAD.pack(otype, FLAG_ZSTD, raw_size), frame))

    def put_encoded(self, records: list[tuple[ObjectId, ObjType, bytes]]) -> list[ObjectId]:
        """Store records from :meth:`encode_verified` in one transaction, in order."""
        if records:
            self._write_records(records)
        return [oid for oid, _, _ in records]

    def _write_records(self, records: list[tuple[ObjectId, ObjType, bytes]]) -> None:
        """Put encoded records in one write transaction, in order."""
        self._write_parts([(oid, otype, b"", rec) for oid, otype, rec in records])

    def _write_parts(self, parts: list[tuple[ObjectId, ObjType, bytes, bytes | memoryview]]) -> None:
        """Put records given as (id, type, head, body) in one write transaction, in order.

        The record is ``head + body`` (``head`` empty: ``body`` is the whole record). A
        small plain record is joined here, just before its put, rather than when batched:
        a batch of fresh 1 KiB joins costs more (new memory) than the join itself.
        """
        # Every write, new or not, stamps the object's time: gc keeps what was written
        # within its grace period, so a writer that re-puts an old unreachable object
        # before referencing it is safe from a racing gc. One log record for the batch.
        written = b"".join([oid.raw for oid, _, _, _ in parts])

        def go(txn: lmdb.Transaction) -> None:
            objects = self._objects
            # putmulti: one C loop (a generator, so each join is freed after its put)
            _, added = txn.cursor(db=objects).putmulti(
                ((oid.raw, head + body if head else body) for oid, _, head, body in parts),
                overwrite=False,
            )
            self._stamp(txn, written)
            if added == len(parts):
                return
            # Immutability: existing content is a no-op, except that bytes first stored
            # as a plain blob may gain their structured type. (A record just added has
            # its own type, so checking every structured one is enough.)
            for oid, otype, head, body in parts:
                if otype in codec.STRUCTURED:
                    key = oid.raw
                    if txn.get(key, b"\0", db=objects)[0] == ObjType.BLOB:
                        txn.put(key, head + body if head else body, db=objects)

        self.write(go)

    def put(self, data: bytes, otype: ObjType = ObjType.BLOB) -> ObjectId:
        return self.put_many([(otype, data)])[0]

    def put_object(self, obj: Any) -> ObjectId:
        """Store a structured object (Env, Commit, Tag, ManifestNode)."""
        return self.put(obj.encode(), obj.TYPE)

    def put_stream(self, stream: BinaryIO, *, progress: Callable[[int], None] | None = None) -> ObjectId:
        """Store a blob read from ``stream``, in chunks if large; returns its id.

        Chunks are written in transactions of about STREAM_TXN_BYTES; the blob's own
        record is written with the last of them, so a crash leaves only unreferenced
        chunks (gc removes them) and never a blob whose chunks are missing.
        """
        whole = Hasher()
        first = _read_full(stream, CHUNK_SIZE)
        whole.update(first)
        if progress:
            progress(len(first))
        nxt = _read_full(stream, CHUNK_SIZE)
        if not nxt:
            return self.put_verified([(ObjectId.of(first), ObjType.BLOB, first)])[0]
        refs: list[bytes] = []
        batch = _Batch(self)
        chunk = first
        while chunk:
            cid = ObjectId.of(chunk)
            refs.append(_CHUNK_REF.pack(cid.raw, len(chunk)))
            batch.add(cid, ObjType.CHUNK, self._record(ObjType.CHUNK, chunk))
            chunk = nxt
            if chunk:
                whole.update(chunk)
                if progress:
                    progress(len(chunk))
                nxt = _read_full(stream, CHUNK_SIZE)
        oid = whole.digest()
        batch.add(oid, ObjType.BLOB, _chunked_record(whole.size, refs))
        batch.flush()
        return oid

    def put_file(self, path: str | os.PathLike[str], **kw: Any) -> ObjectId:
        with open(path, "rb") as f:
            return self.put_stream(f, **kw)

    def delete(self, oids: Iterable[ObjectId]) -> int:
        """Remove objects (gc only). Returns how many were present."""
        ids = list(oids)

        def go(txn: lmdb.Transaction) -> int:
            self._forget(txn, {o.raw for o in ids})
            return sum(1 for o in ids if txn.delete(o.raw, db=self._objects))

        return self.write(go)

    # -- refs ----------------------------------------------------------------------------

    def get_ref(self, name: str) -> ObjectId | None:
        value = self.read(lambda txn: txn.get(name.encode(), db=self._refs))
        return None if value is None else ObjectId(bytes(value))

    def list_refs(self, prefix: str = "refs/") -> dict[str, ObjectId]:
        start = prefix.encode()

        def go(txn: lmdb.Transaction) -> dict[str, ObjectId]:
            out: dict[str, ObjectId] = {}
            cur = txn.cursor(db=self._refs)
            if not cur.set_range(start):
                return out
            for key, value in cur:
                if not bytes(key).startswith(start):
                    break
                out[bytes(key).decode()] = ObjectId(bytes(value))
            return out

        return self.read(go)

    def set_ref(
        self,
        name: str,
        new: ObjectId | None,
        *,
        expected: ObjectId | None | object = ANY,
        who: str = "",
        message: str = "",
    ) -> ObjectId | None:
        """Compare-and-swap ``name`` from ``expected`` to ``new`` (None deletes).

        ``expected=None`` means "must not exist"; ``ANY`` skips the comparison. The target
        must already be stored (closure). Logs the change in the reflog. Returns the old
        value.
        """
        key = name.encode()
        now = self.clock()

        def go(txn: lmdb.Transaction) -> ObjectId | None:
            raw = txn.get(key, db=self._refs)
            old = None if raw is None else ObjectId(bytes(raw))
            if expected is not ANY and old != expected:
                raise RefConflict(
                    f"ref {name} changed: expected {_show(expected)}, found {_show(old)}",
                    hint="someone else updated it; fetch or pull, then retry",
                    ref=name,
                    expected=expected,
                    actual=old,
                )
            if new is not None:
                self._check_ref_target(txn, name, new)
            if old == new:
                return old
            if new is None:
                txn.delete(key, db=self._refs)
            else:
                txn.put(key, new.raw, db=self._refs)
            self._log(txn, name, old, new, now, who, message)
            return old

        return self.write(go)

    def _check_ref_target(self, txn: lmdb.Transaction, name: str, new: ObjectId) -> None:
        """A ref names a stored commit or tag, nothing else (docs/format.md, invariant 1)."""
        target = txn.get(new.raw, db=self._objects)
        if target is None:
            raise ObjectNotFound(f"cannot point {name} at {new.short()}: object not in store", oid=new)
        code = int(target[0])
        if code not in _REF_TARGETS:
            label = _TYPE_OF[code].label if code in _TYPE_OF else "unknown object"
            raise BadRefTarget(f"cannot point {name} at {new.short()}: a {label}, not a commit or tag", oid=new)

    def _log(
        self,
        txn: lmdb.Transaction,
        name: str,
        old: ObjectId | None,
        new: ObjectId | None,
        when: float,
        who: str,
        message: str,
    ) -> None:
        prefix = name.encode() + b"\x00"
        cur = txn.cursor(db=self._reflog)
        seq = 0
        if cur.set_range(prefix + b"\xff" * 8):
            if cur.prev() and bytes(cur.key()).startswith(prefix):
                seq = struct.unpack(">Q", bytes(cur.key())[len(prefix) :])[0] + 1
        elif cur.last() and bytes(cur.key()).startswith(prefix):
            seq = struct.unpack(">Q", bytes(cur.key())[len(prefix) :])[0] + 1
        value = codec.pack(
            [old.raw if old else None, new.raw if new else None, when, who, message]
        )
        txn.put(prefix + struct.pack(">Q", seq), value, db=self._reflog)

    def reflog(self, name: str | None = None) -> list[ReflogEntry]:
        """Reflog entries, oldest first, for one ref or for all refs."""
        prefix = name.encode() + b"\x00" if name else b""

        def go(txn: lmdb.Transaction) -> list[ReflogEntry]:
            out: list[ReflogEntry] = []
            cur = txn.cursor(db=self._reflog)
            if not cur.set_range(prefix):
                return out
            for key, value in cur:
                key = bytes(key)
                if not key.startswith(prefix):
                    break
                ref = key[:-9].decode()
                old, new, when, who, msg = codec.unpack(value)
                out.append(
                    ReflogEntry(
                        ref,
                        ObjectId(old) if old else None,
                        ObjectId(new) if new else None,
                        when,
                        who,
                        msg,
                    )
                )
            return out

        return self.read(go)

    def expire_reflog(self, before: float) -> int:
        """Drop reflog entries older than ``before`` (epoch seconds). Returns the count."""

        def go(txn: lmdb.Transaction) -> int:
            cur = txn.cursor(db=self._reflog)
            doomed = [bytes(k) for k, v in cur if codec.unpack(v)[2] < before]
            for k in doomed:
                txn.delete(k, db=self._reflog)
            return len(doomed)

        return self.write(go)

    # -- staging (quarantine for transfers) ------------------------------------------------
    #
    # A pull walks a remote top-down (commit, then manifest nodes) but closure wants
    # objects stored bottom-up. Fetched structured objects wait here, verified, until
    # everything they reference is present; then ``promote`` moves them into ``objects``
    # in one transaction. Staged objects survive a dropped connection, so a resumed
    # transfer does not fetch them again.

    def stage_put(self, items: Iterable[tuple[ObjectId, ObjType, bytes]]) -> None:
        records = [(oid, self._record(otype, data)) for oid, otype, data in items]

        def go(txn: lmdb.Transaction) -> None:
            for oid, rec in records:
                txn.put(oid.raw, rec, db=self._stage)
            self._stamp(txn, b"".join(oid.raw for oid, _ in records))

        self.write(go)

    def stage_get(self, oid: ObjectId) -> tuple[ObjType, bytes] | None:
        def go(txn: lmdb.Transaction) -> tuple[ObjType, bytes] | None:
            value = txn.get(oid.raw, db=self._stage)
            if value is None:
                return None
            rec = self._decode_record(oid, value)
            return rec.type, self._payload(txn, oid, value)

        return self.read(go)

    def promote(self, oids: Iterable[ObjectId]) -> int:
        """Move staged objects into the store, in the given (closure) order."""
        ids = list(oids)

        def go(txn: lmdb.Transaction) -> int:
            moved = 0
            stamped = []
            for oid in ids:
                value = txn.get(oid.raw, db=self._stage)
                if value is None:
                    continue
                stamped.append(oid.raw)
                if txn.get(oid.raw, db=self._objects) is None:
                    txn.put(oid.raw, bytes(value), db=self._objects)
                    moved += 1
                txn.delete(oid.raw, db=self._stage)
            self._stamp(txn, b"".join(stamped))
            return moved

        return self.write(go)

    def stage_clear(self) -> int:
        def go(txn: lmdb.Transaction) -> int:
            n = txn.stat(self._stage)["entries"]
            self._forget(  # a write time goes with what it dates
                txn,
                {
                    bytes(key)
                    for key in txn.cursor(db=self._stage).iternext(keys=True, values=False)
                    if txn.get(key, db=self._objects) is None
                },
            )
            txn.drop(self._stage, delete=False)
            return int(n)

        return self.write(go)

    # -- maintenance (gc, fsck) ------------------------------------------------------------
    #
    # ``otime`` records when each id was last written, to the objects db or to the stage:
    # a log with records per write transaction (see _LOG_KEY). It is gc's notion of
    # "young": like git's mtimes, it protects objects a concurrent writer just stored
    # from a sweep that did not see the ref that will name them. An id's time is the
    # latest record that names it; gc's prune_times drops superseded and dead entries.

    def _stamp(self, txn: lmdb.Transaction, ids: bytes) -> None:
        """Log ``ids`` (raw ids, concatenated) as written now, in ``txn``."""
        if not ids:
            return
        otime = self._otime
        prefix = _LOG_KEY.pack(int(self.clock()), txn.id(), 0)[:-4]
        part = 0
        if txn.get(prefix + bytes(4), db=otime) is not None:
            # a second stamp in one txn: go on after the txn's last part
            cur = txn.cursor(db=otime)
            cur.set_range(prefix)
            for key in cur.iternext(keys=True, values=False):
                if not bytes(key).startswith(prefix):
                    break
                part = _LOG_KEY.unpack(bytes(key))[2] + 1
        put = txn.put
        for i in range(0, len(ids), _LOG_PART):
            put(prefix + _PART.pack(part), ids[i : i + _LOG_PART], db=otime)
            part += 1

    def _times(self, txn: lmdb.Transaction) -> dict[bytes, int]:
        """Every recorded write time (raw id -> latest epoch seconds), from ``otime``."""
        log: dict[bytes, int] = {}
        legacy: dict[bytes, int] = {}
        for key, value in txn.cursor(db=self._otime):
            if len(key) == DIGEST_SIZE:
                legacy[bytes(key)] = _TIME.unpack(bytes(value))[0]
                continue
            when = _LOG_KEY.unpack(bytes(key))[0]
            value = bytes(value)
            # records come oldest first, so a later one overrides
            log.update(dict.fromkeys(_split_ids(value), when))
        for raw, when in legacy.items():
            if log.get(raw, -1) < when:
                log[raw] = when
        return log

    def _forget(self, txn: lmdb.Transaction, doomed: set[bytes]) -> None:
        """Drop every write time of the ids in ``doomed``, in ``txn``."""
        if not doomed:
            return
        changes: list[tuple[bytes, bytes]] = []
        for key, value in txn.cursor(db=self._otime):
            key = bytes(key)
            if len(key) == DIGEST_SIZE:
                if key in doomed:
                    changes.append((key, b""))
                continue
            ids = _split_ids(bytes(value))
            keep = [raw for raw in ids if raw not in doomed]
            if len(keep) != len(ids):
                changes.append((key, b"".join(keep)))
        for key, value in changes:
            if value:
                txn.put(key, value, db=self._otime)
            else:
                txn.delete(key, db=self._otime)

    def object_times(self) -> dict[ObjectId, int]:
        """Every recorded write time (id -> epoch seconds), objects and staged alike."""
        return {ObjectId(raw): when for raw, when in self.read(self._times).items()}

    def object_time(self, oid: ObjectId) -> int | None:
        """When ``oid`` was last written (epoch seconds), or None if never recorded."""
        raw = oid.raw

        def go(txn: lmdb.Transaction) -> int | None:
            old = txn.get(raw, db=self._otime)
            found = None if old is None else int(_TIME.unpack(bytes(old))[0])
            cur = txn.cursor(db=self._otime)
            if not cur.last():
                return found
            for key, value in cur.iterprev():  # newest first: the first hit is the latest
                if len(key) != DIGEST_SIZE and _holds(bytes(value), raw):
                    when = int(_LOG_KEY.unpack(bytes(key))[0])
                    return when if found is None else max(when, found)
            return found

        return self.read(go)

    def iter_stage(self) -> Iterator[tuple[Record, int | None]]:
        """Every staged object's record with its write time (a snapshot)."""

        def go(txn: lmdb.Transaction) -> list[tuple[Record, int | None]]:
            times = self._times(txn)
            out = []
            for key, value in txn.cursor(db=self._stage):
                oid = ObjectId(bytes(key))
                out.append((self._decode_record(oid, value), times.get(oid.raw)))
            return out

        yield from self.read(go)

    def stage_expire(self, before: float) -> int:
        """Drop staged objects written before ``before`` (or of unknown age)."""

        def go(txn: lmdb.Transaction) -> int:
            times = self._times(txn)
            doomed = []
            for key in txn.cursor(db=self._stage).iternext(keys=True, values=False):
                key = bytes(key)
                when = times.get(key)
                if when is None or when < before:
                    doomed.append(key)
            for key in doomed:
                txn.delete(key, db=self._stage)
            self._forget(txn, {k for k in doomed if txn.get(k, db=self._objects) is None})
            return len(doomed)

        return self.write(go)

    def sweep(self, oids: Iterable[ObjectId], *, before: float, dry_run: bool = False) -> list[Record]:
        """Delete the given objects that were last written before ``before``, in one txn.

        Write times are re-read inside the write transaction, so an object re-written
        (freshened) since the caller decided it was garbage survives. An object with no
        recorded time is stamped now and kept: unknown age is never old. Returns the
        records of the objects deleted (or, with ``dry_run``, that would be).
        """
        ids = list(oids)

        def go(txn: lmdb.Transaction) -> list[Record]:
            times = self._times(txn)
            gone = []
            unknown = []
            forget = set()
            for oid in ids:
                value = txn.get(oid.raw, db=self._objects)
                if value is None:
                    continue
                when = times.get(oid.raw)
                if when is None:
                    unknown.append(oid.raw)
                    continue
                if when >= before:
                    continue
                gone.append(self._decode_record(oid, value))
                if not dry_run:
                    txn.delete(oid.raw, db=self._objects)
                    if txn.get(oid.raw, db=self._stage) is None:
                        forget.add(oid.raw)
            if not dry_run:
                self._stamp(txn, b"".join(unknown))
                self._forget(txn, forget)
            return gone

        return self.read(go) if dry_run else self.write(go)

    def parse_record(self, oid: ObjectId, value: bytes) -> Record:
        """Decode a record header (raises CorruptObject if it is malformed)."""
        return self._decode_record(oid, value)

    def prune_times(self) -> int:
        """Compact the write-time log; returns how many ids' times were dropped.

        Drops the times of ids neither stored nor staged (and superseded entries: an id
        keeps only its latest time), and folds per-object records of earlier versions
        into the log. One transaction, so a crash leaves the log as it was.
        """

        def go(txn: lmdb.Transaction) -> int:
            otime = self._otime
            records: dict[bytes, list[bytes]] = {}
            latest: dict[bytes, bytes] = {}
            legacy: list[bytes] = []
            folded: set[bytes] = set()
            for key, value in txn.cursor(db=otime):
                key = bytes(key)
                if len(key) == DIGEST_SIZE:
                    legacy.append(key)
                    lkey = _LOG_KEY.pack(_TIME.unpack(bytes(value))[0], 0, 0)
                    folded.add(lkey)
                    records.setdefault(lkey, []).append(key)
                else:
                    records.setdefault(key, []).extend(_split_ids(bytes(value)))
            for key in sorted(records):  # oldest first: a later record overrides
                latest.update(dict.fromkeys(records[key], key))
            dead = {
                raw
                for raw in latest
                if txn.get(raw, db=self._objects) is None and txn.get(raw, db=self._stage) is None
            }
            for key in legacy:
                txn.delete(key, db=otime)
            for key, ids in records.items():
                keep = b"".join(
                    raw for raw in dict.fromkeys(ids) if latest[raw] == key and raw not in dead
                )
                if len(keep) == len(ids) * DIGEST_SIZE and key not in folded:
                    continue  # unchanged
                if keep:
                    txn.put(key, keep, db=otime)
                else:
                    txn.delete(key, db=otime)
            return len(dead)

        return self.write(go)

    def stamp_missing(self, oids: Iterable[ObjectId]) -> int:
        """Give objects with no recorded write time the time now (their age starts now)."""
        ids = list(oids)

        def go(txn: lmdb.Transaction) -> int:
            times = self._times(txn)
            missing = [
                oid.raw
                for oid in ids
                if oid.raw not in times and txn.get(oid.raw, db=self._objects) is not None
            ]
            self._stamp(txn, b"".join(dict.fromkeys(missing)))
            return len(set(missing))

        return self.write(go) if ids else 0

    def raw_record(self, oid: ObjectId) -> bytes | None:
        """The stored record bytes of ``oid`` (header + payload), for fsck."""
        value = self.read(lambda txn: txn.get(oid.raw, db=self._objects))
        return None if value is None else bytes(value)

    def decode_payload(self, oid: ObjectId, value: bytes) -> bytes:
        """The object's bytes from a record returned by :meth:`raw_record` (chunks joined)."""
        return self.read(lambda txn: self._payload(txn, oid, value))

    # -- meta ----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        value = self.read(lambda txn: txn.get(key.encode(), db=self._meta))
        return None if value is None else bytes(value).decode()

    def set_meta(self, key: str, value: str | None) -> None:
        def go(txn: lmdb.Transaction) -> None:
            if value is None:
                txn.delete(key.encode(), db=self._meta)
            else:
                txn.put(key.encode(), value.encode(), db=self._meta)

        self.write(go)

    def info(self) -> dict[str, int]:
        """LMDB facts: map size, pages used, entries per named database."""
        info = self._env.info()
        stat = self._env.stat()

        def go(txn: lmdb.Transaction) -> dict[str, int]:
            return {
                name: txn.stat(db)["entries"]
                for name, db in (
                    ("objects", self._objects),
                    ("refs", self._refs),
                    ("reflog", self._reflog),
                )
            }

        counts = self.read(go)
        used = (info["last_pgno"] + 1) * stat["psize"]
        return {"map_size": info["map_size"], "used_bytes": used, **counts}

    def sync(self) -> None:
        self._env.sync(True)


def _show(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, ObjectId):
        return value.short()
    return "any"


def _chunk_refs(oid: ObjectId, body: bytes | memoryview) -> list[tuple[bytes, int]]:
    """The (chunk id, size) list of a chunked blob's record body."""
    if len(body) % _CHUNK_REF.size:
        raise CorruptObject(f"object {oid.short()} has a truncated chunk list", oid=oid)
    return list(_CHUNK_REF.iter_unpack(body))


def _split_ids(value: bytes) -> list[bytes]:
    """The 32-byte ids of a write-time log record."""
    return [value[i : i + DIGEST_SIZE] for i in range(0, len(value), DIGEST_SIZE)]


def _holds(value: bytes, raw: bytes) -> bool:
    """True if the log record ``value`` names the id ``raw`` (at an id boundary)."""
    i = value.find(raw)
    while i >= 0:
        if i % DIGEST_SIZE == 0:
            return True
        i = value.find(raw, i + 1)
    return False


def _chunked_record(size: int, refs: list[bytes]) -> bytes:
    return _HEAD.pack(int(ObjType.BLOB), FLAG_CHUNKED, size) + b"".join(refs)


class _Batch:
    """Encoded records waiting for a write txn, flushed every STREAM_TXN_BYTES in order.

    Entries are (id, type, head, body) as Store._write_parts takes them; put_many appends
    small plain ones (head = record header, body = the bytes) itself.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.records: list[tuple[ObjectId, ObjType, bytes, bytes | memoryview]] = []
        self.size = 0

    def add(self, oid: ObjectId, otype: ObjType, record: bytes) -> None:
        self.records.append((oid, otype, b"", record))
        self.size += len(record)
        if self.size >= STREAM_TXN_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.records:
            self.store._write_parts(self.records)
        self.records, self.size = [], 0


#: Record type codes a ref may point at (docs/format.md, invariant 1).
_REF_TARGETS = frozenset({int(ObjType.COMMIT), int(ObjType.TAG)})


def _read_full(stream: BinaryIO, n: int) -> bytes:
    parts = []
    left = n
    while left:
        got = stream.read(left)
        if not got:
            break
        parts.append(got)
        left -= len(got)
    return b"".join(parts)


__all__ = ["ANY", "DIGEST_SIZE", "Record", "ReflogEntry", "Store"]
