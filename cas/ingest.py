"""One ingest path: what every receiver of objects does before it keeps them — the
server and the path remote (into a Store), the S3 remote (into a bucket), and a fetch
into a local store.

* :func:`verify` takes a pack's bytes (cas serve, a path remote, S3's send_pack_bytes)
  frame by frame (:func:`cas.pack.frames`) and verifies each in bounded steps: a blob's
  content is hashed as it is decompressed and never held whole (its zstd frame is kept
  as sent; a large one is re-read as a stream into chunks), a structured object is
  decoded alone, checked (:func:`cas.validate.check`), and only its record kept. So a
  pack whose frames expand to gigabytes costs what the pack costs: the memory bounds of
  every receiver live here.
* :func:`verify_objects` checks objects already decoded (S3's send_pack, a fetch): each
  id against its bytes, its type against what was expected, its structure.
* :func:`require` is the closure check — a structured object's references must be
  earlier in the pack or already held, so that no object lands before what it names
  (invariant 1) even when a client sends a broken pack — and the type check: each
  reference must name an object of the type its role wants (a commit's manifest a
  manifest node, its parents commits, a tag's target what the tag says; see
  :class:`cas.validate.Link`), or every later fetch of the receiver would fail.
* :func:`records` makes the store records of a fetch's verified objects, keeping the
  zstd frames they arrived in (a large blob's chunk frames too).
* :func:`write_group` writes verified packs into a Store, and :class:`Commits` groups
  the packs verified meanwhile into one transaction; :func:`receive` is all of it.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from cas import pack, validate
from cas.codec import STRUCTURED, ObjType
from cas.digest import ObjectId, verify_id
from cas.errors import CorruptObject, MalformedPack, RequestTooLarge
from cas.store import CHUNK_SIZE, CHUNK_THRESHOLD, Store
from cas.store import records as rc

#: What one pack may unpack to (a client packs at most PACK_BYTES, or one object of up
#: to MAX_OBJECT alone; see cas.pack.batches).
MAX_UNPACKED = pack.MAX_OBJECT + pack.PACK_BYTES

#: The types of those of some ids that a receiver holds; the ids it lacks are left out.
Held = Callable[[list[ObjectId]], Mapping[ObjectId, ObjType]]


class Need(NamedTuple):
    """A reference that a pack's object makes to an object outside the pack."""

    owner: ObjectId
    otype: ObjType
    link: validate.Link


def held_by(store: Store) -> Held:
    """What ``store`` holds of some ids, with their types (from record headers)."""
    return lambda ids: {oid: rec.type for oid, rec in store.objects.records(ids).items()}


@dataclass
class Verified:
    """A verified pack waiting to be written (see :func:`write_group`)."""

    wanted: list[Need]  # what its structured objects reference, outside the pack
    big: list[pack.Frame]  # verified blobs stored chunked, read through store.objects.put_stream
    records: list[rc.Encoded]  # the rest, encoded (none unless verify was asked to encode)
    count: int = 0
    done: bool = False
    error: BaseException | None = None


def verify(data: bytes, *, max_unpacked: int = MAX_UNPACKED, encode: bool = True) -> Verified:
    """Verify every frame of the pack ``data``; raise on the first bad one.

    With ``encode``, the store's records are made too (compression only: no LMDB is
    touched, so this may run outside any lock). A pack whose frames declare more than
    ``max_unpacked`` raw bytes in all is refused from their headers, before they are
    decompressed.
    """
    seen: dict[ObjectId, ObjType] = {}
    out = Verified([], [], [])
    unpacked = 0
    for f in pack.frames(_PackView(data), max_object=min(pack.MAX_OBJECT, max_unpacked)):  # type: ignore[arg-type]
        out.count += 1
        unpacked += f.raw_size
        if unpacked > max_unpacked:
            raise RequestTooLarge(f"pack unpacks to more than the limit of {max_unpacked} bytes")
        _no_chunk(f.otype)
        if f.otype in STRUCTURED:  # at most pack.MAX_STRUCTURED bytes
            raw = f.data()
            out.wanted.extend(_links(f.oid, f.otype, raw, seen))
            if encode:
                out.records.append((f.oid, f.otype, rc.encode(f.otype, raw, fast=True, packed=f.packed)))
        elif f.raw_size > CHUNK_THRESHOLD:
            chunks = _framed_chunks(f) if encode else None
            if chunks is None:
                f.verify()
                out.big.append(f)
            else:
                out.records.extend(chunks)
        elif f.compressed or not encode:
            f.verify()
            if encode:
                out.records.append((f.oid, f.otype, rc.frame_record(f.otype, f.raw_size, f.payload)))
        else:
            out.records.append((f.oid, f.otype, rc.encode(f.otype, f.data(), fast=True)))
        seen[f.oid] = f.otype
    return out


class _PackView(io.RawIOBase):
    """A pack held in memory, read as views of it: a payload goes on to its record
    (which copies it once, cas.store.records) without a copy of its own; reads under
    VIEW_MIN bytes (frame headers, small objects) come as bytes."""

    VIEW_MIN = 4096

    def __init__(self, data: bytes) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes | memoryview:  # type: ignore[override]
        end = len(self._view) if n < 0 else min(len(self._view), self._pos + n)
        part = self._view[self._pos : end]
        self._pos = end
        return part if len(part) >= self.VIEW_MIN else part.tobytes()


def _framed_chunks(f: pack.Frame) -> list[rc.Encoded] | None:
    """The records of a large blob sent as its chunks' frames (pack.chunk_split), each
    frame decompressed once, in one call, to hash it both as a chunk and as part of the
    blob (pack.checked_chunks), and kept as it is: nothing is compressed again. None
    when the frames are not chunk frames (the caller then verifies and re-chunks the
    blob)."""
    frames = pack.chunk_split(f.payload, f.raw_size, CHUNK_SIZE) if f.compressed else None
    if frames is None:
        return None
    chunks, _ = pack.checked_chunks(f, frames, keep=False)
    return rc.framed_chunks(f.oid, f.raw_size, chunks)


def records(objs: Iterable[pack.WireObject]) -> list[rc.Encoded]:
    """The store records of verified objects (a fetch's, cas.sync.walk), made outside
    any transaction. A zstd frame that arrived with its object (pack.Framed: the bytes
    were decoded from it, cas.pack.decode) is kept as it is, and so are a large blob's
    chunk frames (pack.chunk_split): a fetch never compresses again what its sender
    stored compressed."""
    out: list[rc.Encoded] = []
    for obj in objs:
        oid, otype, data = obj
        sent = obj.frame if isinstance(obj, pack.Framed) else None
        if isinstance(obj, pack.Framed) and obj.chunks:  # hashed by pack.decode as they came
            out.extend(rc.framed_chunks(oid, len(data), obj.chunks))
            continue
        if otype == ObjType.BLOB and len(data) > CHUNK_THRESHOLD:
            frames = None if sent is None else pack.chunk_split(sent, len(data), CHUNK_SIZE)
            out.extend(rc.chunked(rc.split(data), oid, frames))
            continue
        frame = sent if isinstance(obj, pack.Framed) and obj.frames == 1 else None
        out.append((oid, otype, rc.encode(otype, data, fast=True, packed=frame)))
    return out


def _links(owner: ObjectId, otype: ObjType, data: bytes | memoryview, seen: Mapping[ObjectId, ObjType]) -> list[Need]:
    """Check ``owner`` and the types of its references to ``seen`` (earlier in its pack);
    return its references to objects outside the pack."""
    out = []
    for link in validate.check(otype, data):
        actual = seen.get(link.oid)
        if actual is None:
            out.append(Need(owner, otype, link))
        elif actual not in link.types:
            _check_type(Need(owner, otype, link), actual)
    return out


def _check_type(need: Need, actual: ObjType) -> None:
    link = need.link
    if actual not in link.types:
        expected = " or ".join(sorted(t.label for t in link.types))
        raise CorruptObject(
            f"{need.otype.label} {need.owner.short()} names {link.oid.short()} as its {link.role}, "
            f"but that is a {actual.label}, not a {expected}",
            oid=need.owner,
        )


def verify_objects(
    objs: Iterable[pack.WireObject],
    *,
    expect: Mapping[ObjectId, frozenset[ObjType]] | None = None,
    source: str | None = None,
    hint: str | None = None,
) -> list[Need]:
    """Check decoded objects: each id against its bytes (unless :func:`cas.pack.decode`
    did, :func:`cas.pack.is_checked`), its type against ``expect``
    (when given), no chunks, structured bodies well formed; raise on the first bad one.
    Returns what their structured objects reference outside them, for :func:`require`."""
    seen: dict[ObjectId, ObjType] = {}
    wanted: list[Need] = []
    for obj in objs:
        oid, otype, data = obj
        if not pack.is_checked(obj):  # pack.decode hashed it as it read it: once is enough
            verify_id(oid, ObjectId.of(data), source=source, hint=hint)
        if expect is not None:
            pack.check_expected(oid, otype, len(data), expect[oid], source or "pack")
        _no_chunk(otype)
        if otype in STRUCTURED:
            wanted.extend(_links(oid, otype, data, seen))
        seen[oid] = otype
    return wanted


def require(wanted: list[Need], held: Held, written: Mapping[ObjectId, ObjType] | None = None) -> None:
    """Closure and types: raise MalformedPack if the receiver lacks any of ``wanted``,
    CorruptObject if one it holds is not of the type its reference wants (``held``
    tells what it holds; ``written``: objects of earlier packs of the same group)."""
    written = written or {}
    ids = list(dict.fromkeys(n.link.oid for n in wanted if n.link.oid not in written))
    types = {**held(ids), **written}
    absent = [o for o in ids if o not in types]
    if absent:
        raise MalformedPack(
            f"pack is incomplete: it references {len(absent)} object(s) the "
            f"receiver lacks, e.g. {absent[0].short()}",
            hint="send referenced objects first (children before parents)",
        )
    for need in wanted:
        _check_type(need, types[need.link.oid])


def _no_chunk(otype: ObjType) -> None:
    if otype == ObjType.CHUNK:
        raise MalformedPack("chunks do not travel; send the whole blob")


def write_group(store: Store, group: list[Verified]) -> None:
    """Check each pack's closure, in order, and write those that pass in one transaction.

    Each pack stays all or nothing: one that fails its check is left out and gets the
    error in ``error``; the others go in together (children before parents, as they
    arrived). Every pack is ``done`` afterwards.
    """
    for p in group:  # until written: a writer killed half-way must not report success
        p.error = RuntimeError("pack was not written: the writer failed")
    ok: list[Verified] = []
    written: dict[ObjectId, ObjType] = {}
    try:
        for p in group:
            try:
                require(p.wanted, held_by(store), written)
                for f in p.big:  # chunked like a local put of the file, never whole in memory
                    if store.objects.put_stream(f.reader()) != f.oid:
                        raise MalformedPack(f"blob {f.oid.short()} changed while stored")
            except Exception as exc:
                p.error = exc
                continue
            ok.append(p)
            written.update((oid, otype) for oid, otype, _ in p.records)
        try:
            store.objects.write([r for p in ok for r in p.records], encoded=True)
        except Exception as exc:
            for p in ok:
                p.error = exc
        else:
            for p in ok:
                p.error = None
    finally:
        for p in group:
            p.done = True


class Commits:
    """Group commit: the packs verified meanwhile are written in one LMDB transaction.

    A durable commit costs two fsyncs, and a push keeps several packs in flight; so the
    thread that gets the writer lock writes every pack then waiting, each checked for
    closure in arrival order, and the others find theirs done. Each pack stays all or
    nothing: one that fails its check is left out and gets the error, the others go in
    together (children before parents, as they arrived). The closure check and the
    writes of a group never interleave with another group's. Writes go one group at a
    time also because LMDB may grow its map only while no other transaction of the
    process is open.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._mutex = threading.Lock()
        self._queue: list[Verified] = []

    def write(self, store: Store, pack_: Verified) -> None:
        with self._mutex:
            self._queue.append(pack_)
        with self.lock:
            if not pack_.done:
                with self._mutex:
                    group, self._queue = self._queue, []
                write_group(store, group)
        if pack_.error is not None:
            raise pack_.error


def receive(
    store: Store, data: bytes, commits: Commits | None = None, *, max_unpacked: int = MAX_UNPACKED
) -> Verified:
    """Verify a whole pack (frame by frame, in memory that follows the pack's size),
    then check its closure and store it through ``commits`` (group commit); all or
    nothing. Verifying takes most of the time and touches no LMDB, so it runs outside
    the writer lock, while other packs are written."""
    verified = verify(data, max_unpacked=max_unpacked)
    (commits or Commits()).write(store, verified)
    return verified
