"""Object writes: :meth:`Writes.write` is the one way objects go in; :meth:`Writes.put_stream`
takes a blob from a stream (a different input, not held whole).

Writes are batched: callers hand over many objects at once and they land in one
transaction (a durable LMDB commit costs ~0.5 ms; a put inside a txn ~7 us), or, past
STREAM_TXN_BYTES, in several transactions, in order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO, Literal, overload

from cas import codec
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.store import records as rc
from cas.store import wtlog
from cas.store.env import Env, Txn
from cas.store.records import CHUNK_SIZE, CHUNK_THRESHOLD, COMPRESS_MIN, HEAD, Encoded

#: Flush batched records in transactions of about this many bytes.
STREAM_TXN_BYTES = 64 << 20

#: A record waiting for its put: (id, type, head, body); the record is ``head + body``.
_Part = tuple[ObjectId, ObjType, bytes, "bytes | memoryview"]


class Writes:
    """The object writes of :attr:`cas.store.Store.objects` (a part of it, sharing its Env)."""

    _env: Env
    clock: Callable[[], float]

    @overload
    def write(self, objs: Iterable[tuple[ObjType, bytes]]) -> list[ObjectId]: ...
    @overload
    def write(
        self, objs: Iterable[tuple[ObjectId, ObjType, bytes | memoryview]], *, verified: Literal[True]
    ) -> list[ObjectId]: ...
    @overload
    def write(self, objs: Iterable[Encoded], *, encoded: Literal[True]) -> list[ObjectId]: ...

    def write(self, objs: Iterable[Any], *, verified: bool = False, encoded: bool = False) -> list[ObjectId]:
        """Store objects, in order; existing ones are left as they are. Returns their ids.

        ``objs`` are ``(type, bytes)``, the ids computed here from the bytes, so a caller
        cannot store under a wrong id; with ``verified``, ``(id, type, bytes)`` whose ids
        the caller has checked against the bytes; with ``encoded``, ``(id, type, record)``
        made by :func:`cas.store.records.encode` (outside any lock: a server encodes
        while another pack is written), all in one transaction (docs/format.md: a pack is
        stored all or nothing).

        Callers keep the closure order (children before parents). Large blobs are split
        into chunks written before the blob's record; other than ``encoded``, a batch
        larger than STREAM_TXN_BYTES is written in several transactions, in order.
        """
        if encoded:  # one transaction, whatever its size: a pack is all or nothing
            records = [(oid, otype, b"", record) for oid, otype, record in objs]
            if records:
                _put_parts(self._env, self.clock, records)
            return [r[0] for r in records]
        batch = _Batch(self._env, self.clock)
        ids: list[ObjectId] = []
        of, head, parts = ObjectId.of, HEAD.pack, batch.parts
        for item in objs:
            if verified:
                oid, otype, data = item
            else:
                otype, data = item
                oid = of(data)
            n = len(data)
            if n < COMPRESS_MIN:  # the common small case, flat (as in records.encode, _Batch.add)
                parts.append((oid, otype, head(otype, 0, n), data))
                batch.size += n
                if batch.size >= STREAM_TXN_BYTES:
                    batch.flush()
            elif otype == ObjType.BLOB and n > CHUNK_THRESHOLD:
                for e in rc.chunked(rc.split(data), oid):
                    batch.add(e[0], e[1], b"", e[2])
            else:
                batch.add(oid, otype, b"", rc.encode(otype, data))
            ids.append(oid)
        batch.flush()
        return ids

    def put(self, data: bytes, otype: ObjType = ObjType.BLOB) -> ObjectId:
        """:meth:`write` of one object."""
        return self.write([(otype, data)])[0]

    def put_object(self, obj: Any) -> ObjectId:
        """:meth:`write` of one structured object (Env, Commit, Tag, ManifestNode)."""
        return self.put(obj.encode(), obj.TYPE)

    def put_stream(self, stream: BinaryIO, *, progress: Callable[[int], None] | None = None) -> ObjectId:
        """Store a blob read from ``stream``, in chunks if large; returns its id.

        Chunks are written in transactions of about STREAM_TXN_BYTES; the blob's own
        record is written with the last of them, so a crash leaves only unreferenced
        chunks (gc removes them) and never a blob whose chunks are missing.
        """
        first = _read_full(stream, CHUNK_SIZE)
        if progress:
            progress(len(first))
        nxt = _read_full(stream, CHUNK_SIZE)
        if not nxt:
            return self.write([(ObjectId.of(first), ObjType.BLOB, first)], verified=True)[0]

        def chunks() -> Iterator[bytes]:
            chunk, more = first, nxt
            while chunk:
                yield chunk
                chunk, more = more, more and _read_full(stream, CHUNK_SIZE)
                if chunk and progress:
                    progress(len(chunk))

        batch = _Batch(self._env, self.clock)
        for oid, otype, record in rc.chunked(chunks()):
            batch.add(oid, otype, b"", record)
        batch.flush()
        return oid

    def put_file(self, path: str | os.PathLike[str], **kw: Any) -> ObjectId:
        with open(path, "rb") as f:
            return self.put_stream(f, **kw)


class _Batch:
    """Records waiting for a write txn, flushed every STREAM_TXN_BYTES, in order."""

    def __init__(self, env: Env, clock: Callable[[], float]) -> None:
        self.env = env
        self.clock = clock
        self.parts: list[_Part] = []
        self.size = 0

    def add(self, oid: ObjectId, otype: ObjType, head: bytes, body: bytes | memoryview) -> None:
        self.parts.append((oid, otype, head, body))
        self.size += len(head) + len(body)
        if self.size >= STREAM_TXN_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.parts:
            _put_parts(self.env, self.clock, self.parts)
        self.parts.clear()  # in place: Writes.write appends to it through a local name
        self.size = 0


def _put_parts(env: Env, clock: Callable[[], float], parts: list[_Part]) -> None:
    """Put records in one write transaction, in order.

    A small plain record is joined here, just before its put, rather than when batched:
    a batch of fresh 1 KiB joins costs more (new memory) than the join itself.
    """
    # Every write, new or not, stamps the object's time: gc keeps what was written
    # within its grace period, so a writer that re-puts an old unreachable object
    # before referencing it is safe from a racing gc. One log record for the batch.
    written = b"".join([oid.raw for oid, _, _, _ in parts])

    def go(txn: Txn) -> None:
        objects = env.objects
        # putmulti: one C loop (a generator, so each join is freed after its put)
        _, added = txn.cursor(db=objects).putmulti(
            ((oid.raw, head + body if head else body) for oid, _, head, body in parts),
            overwrite=False,
        )
        wtlog.stamp(txn, env.otime, clock(), written)
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

    env.write(go)


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
