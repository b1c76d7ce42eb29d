"""Hostile packs for tests: zstd frames made of RLE blocks, whose content (gigabytes)
is thousands of times their size, and packs framing them with any declared size.

A frame's bytes are written by hand (RFC 8878): a 4-byte RLE block stands for 128 KiB
of one byte, so a 5 GiB frame is 160 KB and costs nothing to build.
"""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import blake3

from cas import pack
from cas.codec import ObjType
from cas.digest import ObjectId

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MiB = 1 << 20
#: The request limit of the servers under attack (tests/server/conftest.py ``small``),
#: and the memory a process under attack may use beyond it.
LIMIT = 1 * MiB
HEADROOM = 128 * MiB
BLOCK = 128 << 10
GiB = 1 << 30


def peak_rss(pid: int | str, field: str = "VmHWM") -> int:
    """The high-water mark of a process's resident memory (VmHWM; or another memory
    field of its /proc status, e.g. VmRSS), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc status")


def rle_frame(total: int, content_size: int | None = None, byte: int = 0) -> bytes:
    """A zstd frame whose content is ``total`` copies of ``byte``; its header claims
    ``content_size`` (absent when None), whatever the content really is."""
    descriptor = 0xC0 if content_size is not None else 0x00  # 8-byte content size, or none
    head = ZSTD_MAGIC + bytes((descriptor, 0x38))  # window 128 KiB
    if content_size is not None:
        head += struct.pack("<Q", content_size)
    full, rest = divmod(total, BLOCK)
    sizes = [BLOCK] * full + ([rest] if rest else [])
    blocks = [
        struct.pack("<I", (size << 3) | (1 << 1) | (i == len(sizes) - 1))[:3] + bytes((byte,))
        for i, size in enumerate(sizes)
    ]
    return head + b"".join(blocks)


def zeros_id(n: int) -> ObjectId:
    """The id of ``n`` zero bytes, hashed in steps (never ``n`` bytes in memory)."""
    h = blake3.blake3()
    step = bytes(1 << 20)
    while n:
        k = min(n, len(step))
        h.update(step[:k])
        n -= k
    return ObjectId(h.digest())


def raw_pack(frames: list[tuple[ObjectId, ObjType, int, bytes]]) -> bytes:
    """A well-framed pack (valid trailer) of ``(id, type, declared raw size, zstd payload)``."""
    h = blake3.blake3()
    parts = [pack.MAGIC + bytes((pack.VERSION,))]
    for oid, otype, raw_size, payload in frames:
        parts.append(pack._FRAME.pack(int(otype), pack.FLAG_ZSTD, oid.raw, raw_size, len(payload)))
        parts.append(payload)
    for p in parts:
        h.update(p)
    parts.append(pack._TRAILER.pack(pack.END, len(frames), h.digest()))
    return b"".join(parts)


FAKE = ObjectId(bytes(range(32)))


@functools.cache
def bombs() -> list[tuple[str, bytes, list[ObjectId]]]:
    """Every bomb shape, as (name, pack bytes, ids that must not be stored)."""
    one_gib = zeros_id(GiB)
    return [
        # a small declared size, a frame without a content size expanding to 5 GiB
        ("5 GiB frame, no content size", raw_pack([(FAKE, ObjType.BLOB, 1000, rle_frame(5 * GiB))]), [FAKE]),
        # the header lies too: it claims the declared size, the blocks hold 5 GiB
        ("5 GiB frame, lying content size",
         raw_pack([(FAKE, ObjType.BLOB, 1000, rle_frame(5 * GiB, content_size=1000))]), [FAKE]),
        ("header claims 1 PiB", raw_pack([(FAKE, ObjType.BLOB, 1000, rle_frame(1000, content_size=1 << 50))]), [FAKE]),
        ("declared size 1 PiB", raw_pack([(FAKE, ObjType.BLOB, 1 << 50, rle_frame(1000, content_size=1 << 50))]), [FAKE]),
        # honest frames (right ids), but three of them unpack to 3 GiB
        ("three 1 GiB frames",
         raw_pack([(one_gib, ObjType.BLOB, GiB, rle_frame(GiB, content_size=GiB))] * 3), [one_gib]),
        ("a 1 GiB commit", raw_pack([(one_gib, ObjType.COMMIT, GiB, rle_frame(GiB, content_size=GiB))]), [one_gib]),
    ]
