"""Object reads: one read path (:meth:`Objects.get`) for single objects, batched
reads in one transaction, listings, and the record-level look fsck takes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, overload

import lmdb

from cas.codec import ObjType
from cas.digest import DIGEST_SIZE, ObjectId, verify_id
from cas.errors import AmbiguousId, BadObjectId, CorruptObject, ObjectNotFound
from cas.store import records as rc
from cas.store.env import Env, Txn
from cas.store.records import HEAD_SIZE, TYPE_OF, Record

#: Reads of records at least this large use zero-copy views (see Objects.get).
_BIG_READ = 16 << 10


class Objects:
    """The object reads of :attr:`cas.store.Store.objects` (sharing the store's Env)."""

    def __init__(self, env: Env, clock: Callable[[], float]) -> None:
        self._env = env
        self.clock = clock
        self._big_reads = False
        # the Env's LMDB handle and objects db, at hand for the hot path (an attribute
        # lookup is a twentieth of a small get)
        self._handle: lmdb.Environment = env.handle
        self._objects_db: Any = env.objects

    # -- decoding inside a transaction ---------------------------------------------------

    def _unpack(self, txn: Txn, oid: ObjectId, value: bytes | memoryview) -> tuple[ObjType, bytes]:
        """Type and bytes of a record; the hot path of every read, so kept flat."""
        if len(value) >= HEAD_SIZE:
            t, flags, _raw = rc.HEAD.unpack_from(value)
            otype = TYPE_OF.get(t)
            if otype is not None and not flags:
                return otype, bytes(value[HEAD_SIZE:])
        rec = rc.decode(oid, value)
        return rec.type, self._payload(txn, oid, value)

    def _payload(self, txn: Txn, oid: ObjectId, value: bytes | memoryview) -> bytes:
        view = self._payload_view(txn, oid, value)
        return view if isinstance(view, bytes) else bytes(view)

    def _payload_view(self, txn: Txn, oid: ObjectId, value: bytes | memoryview) -> bytes | memoryview:
        """The object's bytes; a view into the map (valid in ``txn`` only) when stored plain."""
        rec = rc.decode(oid, value)
        body = value[HEAD_SIZE:]
        if rec.chunked:
            # one copy: join the chunks' views straight into the result
            return b"".join(self._iter_chunks(txn, oid, body))
        if rec.compressed:
            return rc.decompress(oid, rec, body)
        return body

    def _iter_chunks(self, txn: Txn, oid: ObjectId, body: bytes | memoryview) -> Iterator[bytes | memoryview]:
        for cid_raw, size in rc.chunk_refs(oid, body):
            value = txn.get(cid_raw, db=self._env.objects)
            if value is None:
                raise CorruptObject(f"object {oid.short()} is missing chunk {cid_raw.hex()[:12]}", oid=oid)
            data = self._payload_view(txn, ObjectId(cid_raw), value)
            if len(data) != size:
                raise CorruptObject(f"object {oid.short()}: chunk size mismatch", oid=oid)
            yield data

    # -- single objects --------------------------------------------------------------------

    @overload
    def get(self, oid: ObjectId, *, verify: bool = ..., typed: Literal[False] = ...) -> bytes | None: ...

    @overload
    def get(self, oid: ObjectId, *, verify: bool = ..., typed: Literal[True]) -> tuple[ObjType, bytes] | None: ...

    def get(self, oid: ObjectId, *, verify: bool = False, typed: bool = False) -> Any:
        """The object's bytes, or with ``typed`` its (type, bytes); None if absent (a miss
        is a value, not an error). ``verify`` re-hashes the bytes against ``oid``.

        The one read path of single objects, and the hot path, kept flat
        (bench/bench_store.py): a Python call or a tuple is a tenth of a small get.
        A plain record is ``header + payload`` and Python copies a slice, so a read costs
        either two copies (LMDB's bytes, then the slice) or a zero-copy view plus one copy
        (``buffers=True``), which has a fixed cost of its own. The mode follows the size
        of the previous read on this handle: views for large objects, copies for small.
        ``begin`` takes its arguments by position: py-lmdb parses keywords slowly, a
        third of a small get. A compressed record goes through the BlobCache.
        """
        if verify:
            got = self.get(oid, typed=True)
            if got is not None:
                verify_id(oid, ObjectId.of(got[1]))
            return got if typed or got is None else got[1]
        big = self._big_reads
        try:
            txn = self._handle.begin(None, None, False, True) if big else self._handle.begin()
        except lmdb.Error:
            txn = self._env.begin(buffers=big)  # type: ignore[assignment]
        try:
            value = txn.get(oid._raw, None, self._objects_db)  # the property costs a tenth
            if value is None:
                return None
            n = len(value)
            self._big_reads = n >= _BIG_READ
            if n >= HEAD_SIZE and not value[1] and value[0] in TYPE_OF:
                body = bytes(value[HEAD_SIZE:]) if big else value[HEAD_SIZE:]
                return (TYPE_OF[value[0]], body) if typed else body
            got = self._unpack_cached(txn, oid, value)
            return got if typed else got[1]
        finally:
            txn.abort()

    def _unpack_cached(self, txn: Txn, oid: ObjectId, value: bytes | memoryview) -> tuple[ObjType, bytes]:
        """:meth:`_unpack` through the store's BlobCache: a compressed record decoded
        before, and byte-for-byte the same now, is not decompressed again."""
        rec = rc.decode(oid, value)
        if rec.flags != rc.FLAG_ZSTD:
            return self._unpack(txn, oid, value)
        data = self._env.cache.get(oid.raw, value)
        if data is None:
            data = rc.decompress(oid, rec, value[HEAD_SIZE:])
            self._env.cache.put(oid.raw, value, data)
        return rec.type, data

    def get_typed(self, oid: ObjectId, *, verify: bool = False) -> tuple[ObjType, bytes] | None:
        """The object's (type, bytes), or None if absent: :meth:`get` with ``typed``."""
        return self.get(oid, verify=verify, typed=True)

    def require(self, oid: ObjectId, *, verify: bool = False) -> tuple[ObjType, bytes]:
        got = self.get_typed(oid, verify=verify)
        if got is None:
            raise ObjectNotFound(f"object {oid} not found", oid=oid)
        return got

    def has(self, oid: ObjectId) -> bool:
        return self._env.read(lambda txn: txn.get(oid.raw, db=self._env.objects) is not None)

    def record(self, oid: ObjectId) -> Record | None:
        return self.records([oid]).get(oid)

    def iter_blob(self, oid: ObjectId) -> Iterator[bytes]:
        """Stream a blob's bytes chunk by chunk (one chunk in memory at a time)."""
        rec = self.record(oid)
        if rec is None:
            raise ObjectNotFound(f"object {oid} not found", oid=oid)
        if not rec.chunked:
            yield self.require(oid)[1]
            return
        for cid in self.chunk_ids(oid):
            yield self.require(cid)[1]

    def chunk_ids(self, oid: ObjectId) -> list[ObjectId]:
        """The chunk ids of a chunked blob ([] for a plain one)."""

        def go(txn: Txn) -> list[ObjectId]:
            value = txn.get(oid.raw, db=self._env.objects)
            if value is None or not rc.decode(oid, value).chunked:
                return []
            return [ObjectId(c) for c, _ in rc.chunk_refs(oid, value[HEAD_SIZE:])]

        return self._env.read(go)

    def examine(self, oid: ObjectId) -> tuple[Record, bytes | list[ObjectId]] | None:
        """What fsck checks of one object: its record and its bytes, or, for a chunked
        blob, its chunk ids (None if absent). Raises CorruptObject if the record does
        not decode or its bytes are not the size the record says."""

        def go(txn: Txn) -> tuple[Record, bytes | list[ObjectId]] | None:
            value = txn.get(oid.raw, db=self._env.objects)
            if value is None:  # e.g. deleted by a concurrent gc since the id was listed
                return None
            rec = rc.decode(oid, value)
            if rec.chunked:
                return rec, [ObjectId(c) for c, _ in rc.chunk_refs(oid, value[HEAD_SIZE:])]
            data = self._payload(txn, oid, value)
            if len(data) != rec.raw_size:
                raise CorruptObject(
                    f"{rec.type.label} {oid.short()} decodes to {len(data)} bytes, record says {rec.raw_size}",
                    oid=oid,
                )
            return rec, data

        return self._env.read(go)

    # -- several objects in one transaction -------------------------------------------------

    def missing(self, oids: Iterable[ObjectId]) -> list[ObjectId]:
        """The subset of ``oids`` not in the store, in the given order."""
        db = self._env.objects
        return self._env.read(lambda txn: [o for o in oids if txn.get(o.raw, db=db) is None])

    def records(self, oids: Iterable[ObjectId]) -> dict[ObjectId, Record]:
        """:meth:`record` of several objects in one read txn; absent ids are left out."""

        def go(txn: Txn) -> dict[ObjectId, Record]:
            out = {}
            for oid in oids:
                value = txn.get(oid.raw, db=self._env.objects)
                if value is not None:
                    out[oid] = rc.decode(oid, value)
            return out

        return self._env.read(go)

    def get_many(self, oids: Iterable[ObjectId]) -> dict[ObjectId, tuple[ObjType, bytes]]:
        """Several objects in one read txn; absent ids are left out of the result."""
        return {oid: (t, d) for oid, (t, d, _) in self._get_frames(oids, frames=False).items()}

    def get_many_frames(self, oids: Iterable[ObjectId]) -> dict[ObjectId, tuple[ObjType, bytes, bytes | None]]:
        """Like :meth:`get_many`, each object with its stored zstd frame (None if the
        record is not one plain zstd payload), so a push can send it without compressing
        the bytes again (cas.pack.Framed)."""
        return self._get_frames(oids, frames=True)

    def stored_frames(
        self, oids: Iterable[ObjectId], *, multi: bool
    ) -> dict[ObjectId, tuple[ObjType, int, bytes]]:
        """Type, raw size and stored zstd frame of each of ``oids`` kept as one frame,
        and with ``multi`` of each chunked blob whose chunks all are (their frames one
        after the other), read in one transaction without decompressing anything: a
        fetch answer sends them as they are (cas.pack.Sized). Others are left out."""
        db = self._env.objects

        def frame(value: bytes | memoryview | None) -> bytes | None:
            if value is None or len(value) < HEAD_SIZE or value[1] != rc.FLAG_ZSTD:
                return None
            return bytes(value[HEAD_SIZE:])

        def chunks(txn: Txn, oid: ObjectId, body: bytes | memoryview) -> bytes | None:
            parts = []
            for cid, _ in rc.chunk_refs(oid, body):
                part = frame(txn.get(cid, db=db))
                if part is None:
                    return None
                parts.append(part)
            return b"".join(parts)

        def go(txn: Txn) -> dict[ObjectId, tuple[ObjType, int, bytes]]:
            out = {}
            for oid in oids:
                value = txn.get(oid.raw, db=db)
                if value is None or len(value) < HEAD_SIZE:
                    continue
                rec = rc.decode(oid, value)
                got = frame(value)
                if got is None and multi and rec.chunked and rec.type == ObjType.BLOB:
                    got = chunks(txn, oid, value[HEAD_SIZE:])
                if got is not None:
                    out[oid] = (rec.type, rec.raw_size, got)
            return out

        return self._env.read(go, buffers=True)

    def _get_frames(
        self, oids: Iterable[ObjectId], *, frames: bool
    ) -> dict[ObjectId, tuple[ObjType, bytes, bytes | None]]:
        def go(txn: Txn) -> dict[ObjectId, tuple[ObjType, bytes, bytes | None]]:
            out: dict[ObjectId, tuple[ObjType, bytes, bytes | None]] = {}
            for oid in oids:
                value = txn.get(oid.raw, db=self._env.objects)
                if value is None:
                    continue
                otype, data = self._unpack(txn, oid, value)
                frame = bytes(value[HEAD_SIZE:]) if frames and value[1] == rc.FLAG_ZSTD else None
                out[oid] = (otype, data, frame)
            return out

        return self._env.read(go, buffers=True)

    # -- listings ----------------------------------------------------------------------------

    def iter_records(self) -> Iterator[Record]:
        """Every object's record, in id order (a snapshot taken at the call)."""
        for _key, rec in self._scan(10_000, decode=True):
            assert rec is not None
            yield rec

    def iter_ids(self, batch: int = 10_000) -> Iterator[ObjectId]:
        """Every object id, in id order, read in batches of short read transactions.

        Unlike :meth:`iter_records` this never decodes a record, so a corrupt one does
        not stop the iteration (fsck relies on that).
        """
        for key, _ in self._scan(batch, decode=False):
            if len(key) == DIGEST_SIZE:
                yield ObjectId(key)

    def _scan(self, batch: int, *, decode: bool) -> Iterator[tuple[bytes, Record | None]]:
        """Every object's key (and decoded record), in batches of one read txn each."""
        start = b""
        while True:

            def go(txn: Txn, start: bytes = start) -> list[tuple[bytes, Record | None]]:
                out: list[tuple[bytes, Record | None]] = []
                cur = txn.cursor(db=self._env.objects)
                if not cur.set_range(start):
                    return out
                for key in cur.iternext(keys=True, values=False):
                    key = bytes(key)
                    if key == start:
                        continue
                    out.append((key, rc.decode(ObjectId(key), cur.value()) if decode else None))
                    if len(out) >= batch:
                        break
                return out

            keys = self._env.read(go)
            if not keys:
                return
            yield from keys
            start = keys[-1][0]

    def resolve_prefix(self, prefix: str, limit: int = 2) -> list[ObjectId]:
        """Ids that start with the hex ``prefix`` (at most ``limit``); BadObjectId if
        ``prefix`` is not hex (a user's text, from the CLI or a web form)."""
        prefix = prefix.lower()
        try:
            start = bytes.fromhex(prefix[: len(prefix) // 2 * 2])
            int(prefix or "0", 16)
        except ValueError:
            raise BadObjectId(f"{prefix[:80]!r} is not a hex id prefix") from None

        def go(txn: Txn) -> list[ObjectId]:
            out: list[ObjectId] = []
            cur = txn.cursor(db=self._env.objects)
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

        return self._env.read(go)

    def resolve_unique(self, prefix: str) -> ObjectId:
        found = self.resolve_prefix(prefix, limit=2)
        if not found:
            raise ObjectNotFound(f"no object matches {prefix!r}")
        if len(found) > 1:
            raise AmbiguousId(f"id prefix {prefix!r} is ambiguous", hint="give more characters of the id")
        return found[0]
