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
    CorruptObject,
    FormatVersionError,
    ObjectNotFound,
    RefConflict,
    StoreError,
    StoreFull,
    StoreNotFound,
)

STORE_FORMAT = 1
INITIAL_MAP_SIZE = 64 << 20
MAX_MAP_SIZE = 1 << 44
CHUNK_SIZE = 4 << 20
#: Blobs larger than this are split into CHUNK_SIZE chunks.
CHUNK_THRESHOLD = CHUNK_SIZE
#: Payloads smaller than this are never compressed: the frame costs more than it saves.
COMPRESS_MIN = 256
#: Store compressed only when it saves at least this fraction.
COMPRESS_GAIN = 0.9
#: Bytes probed to decide whether a large payload is worth compressing.
COMPRESS_PROBE = 64 << 10
ZSTD_LEVEL = 3
#: Flush streamed chunks in transactions of about this many bytes.
STREAM_TXN_BYTES = 64 << 20

FLAG_ZSTD = 1
FLAG_CHUNKED = 2
_HEAD = struct.Struct("<BBQ")  # type, flags, raw size
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


def _translate(exc: BaseException, path: str) -> Exception:
    if _is_enospc(exc):
        return StoreFull(
            f"no space left on the disk holding the store at {path}",
            hint="free disk space or run `cas gc`; the store is unchanged",
            path=path,
        )
    return StoreError(f"store at {path}: {exc}", path=path)


class Store:
    """A content-addressed object store with refs, in one LMDB environment."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        self.path = Path(path)
        self._key = ""
        self._zc = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        self._zd = zstandard.ZstdDecompressor()
        self._open(create)

    # -- life cycle ---------------------------------------------------------------------

    @classmethod
    def init(cls, path: str | os.PathLike[str]) -> Store:
        """Create a store at ``path`` (or open the one already there)."""
        return cls(path, create=True)

    def _open(self, create: bool) -> None:
        data = self.path / "data.mdb"
        if not data.exists():
            if not create:
                raise StoreNotFound(
                    f"no cas store at {self.path}",
                    hint="run `cas init` or pass --store / set CAS_DIR",
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
        self._check_format()

    def _open_env(self, key: str) -> tuple[lmdb.Environment, dict[str, Any]]:
        try:
            env = lmdb.open(
                key,
                map_size=INITIAL_MAP_SIZE,
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
                for name in ("objects", "refs", "reflog", "meta", "stage"):
                    dbs[name] = env.open_db(name.encode(), txn=txn)
                meta = dbs["meta"]
                if txn.get(b"format", db=meta) is None:
                    txn.put(b"format", str(STORE_FORMAT).encode(), db=meta)
                    txn.put(b"created", str(int(time.time())).encode(), db=meta)
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

    def _begin(self, write: bool = False) -> lmdb.Transaction:
        for _ in range(5):
            try:
                return self._env.begin(write=write)
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

    def _encode_payload(self, data: bytes | memoryview) -> tuple[int, bytes | memoryview]:
        n = len(data)
        if n < COMPRESS_MIN:
            return 0, data
        if n > COMPRESS_PROBE * 2:
            probe = self._zc.compress(data[:COMPRESS_PROBE])
            if len(probe) > COMPRESS_PROBE * COMPRESS_GAIN:
                return 0, data
        packed = self._zc.compress(data)
        if len(packed) <= n * COMPRESS_GAIN:
            return FLAG_ZSTD, packed
        return 0, data

    def _record(self, otype: ObjType, data: bytes | memoryview) -> bytes:
        flags, payload = self._encode_payload(data)
        return _HEAD.pack(int(otype), flags, len(data)) + bytes(payload)

    def _decode_record(self, oid: ObjectId, value: bytes | memoryview) -> Record:
        if len(value) < _HEAD.size:
            raise CorruptObject(f"object {oid.short()} has a truncated record", oid=oid)
        t, flags, raw = _HEAD.unpack_from(value)
        try:
            otype = ObjType(t)
        except ValueError as exc:
            raise CorruptObject(f"object {oid.short()} has unknown type {t}", oid=oid) from exc
        return Record(oid, otype, flags, raw, len(value))

    def _payload(self, txn: lmdb.Transaction, oid: ObjectId, value: bytes) -> bytes:
        rec = self._decode_record(oid, value)
        body = value[_HEAD.size :]
        if rec.chunked:
            return b"".join(self._iter_chunks(txn, oid, body))
        if rec.compressed:
            try:
                return self._zd.decompress(body, max_output_size=rec.raw_size)
            except zstandard.ZstdError as exc:
                raise CorruptObject(f"object {oid.short()}: bad zstd payload", oid=oid) from exc
        return bytes(body)

    def _iter_chunks(self, txn: lmdb.Transaction, oid: ObjectId, body: bytes) -> Iterator[bytes]:
        for cid_raw, size in _CHUNK_REF.iter_unpack(body):
            value = txn.get(cid_raw, db=self._objects)
            if value is None:
                raise CorruptObject(
                    f"object {oid.short()} is missing chunk {cid_raw.hex()[:12]}", oid=oid
                )
            data = self._payload(txn, ObjectId(cid_raw), value)
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

    def get(self, oid: ObjectId, *, verify: bool = False) -> bytes | None:
        """The object's raw bytes, or None if absent (a miss is a value, not an error)."""
        got = self.get_typed(oid, verify=verify)
        return None if got is None else got[1]

    def get_typed(self, oid: ObjectId, *, verify: bool = False) -> tuple[ObjType, bytes] | None:
        def go(txn: lmdb.Transaction) -> tuple[ObjType, bytes] | None:
            value = txn.get(oid.raw, db=self._objects)
            if value is None:
                return None
            rec = self._decode_record(oid, value)
            return rec.type, self._payload(txn, oid, value)

        got = self.read(go)
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

        def go(txn: lmdb.Transaction) -> dict[ObjectId, tuple[ObjType, bytes]]:
            out = {}
            for oid in oids:
                value = txn.get(oid.raw, db=self._objects)
                if value is not None:
                    rec = self._decode_record(oid, value)
                    out[oid] = (rec.type, self._payload(txn, oid, value))
            return out

        return self.read(go)

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
        value = self.read(lambda txn: bytes(txn.get(oid.raw, db=self._objects)))
        for cid_raw, _size in _CHUNK_REF.iter_unpack(value[_HEAD.size :]):
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
            return [ObjectId(c) for c, _ in _CHUNK_REF.iter_unpack(value[_HEAD.size :])]

        return self.read(go)

    def iter_records(self) -> Iterator[Record]:
        """Every object's record, in id order (a snapshot taken at the call)."""
        batch: list[Record] = []
        start = b""
        while True:

            def go(txn: lmdb.Transaction) -> list[Record]:
                out = []
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
        Callers keep the closure order (children before parents) within ``items``.
        """
        ids: list[ObjectId] = []
        small: list[tuple[ObjectId, ObjType, bytes | memoryview]] = []
        for otype, data in items:
            if otype == ObjType.BLOB and len(data) > CHUNK_THRESHOLD:
                ids.append(self.put_stream(_BytesReader(data)))
            else:
                oid = ObjectId.of(data)
                small.append((oid, otype, data))
                ids.append(oid)
        self.put_verified(small)
        return ids

    def put_verified(
        self, items: Iterable[tuple[ObjectId, ObjType, bytes | memoryview]]
    ) -> list[ObjectId]:
        """Store objects whose ids the caller has already checked against their bytes.

        Records are encoded (and compressed) before the write transaction starts, so the
        writer lock is held only for the puts.
        """
        records = [(oid, otype, self._record(otype, data)) for oid, otype, data in items]
        if not records:
            return []

        def go(txn: lmdb.Transaction) -> None:
            for oid, otype, rec in records:
                old = txn.get(oid.raw, db=self._objects)
                if old is not None:
                    # Immutability: existing content is a no-op, except that bytes first
                    # stored as a plain blob may gain their structured type.
                    if old[0] == ObjType.BLOB and otype in codec.STRUCTURED:
                        txn.put(oid.raw, rec, db=self._objects)
                    continue
                txn.put(oid.raw, rec, db=self._objects)

        self.write(go)
        return [oid for oid, _, _ in records]

    def put(self, data: bytes, otype: ObjType = ObjType.BLOB) -> ObjectId:
        return self.put_many([(otype, data)])[0]

    def put_object(self, obj: Any) -> ObjectId:
        """Store a structured object (Env, Commit, Tag, ManifestNode)."""
        return self.put(obj.encode(), obj.TYPE)

    def put_stream(self, stream: BinaryIO, *, progress: Callable[[int], None] | None = None) -> ObjectId:
        """Store a blob read from ``stream``, in chunks if large; returns its id.

        Chunks are written in transactions of about STREAM_TXN_BYTES; the blob's own
        record is written last, so a crash leaves only unreferenced chunks (gc removes
        them) and never a blob whose chunks are missing.
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
        pending: list[tuple[ObjectId, ObjType, bytes]] = []
        pending_bytes = 0
        chunk = first
        while chunk:
            cid = ObjectId.of(chunk)
            refs.append(_CHUNK_REF.pack(cid.raw, len(chunk)))
            pending.append((cid, ObjType.CHUNK, chunk))
            pending_bytes += len(chunk)
            if pending_bytes >= STREAM_TXN_BYTES:
                self.put_verified(pending)
                pending, pending_bytes = [], 0
            chunk = nxt
            if chunk:
                whole.update(chunk)
                if progress:
                    progress(len(chunk))
                nxt = _read_full(stream, CHUNK_SIZE)
        if pending:
            self.put_verified(pending)
        oid = whole.digest()
        body = b"".join(refs)
        head = _HEAD.pack(int(ObjType.BLOB), FLAG_CHUNKED, whole.size)

        def go(txn: lmdb.Transaction) -> None:
            if txn.get(oid.raw, db=self._objects) is None:
                txn.put(oid.raw, head + body, db=self._objects)

        self.write(go)
        return oid

    def put_file(self, path: str | os.PathLike[str], **kw: Any) -> ObjectId:
        with open(path, "rb") as f:
            return self.put_stream(f, **kw)

    def delete(self, oids: Iterable[ObjectId]) -> int:
        """Remove objects (gc only). Returns how many were present."""
        ids = list(oids)

        def go(txn: lmdb.Transaction) -> int:
            return sum(1 for o in ids if txn.delete(o.raw, db=self._objects))

        return self.write(go)

    # -- refs ----------------------------------------------------------------------------

    def get_ref(self, name: str) -> ObjectId | None:
        value = self.read(lambda txn: txn.get(name.encode(), db=self._refs))
        return None if value is None else ObjectId(bytes(value))

    def list_refs(self, prefix: str = "refs/") -> dict[str, ObjectId]:
        start = prefix.encode()

        def go(txn: lmdb.Transaction) -> dict[str, ObjectId]:
            out = {}
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
        now = time.time()

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
            if new is not None and txn.get(new.raw, db=self._objects) is None:
                raise ObjectNotFound(
                    f"cannot point {name} at {new.short()}: object not in store", oid=new
                )
            if old == new:
                return old
            if new is None:
                txn.delete(key, db=self._refs)
            else:
                txn.put(key, new.raw, db=self._refs)
            self._log(txn, name, old, new, now, who, message)
            return old

        return self.write(go)

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
            out = []
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
            for oid in ids:
                value = txn.get(oid.raw, db=self._stage)
                if value is None:
                    continue
                if txn.get(oid.raw, db=self._objects) is None:
                    txn.put(oid.raw, bytes(value), db=self._objects)
                    moved += 1
                txn.delete(oid.raw, db=self._stage)
            return moved

        return self.write(go)

    def stage_clear(self) -> int:
        def go(txn: lmdb.Transaction) -> int:
            n = txn.stat(self._stage)["entries"]
            txn.drop(self._stage, delete=False)
            return int(n)

        return self.write(go)

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


class _BytesReader:
    def __init__(self, data: bytes | memoryview) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self._view) if n < 0 else self._pos + n
        out = bytes(self._view[self._pos : end])
        self._pos += len(out)
        return out


__all__ = ["ANY", "DIGEST_SIZE", "Record", "ReflogEntry", "Store"]
