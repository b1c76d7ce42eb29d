"""The pack stream: framing, compression, verification, all-or-nothing decoding."""

from __future__ import annotations

import io
import os
import struct

import pytest
import zstandard
from bombs import raw_pack, rle_frame, zeros_id
from hypothesis import given, settings
from hypothesis import strategies as st

from cas import pack
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import CorruptObject, FormatVersionError, MalformedPack


def obj(data: bytes, otype: ObjType = ObjType.BLOB) -> pack.WireObject:
    return ObjectId.of(data), otype, data


def roundtrip(objs: list[pack.WireObject]) -> list[pack.WireObject]:
    return pack.decode_all(io.BytesIO(pack.encode_bytes(objs)))


def test_empty_pack_is_header_and_trailer() -> None:
    data = pack.encode_bytes([])
    assert data[:9] == b"CASPACK\x00\x01"
    assert len(data) == 9 + 41
    assert roundtrip([]) == []


def test_frame_layout_is_as_specified() -> None:
    """docs/format.md section 7, byte by byte."""
    body = b"hello"
    data = pack.encode_bytes([obj(body)])
    t, flags, raw_id, raw_size, payload_size = struct.unpack_from("<BB32sQQ", data, 9)
    assert (t, flags, raw_id, raw_size, payload_size) == (0, 0, ObjectId.of(body).raw, 5, 5)
    assert data[9 + 50 : 9 + 55] == body
    end, count, digest = struct.unpack_from("<BQ32s", data, 9 + 55)
    assert (end, count) == (0xFF, 1)
    import blake3

    assert digest == blake3.blake3(data[: 9 + 55]).digest()


def test_compressible_objects_are_compressed_and_incompressible_are_not() -> None:
    text = b"torch.compile " * 1000
    noise = os.urandom(4000)
    data = pack.encode_bytes([obj(text), obj(noise)])
    assert len(data) < len(text) // 5 + len(noise) + 200
    assert roundtrip([obj(text), obj(noise)]) == [obj(text), obj(noise)]
    # The flags byte tells which: the first frame is zstd, the second raw.
    assert data[10] == pack.FLAG_ZSTD


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=3000), st.sampled_from(list(ObjType))), max_size=8))
def test_roundtrip_property(items: list[tuple[bytes, ObjType]]) -> None:
    objs = [obj(data, t) for data, t in items]
    assert roundtrip(objs) == objs


@settings(max_examples=60, derandomize=True, deadline=None)
@given(st.integers(min_value=0), st.binary(min_size=1, max_size=600))
def test_any_truncation_is_detected(cut_seed: int, body: bytes) -> None:
    data = pack.encode_bytes([obj(body), obj(b"second")])
    cut = cut_seed % len(data)
    with pytest.raises(MalformedPack):
        pack.decode_all(io.BytesIO(data[:cut]))


def test_flipped_payload_byte_is_a_corrupt_object() -> None:
    data = bytearray(pack.encode_bytes([obj(b"abcdef" * 10)]))
    data[9 + 50] ^= 1
    with pytest.raises(CorruptObject, match="corrupt"):
        pack.decode_all(io.BytesIO(bytes(data)))


def test_flipped_header_byte_breaks_the_trailer_digest() -> None:
    """A frame whose claimed id matches its bytes but was altered on the way."""
    a = obj(b"one")
    b = obj(b"two")
    good = pack.encode_bytes([a])
    forged = pack.encode_bytes([b])
    # Splice b's frame into a's pack, keeping a's trailer.
    spliced = good[:9] + forged[9:-41] + good[-41:]
    with pytest.raises(MalformedPack, match="trailer"):
        pack.decode_all(io.BytesIO(spliced))


def test_unknown_type_version_and_trailing_bytes() -> None:
    data = bytearray(pack.encode_bytes([obj(b"x")]))
    bad_type = bytearray(data)
    bad_type[9] = 42
    with pytest.raises(MalformedPack, match="unknown object type"):
        pack.decode_all(io.BytesIO(bytes(bad_type)))
    bad_version = bytearray(data)
    bad_version[8] = 2
    with pytest.raises(FormatVersionError):
        pack.decode_all(io.BytesIO(bytes(bad_version)))
    with pytest.raises(MalformedPack, match="after the pack trailer"):
        pack.decode_all(io.BytesIO(bytes(data) + b"\x00"))
    with pytest.raises(MalformedPack, match="bad magic"):
        pack.decode_all(io.BytesIO(b"GITPACK\x00\x01" + bytes(data[9:])))


def test_oversized_object_is_refused_before_reading_it() -> None:
    data = pack.encode_bytes([obj(b"y" * 100)])
    with pytest.raises(MalformedPack, match="exceeds"):
        pack.decode_all(io.BytesIO(data), max_object=50)


def test_decode_is_streaming_and_stops_at_the_first_bad_object() -> None:
    good, bad = obj(b"good"), (ObjectId.of(b"claimed"), ObjType.BLOB, b"actual")
    it = pack.decode(io.BytesIO(pack.encode_bytes([good, bad])))
    assert next(it) == good
    with pytest.raises(CorruptObject):
        next(it)


def test_batches_bound_pack_size_and_isolate_large_objects() -> None:
    small = [obj(os.urandom(100)) for _ in range(50)]
    large = obj(os.urandom(600))
    stream = [*small[:20], large, *small[20:]]
    got = list(pack.batches(stream, max_bytes=1000))
    assert [o for b in got for o in b] == stream  # order kept, nothing lost
    assert [large] in got  # a large object travels alone
    for b in got:
        assert sum(len(o[2]) + 64 for o in b) < 1000 + 164


def _frames_of(data: bytes, size: int) -> bytes:
    """``data`` as zstd frames of ``size`` bytes each, one after the other (how a store
    holds a chunked blob's chunks)."""
    import zstandard

    zc = zstandard.ZstdCompressor(level=1)
    return b"".join(zc.compress(data[i : i + size]) for i in range(0, len(data), size))


def test_a_big_blob_may_travel_as_several_frames_only_where_asked() -> None:
    data = b"".join(b"line %d of a header\n" % i for i in range(400_000))
    assert len(data) > pack.MULTI_FRAME_MIN
    frames = _frames_of(data, 1 << 20)
    oid = ObjectId.of(data)
    framed = pack.Framed(oid, ObjType.BLOB, data, frames, frames=8)
    sent = pack.encode_bytes([framed], level=None, multi_frame=True)
    assert len(sent) < len(data) / 3
    assert pack.decode_all(io.BytesIO(sent)) == [(oid, ObjType.BLOB, data)]
    (f,) = list(pack.frames(io.BytesIO(sent)))
    assert f.packed is None  # several frames: never stored as one record
    assert f.reader().read() == data
    # To a receiver that did not ask for them: the bytes, by the level (raw here).
    assert len(pack.encode_bytes([framed], level=None)) > len(data)


def _one_frame_pack(oid: ObjectId, otype: ObjType, raw_size: int, payload: bytes) -> bytes:
    body = pack.MAGIC + bytes((pack.VERSION,))
    body += struct.pack("<BB32sQQ", int(otype), pack.FLAG_ZSTD, oid.raw, raw_size, len(payload)) + payload
    import blake3

    return body + struct.pack("<BQ32s", pack.END, 1, blake3.blake3(body).digest())


def test_several_frames_are_refused_for_a_small_blob_or_a_structured_object() -> None:
    small = b"abc" * 1000
    payload = _frames_of(small, 1000)
    for otype in (ObjType.BLOB, ObjType.ENV):
        with pytest.raises(MalformedPack, match="frame"):
            pack.decode_all(io.BytesIO(_one_frame_pack(ObjectId.of(small), otype, len(small), payload)))


def test_several_frames_must_add_up_to_the_declared_size() -> None:
    data = os.urandom(1 << 10) * (5 << 10)  # 5 MiB
    payload = _frames_of(data, 1 << 20)
    lying = _one_frame_pack(ObjectId.of(data), ObjType.BLOB, len(data) + 1, payload)
    with pytest.raises(MalformedPack, match="claims"):
        pack.decode_all(io.BytesIO(lying))
    junk = _one_frame_pack(ObjectId.of(data), ObjType.BLOB, len(data), payload + b"\0" * 8)
    with pytest.raises(MalformedPack, match="bad compressed payload"):
        pack.decode_all(io.BytesIO(junk))


def test_a_payload_of_many_frames_or_tiny_blocks_is_refused_before_it_is_walked() -> None:
    data = b"\0" * (5 << 20)
    oid = ObjectId.of(data)
    # 5 MiB as frames of 64 KiB (a store's chunks are 4 MiB): each frame costs a Python step.
    small = _one_frame_pack(oid, ObjType.BLOB, len(data), _frames_of(data, 64 << 10))
    with pytest.raises(MalformedPack, match="frames under"):
        pack.decode_all(io.BytesIO(small))
    uneven = _one_frame_pack(oid, ObjType.BLOB, len(data), _frames_of(data[: 3 << 20], 2 << 20)
                             + _frames_of(data[3 << 20 :], 1 << 20))
    with pytest.raises(MalformedPack, match="unequal"):
        pack.decode_all(io.BytesIO(uneven))
    # One frame of 5 MiB made of one-byte raw blocks: refused from its block count.
    import zstandard

    head = zstandard.ZstdCompressor(level=1, write_checksum=False).compress(data)
    header = head[: zstandard.frame_header_size(head)]
    def block(last: bool) -> bytes:  # a raw block of one byte (3-byte header, then the byte)
        return struct.pack("<I", (1 << 3) | last)[:3] + b"\0"

    blocks = block(False) * (len(data) - 1) + block(True)
    tiny = _one_frame_pack(oid, ObjType.BLOB, len(data), header + blocks)
    with pytest.raises(MalformedPack, match="bad compressed payload") as refused:
        pack.decode_all(io.BytesIO(tiny))
    assert "more blocks than" in str(refused.value.__cause__)


def test_what_decode_verified_is_not_hashed_again_and_nothing_else_is_trusted() -> None:
    """A fetch hashes each received object once: pack.decode checks it against its id and
    marks it (pack.is_checked), and ingest.verify_objects checks every object not so marked
    (a path remote's store reads, a wrapper's copies), so a bad one is still refused."""
    from cas import ingest

    small, text = obj(b"x" * 100), obj(b"kernel text " * 4096)
    decoded = roundtrip([small, text])
    assert decoded == [small, text]
    assert all(pack.is_checked(o) for o in decoded)
    assert isinstance(decoded[1], pack.Framed)  # compressed: the frame comes along
    ingest.verify_objects(decoded)

    oid, otype, data = decoded[1]
    forged = [
        (oid, otype, data[:-1] + b"!"),  # a plain copy, as a store read or a wrapper makes
        pack.Framed(oid, otype, data[:-1] + b"!", decoded[1].frame),  # from_store: not checked
    ]
    for bad in forged:
        assert not pack.is_checked(bad)
        with pytest.raises(CorruptObject, match="corrupt"):
            ingest.verify_objects([bad])


def test_decode_frame_keeps_the_zstd_frame_it_read() -> None:
    """An S3 fetch reads one frame at a time (decode_frame): each object comes verified
    and with the zstd frame it was read from, which the fetch stores as it is
    (ingest.records) instead of compressing the bytes again."""
    from cas import ingest

    data = b"    tmp0 = tl.load(in_ptr0 + (x0), xmask)\n" * 4000
    oid = ObjectId.of(data)
    packed = pack.encode_bytes([(oid, ObjType.BLOB, data)], level=3)
    ((_, _, off, n),) = pack.frame_index(packed)
    obj = pack.decode_frame(packed[off : off + n])
    assert type(obj) is pack.Framed and pack.is_checked(obj) and bytes(obj[2]) == data
    assert obj.frame == packed[off + n - len(obj.frame) : off + n]  # the payload as read
    ((rid, rtype, record),) = ingest.records([obj])
    assert (rid, rtype) == (oid, ObjType.BLOB) and record.endswith(obj.frame)


@pytest.mark.parametrize("content", [2 << 20, (1 << 20) - 1])
def test_a_frame_lying_about_its_content_size_is_refused_in_one_call(content: int) -> None:
    # The header and the pack frame both say 1 MiB: the frame is decompressed in one
    # call (pack.inflate_frame) into a buffer of that size, and zstd refuses the rest.
    claimed = 1 << 20
    payload = rle_frame(content, content_size=claimed)
    assert pack.one_frame(payload, claimed)
    data = raw_pack([(zeros_id(claimed), ObjType.BLOB, claimed, payload)])
    with pytest.raises(MalformedPack, match="bad compressed payload"):
        pack.decode_all(io.BytesIO(data))


def test_bytes_after_a_single_frame_are_refused_not_ignored() -> None:
    content = b"kernel text " * 1000
    frame = zstandard.compress(content)
    for payload in (frame + b"junk", frame + frame):
        assert not pack.one_frame(payload, len(content))
        data = raw_pack([(ObjectId.of(content), ObjType.BLOB, len(content), payload)])
        with pytest.raises(MalformedPack):
            pack.decode_all(io.BytesIO(data))
