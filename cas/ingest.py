"""One ingest path for received packs (``cas serve`` and path remotes): verify a pack
frame by frame in memory that follows its size, then store it all or nothing.

:func:`verify` takes the frames one at a time (:func:`cas.pack.frames`) and verifies each
in bounded steps: a blob's content is hashed as it is decompressed and never held whole
(its zstd frame is stored as sent; a large one is re-read as a stream into chunks), a
structured object is decoded alone, checked (:func:`cas.validate.check`), and only its
record kept. So a pack whose frames expand to gigabytes costs what the pack costs.
:func:`write_group` then checks closure — a structured object's references must be
earlier in the pack or already stored, so that no object lands before what it names
(invariant 1) even when a client sends a broken pack — and writes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from cas import pack, validate
from cas.codec import STRUCTURED, ObjType
from cas.digest import ObjectId
from cas.errors import MalformedPack, RequestTooLarge
from cas.store import CHUNK_THRESHOLD, Store
from cas.store import records as rc

#: What one pack may unpack to (a client packs at most PACK_BYTES, or one object of up
#: to MAX_OBJECT alone; see cas.pack.batches).
MAX_UNPACKED = pack.MAX_OBJECT + pack.PACK_BYTES


@dataclass
class Verified:
    """A verified pack waiting to be written (see :func:`write_group`)."""

    wanted: list[ObjectId]  # what its structured objects reference, outside the pack
    big: list[pack.Frame]  # verified blobs stored chunked, read through Store.put_stream
    records: list[tuple[ObjectId, ObjType, bytes]]  # the rest, encoded
    count: int = 0
    done: bool = False
    error: BaseException | None = None


def verify(store: Store, data: bytes, *, max_unpacked: int = MAX_UNPACKED) -> Verified:
    """Verify every frame of the pack ``data``; raise on the first bad one.

    Records are encoded with ``store`` (compression only: no LMDB is touched, so this
    may run outside any lock). A pack whose frames declare more than ``max_unpacked``
    raw bytes in all is refused from their headers, before they are decompressed.
    """
    seen: set[ObjectId] = set()
    out = Verified([], [], [])
    unpacked = 0
    for f in pack.frames(io.BytesIO(data), max_object=min(pack.MAX_OBJECT, max_unpacked)):
        out.count += 1
        unpacked += f.raw_size
        if unpacked > max_unpacked:
            raise RequestTooLarge(f"pack unpacks to more than the limit of {max_unpacked} bytes")
        if f.otype == ObjType.CHUNK:
            raise MalformedPack("chunks do not travel; send the whole blob")
        if f.otype in STRUCTURED:  # at most pack.MAX_STRUCTURED bytes
            raw = f.data()
            out.wanted.extend(r for r in validate.check(f.otype, raw) if r not in seen)
            out.records.append((f.oid, f.otype, rc.encode(f.otype, raw, fast=True, packed=f.packed)))
        elif f.raw_size > CHUNK_THRESHOLD:
            f.verify()
            out.big.append(f)
        elif f.compressed:
            f.verify()
            out.records.append((f.oid, f.otype, rc.frame_record(f.otype, f.raw_size, f.payload)))
        else:
            out.records.append((f.oid, f.otype, rc.encode(f.otype, f.data(), fast=True)))
        seen.add(f.oid)
    return out


def write_group(store: Store, group: list[Verified]) -> None:
    """Check each pack's closure, in order, and write those that pass in one transaction.

    Each pack stays all or nothing: one that fails its check is left out and gets the
    error in ``error``; the others go in together (children before parents, as they
    arrived). Every pack is ``done`` afterwards.
    """
    for p in group:  # until written: a writer killed half-way must not report success
        p.error = RuntimeError("pack was not written: the writer failed")
    ok: list[Verified] = []
    written: set[ObjectId] = set()
    try:
        for p in group:
            try:
                absent = [o for o in store.missing(dict.fromkeys(p.wanted)) if o not in written]
                if absent:
                    raise MalformedPack(
                        f"pack is incomplete: it references {len(absent)} object(s) the "
                        f"receiver lacks, e.g. {absent[0].short()}",
                        hint="send referenced objects first (children before parents)",
                    )
                for f in p.big:  # chunked like a local put of the file, never whole in memory
                    if store.put_stream(f.reader()) != f.oid:
                        raise MalformedPack(f"blob {f.oid.short()} changed while stored")
            except Exception as exc:
                p.error = exc
                continue
            ok.append(p)
            written.update(oid for oid, _, _ in p.records)
        try:
            store.write([r for p in ok for r in p.records], encoded=True)
        except Exception as exc:
            for p in ok:
                p.error = exc
        else:
            for p in ok:
                p.error = None
    finally:
        for p in group:
            p.done = True
