"""The pack stream: how objects travel between stores (docs/format.md, "Pack stream").

A pack is a header, one frame per object, and a trailer::

    header   b"CASPACK" 0x00, u8 version (=1)
    frame    u8 type | u8 flags | 32-byte id | u64 LE raw size | u64 LE payload size | payload
    trailer  u8 0xFF | u64 LE object count | 32-byte BLAKE3 of every byte before the trailer

``flags & 1`` means the payload is zstd-compressed; the id is always BLAKE3 of the raw
bytes. The trailer makes truncation detectable: a stream cut anywhere fails to parse.
Readers verify every object's id as it is decoded and reject the whole pack on the first
bad frame, so a receiver stores a pack all or nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import blake3
import zstandard

from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import CorruptObject, FormatVersionError, MalformedPack

MAGIC = b"CASPACK\x00"
VERSION = 1
END = 0xFF
FLAG_ZSTD = 1
_FRAME = struct.Struct("<BB32sQQ")
_TRAILER = struct.Struct("<BQ32s")
#: Objects smaller than this are sent as they are.
COMPRESS_MIN = 512
#: A pack is closed once it holds about this many payload bytes.
PACK_BYTES = 8 << 20
#: Refuse objects above this size in a pack (chunked blobs travel as chunks + index).
MAX_OBJECT = 1 << 30

WireObject = tuple[ObjectId, ObjType, bytes]


class Framed(tuple[ObjectId, ObjType, bytes]):
    """A WireObject that also carries ``frame``: a zstd frame of its bytes, as a store
    holds it (Store.get_many_frames).

    :func:`encode` sends the frame as the payload instead of the raw bytes, whatever its
    ``level``: it costs no CPU (``level=None`` only means "spend none on zstd"), halves
    the bytes on the wire and lets the receiver store the frame as it is once it has
    verified it (Store.encode_verified). Everywhere else it is a plain 3-tuple.
    """

    frame: bytes

    def __new__(cls, oid: ObjectId, otype: ObjType, data: bytes, frame: bytes) -> Framed:
        self = super().__new__(cls, (oid, otype, data))
        self.frame = frame
        return self


def encode(objects: Iterable[WireObject], *, level: int | None = 3) -> Iterator[bytes]:
    """Yield the bytes of one pack holding ``objects``, frame by frame.

    ``level=None`` sends every payload raw (fast links, where zstd costs more CPU time
    than the bytes it saves take to send).
    """
    zc = zstandard.ZstdCompressor(level=level) if level is not None else None
    h = blake3.blake3()
    count = 0
    head = MAGIC + bytes((VERSION,))
    h.update(head)
    yield head
    for obj in objects:
        oid, otype, data = obj
        flags, payload = 0, data
        if type(obj) is Framed:
            flags, payload = FLAG_ZSTD, obj.frame
        elif zc is not None and len(data) >= COMPRESS_MIN:
            packed = zc.compress(data)
            if len(packed) < len(data) * 0.9:
                flags, payload = FLAG_ZSTD, packed
        frame = _FRAME.pack(int(otype), flags, oid.raw, len(data), len(payload))
        h.update(frame)
        h.update(payload)
        count += 1
        yield frame
        yield payload
    yield _TRAILER.pack(END, count, h.digest())


def encode_bytes(objects: Iterable[WireObject], *, level: int | None = 3) -> bytes:
    return b"".join(encode(objects, level=level))


def batches(objects: Iterable[WireObject], max_bytes: int = PACK_BYTES) -> Iterator[list[WireObject]]:
    """Split a stream of objects into lists of about ``max_bytes`` raw bytes each.

    An object of half ``max_bytes`` or more travels alone in its own pack, so a pack
    never holds more than about ``max_bytes`` and a cut transfer loses at most one
    large object's progress.
    """
    batch: list[WireObject] = []
    size = 0
    for obj in objects:
        n = len(obj[2]) + 64
        if n >= max_bytes // 2:
            if batch:
                yield batch
                batch, size = [], 0
            yield [obj]
            continue
        batch.append(obj)
        size += n
        if size >= max_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _Reader:
    def __init__(self, stream: BinaryIO) -> None:
        self._s = stream
        self.hash = blake3.blake3()

    def exact(self, n: int, what: str, *, hashed: bool = True) -> bytes:
        parts = []
        left = n
        while left:
            chunk = self._s.read(left)
            if not chunk:
                raise MalformedPack(f"pack is truncated (in {what})")
            parts.append(chunk)
            left -= len(chunk)
        data = b"".join(parts)
        if hashed:
            self.hash.update(data)
        return data


def decode(stream: BinaryIO, *, max_object: int = MAX_OBJECT) -> Iterator[WireObject]:
    """Yield verified objects from a pack stream.

    Raises MalformedPack on bad framing or truncation and CorruptObject when an object's
    bytes do not hash to its id. Callers that must store all or nothing collect the
    objects first (:func:`decode_all`).
    """
    for oid, otype, data, _packed in decode_frames(stream, max_object=max_object):
        yield oid, otype, data


def decode_frames(
    stream: BinaryIO, *, max_object: int = MAX_OBJECT
) -> Iterator[tuple[ObjectId, ObjType, bytes, bytes | None]]:
    """Like :func:`decode`, each object with its zstd payload as sent (None if sent raw).

    The payload is a zstd frame whose decompression (with ``max_output_size`` = the raw
    size, as the store reads it) was just verified against the id, so a receiver may
    store it as it is instead of compressing the bytes again.
    """
    r = _Reader(stream)
    head = r.exact(len(MAGIC) + 1, "header")
    if head[: len(MAGIC)] != MAGIC:
        raise MalformedPack("not a cas pack (bad magic)")
    if head[-1] != VERSION:
        raise FormatVersionError(f"pack version {head[-1]} is not supported (this cas reads {VERSION})")
    zd = zstandard.ZstdDecompressor()
    count = 0
    while True:
        t = r.exact(1, "frame type", hashed=False)
        if t[0] == END:
            rest = r.exact(_TRAILER.size - 1, "trailer", hashed=False)
            _, n, digest = _TRAILER.unpack(t + rest)
            if n != count or digest != r.hash.digest():
                raise MalformedPack("pack trailer does not match its contents")
            if stream.read(1):
                raise MalformedPack("unexpected bytes after the pack trailer")
            return
        r.hash.update(t)
        rest = r.exact(_FRAME.size - 1, "frame header")
        otype_code, flags, raw_id, raw_size, payload_size = _FRAME.unpack(t + rest)
        try:
            otype = ObjType(otype_code)
        except ValueError as exc:
            raise MalformedPack(f"unknown object type {otype_code} in pack") from exc
        if raw_size > max_object or payload_size > max_object:
            raise MalformedPack(f"object of {raw_size} bytes exceeds the pack limit")
        payload = r.exact(payload_size, "object payload")
        if flags & FLAG_ZSTD:
            try:
                data = zd.decompress(payload, max_output_size=raw_size)
            except zstandard.ZstdError as exc:
                raise MalformedPack(f"bad compressed payload for {raw_id.hex()[:12]}") from exc
        else:
            data = payload
        if len(data) != raw_size:
            raise MalformedPack(f"object {raw_id.hex()[:12]} has the wrong size")
        oid = ObjectId(raw_id)
        actual = ObjectId.of(data)
        if actual != oid:
            raise CorruptObject(
                f"object {oid.short()} in pack is corrupt: its bytes hash to {actual.short()}",
                oid=oid,
                expected=oid,
                actual=actual,
            )
        count += 1
        yield oid, otype, data, (payload if flags & FLAG_ZSTD else None)


def decode_all(stream: BinaryIO, **kw: int) -> list[WireObject]:
    """Every object of a pack, or an error and nothing."""
    return list(decode(stream, **kw))


# -- random access (S3 packs are read with ranged GETs; see docs/format.md, "S3 layout") --


def frame_index(data: bytes) -> list[tuple[ObjectId, ObjType, int, int]]:
    """``(id, type, offset, length)`` of every frame of an encoded pack, in order.

    ``offset``/``length`` cover the frame header and payload, so the bytes
    ``data[offset:offset + length]`` can later be fetched alone and read with
    :func:`decode_frame`. The pack itself is not verified here (its writer made it).
    """
    out = []
    pos = len(MAGIC) + 1
    while data[pos] != END:
        otype, _flags, raw_id, _raw, payload = _FRAME.unpack_from(data, pos)
        length = _FRAME.size + payload
        out.append((ObjectId(raw_id), ObjType(otype), pos, length))
        pos += length
    return out


def decode_frame(frame: bytes | memoryview, *, max_object: int = MAX_OBJECT) -> WireObject:
    """One object from the bytes of exactly one frame, verified against its id."""
    if len(frame) < _FRAME.size:
        raise MalformedPack("pack frame is truncated (in frame header)")
    otype_code, flags, raw_id, raw_size, payload_size = _FRAME.unpack_from(frame, 0)
    if len(frame) != _FRAME.size + payload_size:
        raise MalformedPack(f"pack frame for {raw_id.hex()[:12]} has the wrong length")
    if raw_size > max_object:
        raise MalformedPack(f"object of {raw_size} bytes exceeds the pack limit")
    try:
        otype = ObjType(otype_code)
    except ValueError as exc:
        raise MalformedPack(f"unknown object type {otype_code} in pack") from exc
    payload = bytes(frame[_FRAME.size :])
    if flags & FLAG_ZSTD:
        try:
            data = zstandard.ZstdDecompressor().decompress(payload, max_output_size=raw_size)
        except zstandard.ZstdError as exc:
            raise MalformedPack(f"bad compressed payload for {raw_id.hex()[:12]}") from exc
    else:
        data = payload
    oid = ObjectId(raw_id)
    actual = ObjectId.of(data)
    if len(data) != raw_size or actual != oid:
        raise CorruptObject(
            f"object {oid.short()} is corrupt: its bytes hash to {actual.short()}",
            oid=oid,
            expected=oid,
            actual=actual,
        )
    return oid, otype, data
