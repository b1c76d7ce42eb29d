"""The record codec: how one object is laid out as an LMDB value (pure; no LMDB).

A record is a header (type, flags, raw size; see docs/format.md, "On-disk layout") and a
payload: the bytes as they are, a zstd frame of them, or, for a large blob, the list of
its chunks' (id, size). Encoding happens before a write transaction starts, so that the
writer lock is held only for the puts.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import zstandard

from cas.codec import ObjType
from cas.digest import Hasher, ObjectId
from cas.errors import CorruptObject

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
#: Payloads larger than 4 samples are probed with one sample before a full compression.
COMPRESS_SAMPLE = 4 << 10

FLAG_ZSTD = 1
FLAG_CHUNKED = 2
HEAD = struct.Struct("<BBQ")  # type, flags, raw size
HEAD_SIZE = HEAD.size
CHUNK_REF = struct.Struct("<32sQ")  # chunk id, chunk size
TYPE_OF = {int(t): t for t in ObjType}

#: One encoded object, ready for a write: (id, type, record).
Encoded = tuple[ObjectId, ObjType, bytes]


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


# zstd contexts must not be used by two threads at once (a server shares a Store between
# threads), so each thread gets its own.
_Z = threading.local()


def zstd() -> Any:
    """This thread's zstd contexts: ``compressor``, ``probe`` (level 1), ``decompressor``."""
    z = _Z
    if not hasattr(z, "compressor"):
        z.compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        z.probe = zstandard.ZstdCompressor(level=1)
        z.decompressor = zstandard.ZstdDecompressor()
    return z


def _payload(data: bytes | memoryview, *, fast: bool = False) -> tuple[int, bytes | memoryview]:
    n = len(data)
    if n < COMPRESS_MIN:
        return 0, data
    if n > COMPRESS_SAMPLE * 4:
        # Probe a sample from the middle (headers are often more compressible than
        # the rest) with a fast level; a full zstd pass over incompressible bytes
        # costs more than hashing and storing them (docs/robustness.md, benchmarks).
        mid = n // 2
        sample = data[mid : mid + COMPRESS_SAMPLE]
        if len(zstd().probe.compress(sample)) > COMPRESS_SAMPLE * COMPRESS_GAIN:
            return 0, data
    z = zstd()
    packed = (z.probe if fast else z.compressor).compress(data)
    if len(packed) <= n * COMPRESS_GAIN:
        return FLAG_ZSTD, packed
    return 0, data


def encode(
    otype: ObjType, data: bytes | memoryview, *, fast: bool = False, packed: bytes | None = None
) -> bytes:
    """The record of ``data``: compressed when that pays (ZSTD_LEVEL, or level 1 if
    ``fast``), or holding ``packed`` as it is: a zstd frame the caller has checked
    decompresses to ``data`` (a pack frame as sent, see cas.pack.Frame.packed).

    Level 1 is about 1.4x faster than ZSTD_LEVEL at a near-equal ratio on compiled
    artifacts, which matters where bytes arrive at network speed (a server ingesting packs).
    """
    n = len(data)
    if n < COMPRESS_MIN:  # the common small case, without the compression detour
        return HEAD.pack(otype, 0, n) + data
    if packed is not None and len(packed) <= n * COMPRESS_GAIN:
        return frame_record(otype, n, packed)
    flags, payload = _payload(data, fast=fast)
    return b"".join((HEAD.pack(otype, flags, n), payload))


def frame_record(otype: ObjType, raw_size: int, frame: bytes | memoryview) -> bytes:
    """A record holding ``frame`` as it is: a zstd frame that the caller has checked
    decompresses to exactly ``raw_size`` bytes (cas.pack.Frame.verify), so the bytes
    need never be held whole."""
    return b"".join((HEAD.pack(otype, FLAG_ZSTD, raw_size), frame))


def chunked_record(size: int, refs: list[bytes]) -> bytes:
    """The record of a blob of ``size`` bytes stored as chunks (``refs``: CHUNK_REF each)."""
    return HEAD.pack(int(ObjType.BLOB), FLAG_CHUNKED, size) + b"".join(refs)


def chunked(
    chunks: Iterable[bytes | memoryview],
    oid: ObjectId | None = None,
    frames: list[memoryview] | None = None,
) -> Iterator[Encoded]:
    """A large blob given as its CHUNK_SIZE chunks, as records: the chunks', then the
    blob's own listing them, under ``oid`` or, if None, the hash of the chunks joined.
    Every large blob is stored this way, whole or streamed (cas.store.writes).

    ``frames``: one zstd frame per chunk, checked by the caller to decompress to it
    (cas.pack.chunk_frames), kept as they are instead of compressing the chunks again."""
    whole = Hasher() if oid is None else None
    refs = []
    size = 0
    for i, chunk in enumerate(chunks):
        if whole is not None:
            whole.update(chunk)
        cid = ObjectId.of(chunk)
        refs.append(CHUNK_REF.pack(cid.raw, len(chunk)))
        size += len(chunk)
        packed = None if frames is None else bytes(frames[i])
        yield cid, ObjType.CHUNK, encode(ObjType.CHUNK, chunk, packed=packed)
    yield oid or whole.digest(), ObjType.BLOB, chunked_record(size, refs)  # type: ignore[union-attr]


def framed_chunks(oid: ObjectId, size: int, chunks: Iterable[tuple[ObjectId, int, bytes | memoryview]]) -> list[Encoded]:
    """The records of a blob of ``size`` bytes under ``oid`` whose ``chunks`` (each its
    id, size and zstd frame, all checked by the caller: cas.pack.checked_chunks) are
    kept as they came: the chunks' records holding their frames, then the blob's."""
    out: list[Encoded] = []
    refs = []
    for cid, n, frame in chunks:
        refs.append(CHUNK_REF.pack(cid.raw, n))
        out.append((cid, ObjType.CHUNK, frame_record(ObjType.CHUNK, n, frame)))
    out.append((oid, ObjType.BLOB, chunked_record(size, refs)))
    return out


def split(data: bytes | memoryview) -> Iterator[memoryview]:
    """The CHUNK_SIZE chunks of a large blob held whole."""
    view = memoryview(data)
    return (view[i : i + CHUNK_SIZE] for i in range(0, len(view), CHUNK_SIZE))


def decode(oid: ObjectId, value: bytes | memoryview) -> Record:
    """The header of a record (raises CorruptObject if it is malformed)."""
    if len(value) < HEAD.size:
        raise CorruptObject(f"object {oid.short()} has a truncated record", oid=oid)
    t, flags, raw = HEAD.unpack_from(value)
    otype = TYPE_OF.get(t)
    if otype is None:
        raise CorruptObject(f"object {oid.short()} has unknown type {t}", oid=oid)
    return Record(oid, otype, flags, raw, len(value))


def decompress(oid: ObjectId, rec: Record, body: bytes | memoryview) -> bytes:
    try:
        out: bytes = zstd().decompressor.decompress(body, max_output_size=rec.raw_size)
    except zstandard.ZstdError as exc:
        raise CorruptObject(f"object {oid.short()}: bad zstd payload", oid=oid) from exc
    return out


def chunk_refs(oid: ObjectId, body: bytes | memoryview) -> list[tuple[bytes, int]]:
    """The (chunk id, size) list of a chunked blob's record body."""
    if len(body) % CHUNK_REF.size:
        raise CorruptObject(f"object {oid.short()} has a truncated chunk list", oid=oid)
    return list(CHUNK_REF.iter_unpack(body))
