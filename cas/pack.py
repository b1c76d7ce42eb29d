"""The pack stream: how objects travel between stores (docs/format.md, "Pack stream").

A pack is a header, one frame per object, and a trailer::

    header   b"CASPACK" 0x00, u8 version (=1)
    frame    u8 type | u8 flags | 32-byte id | u64 LE raw size | u64 LE payload size | payload
    trailer  u8 0xFF | u64 LE object count | 32-byte BLAKE3 of every byte before the trailer

``flags & 1`` means the payload is zstd-compressed: one zstd frame, or, for a blob over
MULTI_FRAME_MIN, several frames one after the other (a chunked blob sent as its stored
chunks' frames, see :class:`Framed`); the id is always BLAKE3 of the raw bytes. The trailer makes truncation detectable: a stream cut anywhere fails to parse.
Readers verify every object's id as it is decoded and reject the whole pack on the first
bad frame, so a receiver stores a pack all or nothing.
"""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Collection, Container, Iterable, Iterator, Mapping, Sequence
from typing import BinaryIO, NamedTuple, Protocol, TypeVar

import blake3
import zstandard

from cas.codec import STRUCTURED, ObjType
from cas.digest import ObjectId, verify_id
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
#: Refuse objects above this size in a pack (a blob travels whole, however stored).
MAX_OBJECT = 1 << 30
#: Only a blob larger than this may travel as several zstd frames (equal to
#: cas.store.CHUNK_THRESHOLD: every store keeps such a blob chunked, never as the
#: payload it was sent in, whose frames a one-frame record could not hold).
MULTI_FRAME_MIN = 4 << 20
#: The frames of such a payload: all but the last of one size, at least this (a store's
#: chunks are 4 MiB), which bounds how many one payload holds.
MULTI_FRAME_STEP = 1 << 20
#: Fewest content bytes per zstd block, on average, that a frame may have (see _frame_length).
MIN_BLOCK_AVG = 512
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Refuse structured objects (commit, tag, env, manifest node) above this size: they are
#: decoded whole to be checked, and real ones are kilobytes.
MAX_STRUCTURED = 16 << 20
#: Largest frame (header and payload) a pack may hold: what :func:`frames` accepts.
MAX_FRAME = _FRAME.size + MAX_OBJECT

WireObject = tuple[ObjectId, ObjType, bytes]
#: What a fetching caller knows in advance: the types each id may have (Remote.fetch).
Expect = Mapping[ObjectId, Collection[ObjType]]


def check_expected(
    oid: ObjectId, otype: ObjType, raw_size: int | None, types: Collection[ObjType] | None, source: str
) -> None:
    """Refuse, from a frame or record header alone, an object that is not of the
    ``types`` its caller expects (None: any), or a structured object over MAX_STRUCTURED.

    Called before the object's content is read or decompressed, so that a remote naming
    a 1 GiB blob where a commit belongs costs nothing. ``source`` names the remote;
    ``raw_size`` is None where only the type is known yet (an S3 pack index).
    """
    if types is not None and otype not in types:
        labels = " or ".join(sorted(t.label for t in types)) or "nothing"
        size = "" if raw_size is None else f" of {raw_size} bytes"
        raise CorruptObject(
            f"object {oid.short()} from {source} is a {otype.label}{size}, expected a {labels}",
            oid=oid,
            url=source,
        )
    if otype in STRUCTURED and raw_size is not None and raw_size > MAX_STRUCTURED:
        raise MalformedPack(
            f"{otype.label} {oid.short()} from {source} is {raw_size} bytes, "
            f"over the limit of {MAX_STRUCTURED}",
            url=source,
        )


class Checked(tuple[ObjectId, ObjType, bytes]):
    """A WireObject whose bytes :func:`decode` (or :func:`decode_frame`) hashed against
    its id as it read them: a receiver does not hash it again (:func:`is_checked`).
    Only this module makes one, and only after that check; a remote's answer is bytes,
    so no remote can hand one over unchecked."""

    __slots__ = ()


class Framed(tuple[ObjectId, ObjType, bytes]):
    """A WireObject that also carries ``frame``: a zstd frame of its bytes, as a store
    holds it (store.objects.get_many_frames); for a chunked blob, its chunks' stored frames one
    after the other (``frames`` > 1, see :func:`from_store`).

    :func:`encode` sends the frame as the payload instead of the raw bytes, whatever its
    ``level``: it costs no CPU (``level=None`` only means "spend none on zstd"), halves
    the bytes on the wire and lets the receiver store the frame as it is once it has
    verified it (cas.store.records.encode). Several frames go only to a receiver that reads
    them (``encode(multi_frame=True)``). Everywhere else it is a plain 3-tuple.
    """

    frame: bytes
    frames: int
    checked: bool  # its bytes were hashed against its id by decode (see Checked)
    #: Set by decode only, for a blob that came as its chunks' frames: each chunk's id,
    #: size and frame, hashed as it was decompressed (cas.ingest.records keeps them as
    #: they are, without hashing the chunks again).
    chunks: list[ChunkFrame] | None

    def __new__(
        cls,
        oid: ObjectId,
        otype: ObjType,
        data: bytes,
        frame: bytes,
        frames: int = 1,
        *,
        checked: bool = False,
        chunks: list[ChunkFrame] | None = None,
    ) -> Framed:
        self = super().__new__(cls, (oid, otype, data))
        self.frame = frame
        self.frames = frames
        self.checked = checked
        self.chunks = chunks if checked else None
        return self


class ChunkFrame(NamedTuple):
    """One chunk of a blob that travelled as its chunks' zstd frames: the chunk's id (the
    hash of what ``frame`` decompressed to), its size, and the frame as it came."""

    oid: ObjectId
    size: int
    frame: bytes | memoryview


class Sized(NamedTuple):
    """An object to send as the zstd frame(s) a store keeps it in, its bytes never read:
    a frame header needs only their length (:func:`from_store_frames`, what `cas serve`
    answers a fetch with). Only :func:`encode` takes one; the receiver decompresses and
    verifies the frames as any others."""

    oid: ObjectId
    otype: ObjType
    raw_size: int
    frame: bytes


def is_checked(obj: WireObject) -> bool:
    """Whether :func:`decode` hashed ``obj``'s bytes against its id already (so that a
    fetch hashes every received byte once: cas.ingest.verify_objects skips it)."""
    return type(obj) is Checked or (type(obj) is Framed and obj.checked)


class _StoreReader(Protocol):
    def get_many_frames(
        self, oids: Iterable[ObjectId]
    ) -> Mapping[ObjectId, tuple[ObjType, bytes, bytes | None]]: ...

    def chunk_ids(self, oid: ObjectId) -> list[ObjectId]: ...


class _FrameReader(_StoreReader, Protocol):
    def stored_frames(
        self, oids: Iterable[ObjectId], *, multi: bool
    ) -> Mapping[ObjectId, tuple[ObjType, int, bytes]]: ...


def from_store(objects: _StoreReader, oids: Sequence[ObjectId]) -> Iterator[WireObject | None]:
    """The objects ``oids`` as a store's ``objects`` hold them, in order (None for one it lacks):
    a :class:`Framed` for each stored as one zstd frame, and for a chunked blob whose
    chunks are all stored compressed, a Framed of its chunks' frames; else plain."""
    got = objects.get_many_frames(oids)
    for oid in oids:
        if oid not in got:
            yield None
            continue
        otype, data, frame = got[oid]
        if frame is not None:
            yield Framed(oid, otype, data, frame)
            continue
        chunks = objects.chunk_ids(oid) if otype == ObjType.BLOB and len(data) > MULTI_FRAME_MIN else []
        parts = objects.get_many_frames(chunks) if chunks else {}
        stored = [parts[c][2] if c in parts else None for c in chunks]
        if chunks and all(f is not None for f in stored):
            yield Framed(oid, otype, data, b"".join(stored), frames=len(stored))  # type: ignore[arg-type]
        else:
            yield oid, otype, data


def from_store_frames(
    objects: _FrameReader, oids: Sequence[ObjectId], *, multi_frame: bool
) -> Iterator[WireObject | Sized | None]:
    """:func:`from_store` for a pack to be encoded: what the store keeps as zstd frames
    (a chunked blob's chunk frames with ``multi_frame``) comes as :class:`Sized`,
    without decompressing it to learn its length; the rest as from_store gives it."""
    stored = objects.stored_frames(oids, multi=multi_frame)
    rest = [o for o in oids if o not in stored]
    others = dict(zip(rest, from_store(objects, rest), strict=True)) if rest else {}
    for oid in oids:
        if oid in stored:
            otype, size, frame = stored[oid]
            yield Sized(oid, otype, size, frame)
        else:
            yield others[oid]


def encode(
    objects: Iterable[WireObject | Sized], *, level: int | None = 3, multi_frame: bool = False
) -> Iterator[bytes]:
    """Yield the bytes of one pack holding ``objects``, frame by frame.

    ``level=None`` sends every payload raw (fast links, where zstd costs more CPU time
    than the bytes it saves take to send). ``multi_frame``: the receiver reads a blob
    payload of several frames (this version does; one of before it refuses them), so a
    chunked blob's stored frames are sent as they are rather than the raw bytes.
    """
    zc = zstandard.ZstdCompressor(level=level) if level is not None else None
    h = blake3.blake3()
    count = 0
    head = MAGIC + bytes((VERSION,))
    h.update(head)
    yield head
    for obj in objects:
        if isinstance(obj, Sized):
            oid, otype, size = obj.oid, obj.otype, obj.raw_size
            flags, payload = FLAG_ZSTD, obj.frame
        else:
            oid, otype, data = obj
            size = len(data)
            flags, payload = 0, data
            if type(obj) is Framed and (obj.frames == 1 or multi_frame):
                flags, payload = FLAG_ZSTD, obj.frame
            elif zc is not None and size >= COMPRESS_MIN:
                packed = zc.compress(data)
                if len(packed) < size * 0.9:
                    flags, payload = FLAG_ZSTD, packed
        frame = _FRAME.pack(int(otype), flags, oid.raw, size, len(payload))
        h.update(frame)
        h.update(payload)
        count += 1
        yield frame
        yield payload
    yield _TRAILER.pack(END, count, h.digest())


def encode_bytes(objects: Iterable[WireObject | Sized], *, level: int | None = 3, multi_frame: bool = False) -> bytes:
    return b"".join(encode(objects, level=level, multi_frame=multi_frame))


Sendable = TypeVar("Sendable", WireObject, "WireObject | Sized")


def raw_size(obj: WireObject | Sized) -> int:
    """The raw (uncompressed) size of an object to send, without reading its bytes."""
    return obj.raw_size if type(obj) is Sized else len(obj[2])  # type: ignore[union-attr,arg-type]


def batches(objects: Iterable[Sendable], max_bytes: int = PACK_BYTES) -> Iterator[list[Sendable]]:
    """Split a stream of objects into lists of about ``max_bytes`` raw bytes each.

    An object of half ``max_bytes`` or more travels alone in its own pack, so a pack
    never holds more than about ``max_bytes`` and a cut transfer loses at most one
    large object's progress.
    """
    batch: list[Sendable] = []
    size = 0
    for obj in objects:
        n = raw_size(obj) + 64
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
        # one part (what every reader here gives) is handed on as it is: a view stays one
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if hashed:
            self.hash.update(data)
        return data


#: Bytes decompressed per step: a frame's content is produced (and hashed) in steps of
#: this size, so memory follows what a frame really holds, never what it claims.
INFLATE_STEP = 1 << 20
#: Above this size an object is hashed before it is kept in memory (a second pass
#: decompresses it), so a lying frame costs one step of memory, not its declared size.
VERIFY_FIRST = 16 << 20


class Frame:
    """One frame of a pack, its payload read but its content not yet kept.

    ``verify()`` hashes the content step by step (bounded memory); ``data()`` returns
    the content; ``reader()`` reads it as a stream (a large blob goes to the store that
    way, never whole in memory). Every one of them refuses a payload whose content
    differs from the declared ``raw_size`` before producing more than that.
    """

    __slots__ = ("oid", "otype", "raw_size", "payload", "compressed", "_verified")

    def __init__(self, oid: ObjectId, otype: ObjType, raw_size: int, payload: bytes, compressed: bool) -> None:
        self.oid = oid
        self.otype = otype
        self.raw_size = raw_size
        self.payload = payload
        self.compressed = compressed
        self._verified = False

    @property
    def multi_frame_ok(self) -> bool:
        """Whether the payload may be several zstd frames (a blob over MULTI_FRAME_MIN)."""
        return self.otype == ObjType.BLOB and self.raw_size > MULTI_FRAME_MIN

    @property
    def packed(self) -> bytes | None:
        """The zstd frame as sent, or None when the payload is the raw bytes or several
        frames (which no store record holds as they are)."""
        if not self.compressed:
            return None
        if self.multi_frame_ok and _frame_length(self.payload, self.raw_size) != len(self.payload):
            return None
        return self.payload

    def chunks(self) -> Iterator[bytes]:
        """The content, in steps of at most INFLATE_STEP bytes (not verified here)."""
        if not self.compressed:
            if len(self.payload) != self.raw_size:
                raise MalformedPack(f"object {self.oid.short()} has the wrong size")
            yield self.payload
            return
        yield from inflate(self.payload, self.raw_size, what=f"object {self.oid.short()}",
                           multi_frame=self.multi_frame_ok)

    def verify(self) -> None:
        """Hash the content against the id without keeping it."""
        if self._verified:
            return
        if self.compressed and self.raw_size <= VERIFY_FIRST and one_frame(self.payload, self.raw_size):
            # in one call (as data() does): a lie costs at most raw_size <= VERIFY_FIRST
            self._check(ObjectId.of(inflate_frame(self.payload, self.raw_size, what=f"object {self.oid.short()}")))
            return
        h = blake3.blake3()
        for chunk in self.chunks():
            h.update(chunk)
        self._check(ObjectId(h.digest()))

    def data(self) -> bytes:
        """The verified content (hashed first, in steps, when large)."""
        if self.raw_size > VERIFY_FIRST:
            self.verify()
        if not self.compressed:
            data = self.payload
        elif one_frame(self.payload, self.raw_size):
            data = inflate_frame(self.payload, self.raw_size, what=f"object {self.oid.short()}")
        else:  # no declared size, or several frames: in steps, joined once
            data = b"".join(self.chunks())
        if not self._verified:
            self._check(ObjectId.of(data))
        return data

    def reader(self) -> BinaryIO:
        """A file-like reader of the verified content (verified first, in steps)."""
        self.verify()
        if not self.compressed:
            return io.BytesIO(self.payload)
        return zstandard.ZstdDecompressor().stream_reader(  # type: ignore[return-value]
            self.payload, read_across_frames=self.multi_frame_ok)

    def _check(self, actual: ObjectId) -> None:
        verify_id(self.oid, actual, source="a pack")
        self._verified = True


def inflate(
    payload: bytes | memoryview, raw_size: int, *, what: str, multi_frame: bool = False
) -> Iterator[bytes]:
    """The content of the zstd frame ``payload``, which must be exactly ``raw_size`` bytes.

    The frame header's content size, when present, is checked before anything is
    decompressed; the content is then produced in steps of INFLATE_STEP and refused as
    soon as it passes ``raw_size``, so a bomb (a frame claiming a petabyte, a small frame
    expanding to gigabytes, a frame without a content size) costs one step of memory.
    ``multi_frame``: the payload may be several zstd frames one after the other, each
    declaring its content size, the sizes adding up to ``raw_size``.
    """
    try:
        declared = zstandard.frame_content_size(payload)
        first = _frame_length(payload, raw_size)
    except (zstandard.ZstdError, struct.error) as exc:
        raise MalformedPack(f"bad compressed payload for {what}") from exc
    several = first != len(payload)
    if several and multi_frame:
        declared = _declared_frames(payload, what)
    if declared not in (-1, raw_size):
        raise MalformedPack(f"{what}: its zstd frame claims {declared} bytes, not the {raw_size} declared")
    if several and not multi_frame:
        # A store reads the first frame only: bytes after it would be stored unread.
        raise MalformedPack(f"bad compressed payload for {what}: not exactly one zstd frame")
    reader = zstandard.ZstdDecompressor().stream_reader(payload, read_across_frames=several)
    left = raw_size
    try:
        while True:
            chunk = reader.read(min(INFLATE_STEP, left + 1))
            if not chunk:
                break
            left -= len(chunk)
            if left < 0:
                raise MalformedPack(f"{what} decompresses to more than its declared {raw_size} bytes")
            yield chunk
    except zstandard.ZstdError as exc:
        raise MalformedPack(f"bad compressed payload for {what}") from exc
    finally:
        reader.close()
    if left:
        raise MalformedPack(f"{what} has the wrong size")


_LOCAL = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    """This thread's zstd decompressor (a context is not for two threads at once)."""
    dctx: zstandard.ZstdDecompressor | None = getattr(_LOCAL, "dctx", None)
    if dctx is None:
        dctx = _LOCAL.dctx = zstandard.ZstdDecompressor()
    return dctx


def one_frame(payload: bytes | memoryview, raw_size: int) -> bool:
    """Whether ``payload`` is exactly one zstd frame that declares ``raw_size`` bytes of
    content: what :func:`inflate_frame` takes. False for anything else, junk included
    (the caller then reads it with :func:`inflate`, which names what is wrong)."""
    try:
        return (
            zstandard.frame_content_size(payload) == raw_size
            and _frame_length(payload, raw_size) == len(payload)
        )
    except (zstandard.ZstdError, struct.error):
        return False


def inflate_frame(frame: bytes | memoryview, raw_size: int, *, what: str) -> bytes:
    """The content of ``frame``, one zstd frame declaring ``raw_size`` bytes (checked by
    :func:`one_frame`), in one call and one buffer of exactly that size: zstd refuses a
    frame that decodes to more or less than it declares, so a lie costs at most
    ``raw_size`` bytes of memory, the size the caller accepted for the object. About
    twice as fast as :func:`inflate`'s steps joined, which copy the content twice more
    (a large copy costs page faults as well as memcpy)."""
    if not one_frame(frame, raw_size):
        raise MalformedPack(f"bad compressed payload for {what}: not one zstd frame of {raw_size} bytes")
    try:
        out: bytes = _decompressor().decompress(frame)
    except zstandard.ZstdError as exc:
        raise MalformedPack(f"bad compressed payload for {what}") from exc
    if len(out) != raw_size:  # zstd checks it; kept so that no lie depends on that alone
        raise MalformedPack(f"{what} has the wrong size")
    return out


def checked_chunks(f: Frame, frames: list[memoryview], *, keep: bool) -> tuple[list[ChunkFrame], list[bytes]]:
    """Verify the blob of frame ``f``, sent as ``frames`` (its chunks' zstd frames, as
    :func:`chunk_split` found them), hashing each chunk once as a chunk and as part of
    the blob: every frame is decompressed in one call (:func:`inflate_frame`), into at
    most a chunk's memory. Returns each chunk's id, size and frame, and with ``keep``
    the chunks' contents too (held only up to VERIFY_FIRST bytes of content before the
    blob is verified: above it, a second pass decompresses them once it is)."""
    hold = keep and f.raw_size <= VERIFY_FIRST
    whole = blake3.blake3()
    out: list[ChunkFrame] = []
    held: list[bytes] = []
    what = f"blob {f.oid.short()}"
    for frame in frames:
        size = zstandard.frame_content_size(frame)
        chunk = inflate_frame(frame, size, what=what)
        whole.update(chunk)
        out.append(ChunkFrame(ObjectId.of(chunk), size, frame))
        if hold:
            held.append(chunk)
    f._check(ObjectId(whole.digest()))
    if keep and not hold:
        held = [inflate_frame(c.frame, c.size, what=what) for c in out]
    return out, held


_BLOCK = struct.Struct("<I")


def _declared_frames(payload: bytes | memoryview, what: str) -> int:
    """The content sizes that the zstd frames making up ``payload`` declare, added up;
    every frame must be a zstd frame (no skippable ones) that declares its size, and all
    but the last the same size, at least MULTI_FRAME_STEP (how a store holds chunks), so
    a payload holds at most MAX_OBJECT / MULTI_FRAME_STEP + 1 frames."""
    view = memoryview(payload)
    total = pos = 0
    step: int | None = None
    last_size = 0
    try:
        while pos < len(view):
            if bytes(view[pos : pos + 4]) != _ZSTD_MAGIC:
                raise zstandard.ZstdError("not a zstd frame")
            size = zstandard.frame_content_size(view[pos:])
            if size < 0:
                raise MalformedPack(f"bad compressed payload for {what}: a frame of several without its size")
            if step is None:
                step = size
            elif last_size != step:  # a frame that was not the last differs from the first
                raise MalformedPack(f"bad compressed payload for {what}: frames of unequal sizes")
            if step < MULTI_FRAME_STEP:
                raise MalformedPack(f"bad compressed payload for {what}: frames under {MULTI_FRAME_STEP} bytes")
            last_size = size
            total += size
            pos += _frame_length(view[pos:], size)
    except (zstandard.ZstdError, struct.error, IndexError) as exc:
        raise MalformedPack(f"bad compressed payload for {what}") from exc
    return total


def chunk_split(payload: bytes | memoryview, raw_size: int, chunk_size: int) -> list[memoryview] | None:
    """The zstd frames of ``payload`` when they are those of the ``chunk_size`` slices of
    ``raw_size`` bytes, as a sender that stores a blob chunked sends it (:func:`from_store`):
    every frame but the last declares ``chunk_size`` bytes, the last the rest. None for
    anything else (one frame, frames of other sizes, junk), where a receiver compresses
    the chunks itself; junk is refused there, by :func:`inflate`.

    Nothing is decompressed here: a frame is walked only after its declared size passed,
    so the walk is bounded as in :func:`_declared_frames`. The caller still decompresses
    every frame (zstd checks that each decodes to the size it declares) and verifies the
    content against its id before it keeps frame i as the record of chunk i.
    """
    view = memoryview(payload)
    out: list[memoryview] = []
    pos = total = 0
    try:
        while pos < len(view):
            size = zstandard.frame_content_size(view[pos:])
            if out and zstandard.frame_content_size(out[-1]) != chunk_size or not 0 < size <= chunk_size:
                return None
            end = pos + _frame_length(view[pos:], size)
            if end > len(view):
                return None
            out.append(view[pos:end])
            total, pos = total + size, end
    except (zstandard.ZstdError, struct.error, IndexError):
        return None
    return out if len(out) > 1 and total == raw_size else None


def _frame_length(payload: bytes | memoryview, content: int) -> int:
    """Bytes taken by the zstd frame at the start of ``payload``, from its block headers
    alone (what ZSTD_findFrameCompressedSize computes; python-zstandard lacks it).

    The walk is Python, one step per block, so a frame of ``content`` bytes may have at
    most ``content // MIN_BLOCK_AVG + 64`` blocks: an encoder writes blocks of up to
    128 KiB, while a hostile frame of one-byte blocks would hold the GIL for seconds."""
    pos = zstandard.frame_header_size(payload)
    blocks = content // MIN_BLOCK_AVG + 64
    while True:
        blocks -= 1
        if blocks < 0:
            raise zstandard.ZstdError(f"more blocks than {content} bytes of content need")
        (head,) = _BLOCK.unpack(bytes(payload[pos : pos + 3]) + b"\0")
        pos += 3
        last, kind, size = head & 1, (head >> 1) & 3, head >> 3
        if kind == 3:
            raise zstandard.ZstdError("reserved block type")
        pos += 1 if kind == 1 else size  # an RLE block holds one byte
        if last:
            break
    if zstandard.get_frame_parameters(payload).has_checksum:
        pos += 4
    return pos


def decode(
    stream: BinaryIO,
    *,
    max_object: int = MAX_OBJECT,
    want: Container[ObjectId] | None = None,
    expect: Expect | None = None,
    source: str = "pack",
) -> Iterator[WireObject]:
    """Yield verified objects from a pack stream.

    Raises MalformedPack on bad framing or truncation and CorruptObject when an object's
    bytes do not hash to its id. ``want``, when given, is the set of ids the caller asked
    for: any other object is refused before it is decompressed; so is one whose type is
    not among those ``expect`` gives for its id (:func:`check_expected`, errors naming
    ``source``). Callers that must store all or nothing collect the objects first
    (:func:`decode_all`).
    """
    for f in frames(stream, max_object=max_object, want=want, expect=expect, source=source):
        yield _received(f)


def _received(f: Frame) -> WireObject:
    """The verified object of frame ``f``, with the zstd frames it came in: a receiving
    store keeps them as they are (cas.ingest.records) instead of compressing the bytes
    again."""
    parts = _chunk_frames(f)
    if parts:  # each chunk decompressed and hashed once, its id kept for the store
        chunks, held = checked_chunks(f, parts, keep=True)
        return Framed(f.oid, f.otype, b"".join(held), f.payload, len(parts), checked=True, chunks=chunks)
    data = f.data()
    if f.packed is not None:
        return Framed(f.oid, f.otype, data, f.payload, 1, checked=True)
    return Checked((f.oid, f.otype, data))


def _chunk_frames(f: Frame) -> list[memoryview] | None:
    """A blob's frames when they are its MULTI_FRAME_MIN (a store's CHUNK_SIZE) slices'."""
    if not (f.compressed and f.multi_frame_ok):
        return None
    return chunk_split(f.payload, f.raw_size, MULTI_FRAME_MIN)


def frames(
    stream: BinaryIO,
    *,
    max_object: int = MAX_OBJECT,
    want: Container[ObjectId] | None = None,
    expect: Expect | None = None,
    source: str = "pack",
) -> Iterator[Frame]:
    """Yield the frames of a pack, framing checked, content not yet decompressed.

    The caller verifies each (Frame.verify / data / reader) before using it; the
    trailer is checked when the last frame has been taken. Sizes over ``max_object``
    (MAX_STRUCTURED for a structured object), ids outside ``want``, an id of ``want``
    sent twice and types other than ``expect`` names for the id are refused from the
    frame header alone, before the payload is read: an answer to a fetch holds at most
    one frame per id asked for.
    """
    r = _Reader(stream)
    head = r.exact(len(MAGIC) + 1, "header")
    if head[: len(MAGIC)] != MAGIC:
        raise MalformedPack("not a cas pack (bad magic)")
    if head[-1] != VERSION:
        raise FormatVersionError(f"pack version {head[-1]} is not supported (this cas reads {VERSION})")
    count = 0
    seen: set[ObjectId] = set()
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
            raise MalformedPack(
                f"object of {max(raw_size, payload_size)} bytes exceeds the limit of {max_object}"
            )
        if otype in STRUCTURED and raw_size > MAX_STRUCTURED:
            raise MalformedPack(
                f"{otype.name.lower()} of {raw_size} bytes exceeds the limit of {MAX_STRUCTURED}"
            )
        oid = ObjectId(raw_id)
        if want is not None and oid not in want:
            raise MalformedPack(f"pack holds object {oid.short()}, which was not asked for")
        if want is not None:
            if oid in seen:
                # An answer repeating what it sent could run on for ever, each copy verified.
                raise MalformedPack(f"pack holds object {oid.short()} twice")
            seen.add(oid)
        if expect is not None:
            check_expected(oid, otype, raw_size, expect.get(oid), source)
        payload = r.exact(payload_size, "object payload")
        count += 1
        yield Frame(oid, otype, raw_size, payload, bool(flags & FLAG_ZSTD))


def decode_all(
    stream: BinaryIO,
    *,
    max_object: int = MAX_OBJECT,
    want: Container[ObjectId] | None = None,
    expect: Expect | None = None,
    source: str = "pack",
) -> list[WireObject]:
    """Every object of a pack, or an error and nothing."""
    return list(decode(stream, max_object=max_object, want=want, expect=expect, source=source))


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


def decode_frame(
    frame: bytes | memoryview,
    *,
    max_object: int = MAX_OBJECT,
    types: Collection[ObjType] | None = None,
    source: str = "pack",
) -> WireObject:
    """One object from the bytes of exactly one frame, verified against its id.

    Its header is checked first (:func:`check_expected` with ``types``): a frame of
    another type, or a structured one over MAX_STRUCTURED, is never decompressed.
    Returned as :func:`decode` yields it: with the zstd frame it came in (an S3 fetch
    stores that frame as it is, instead of compressing the bytes again).
    """
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
    check_expected(ObjectId(raw_id), otype, raw_size, types, source)
    f = Frame(ObjectId(raw_id), otype, raw_size, bytes(frame[_FRAME.size :]), bool(flags & FLAG_ZSTD))
    return _received(f)
