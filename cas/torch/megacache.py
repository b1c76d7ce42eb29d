"""Torch's Mega-Cache container, decoded and encoded without importing torch.

``torch.compiler.save_cache_artifacts()`` returns bytes in the format of
``torch/utils/_appending_byte_serializer.py`` (encoding version 1)::

    [0:4]   crc32(data[4:]), big-endian
    [4:12]  uint64 BE encoding version (1)
    blocks until EOF, one per artifact type:
        uint64 len + base64(utf8(type))
        uint64 count
        count x { uint64 len + base64(utf8(key)) ; uint64 len + raw content }

Splitting it here (rather than through torch) lets ``cas import-megacache`` store one
entry per artifact and lets export rebuild a container from any subset of entries, with
nothing unpickled on the way. A codec only: the store side (import as a commit, export a
ref) is :func:`cas.torch.capture.import_megacache` / :func:`~cas.torch.capture.export_megacache`.
"""

from __future__ import annotations

import base64
import binascii
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from cas.errors import CorruptObject

__all__ = [
    "ENCODING_VERSION",
    "MEGACACHE_KINDS",
    "Artifact",
    "decode",
    "encode",
]

ENCODING_VERSION = 1
#: The artifact types torch 2.13 registers (``CacheArtifactFactory``).
MEGACACHE_KINDS = ("inductor", "aot_autograd", "autotune", "pgo", "precompile")

_U64 = struct.Struct(">Q")


@dataclass(frozen=True)
class Artifact:
    """One Mega-Cache artifact: its type, torch's key, and the raw content."""

    kind: str
    key: str
    content: bytes


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 4

    def done(self) -> bool:
        return self.pos == len(self.data)

    def u64(self) -> int:
        if self.pos + 8 > len(self.data):
            raise CorruptObject("mega-cache container is truncated")
        (value,) = _U64.unpack_from(self.data, self.pos)
        self.pos += 8
        return int(value)

    def raw(self) -> bytes:
        size = self.u64()
        if self.pos + size > len(self.data):
            raise CorruptObject("mega-cache container is truncated")
        out = self.data[self.pos : self.pos + size]
        self.pos += size
        return out

    def text(self) -> str:
        try:
            return base64.b64decode(self.raw(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise CorruptObject(f"mega-cache container has a malformed name: {exc}") from exc


def decode(data: bytes) -> list[Artifact]:
    """Split a Mega-Cache container into its artifacts, checking its CRC and version.

    Raises :class:`CorruptObject` for anything that is not a well-formed container.
    """
    data = bytes(data)
    if len(data) < 12:
        raise CorruptObject("not a mega-cache file: too short")
    if zlib.crc32(data[4:]).to_bytes(4, "big") != data[:4]:
        raise CorruptObject("not a mega-cache file: checksum does not match")
    reader = _Reader(data)
    version = reader.u64()
    if version != ENCODING_VERSION:
        raise CorruptObject(f"mega-cache encoding version {version} is not supported")
    out: list[Artifact] = []
    while not reader.done():
        kind = reader.text()
        for _ in range(reader.u64()):
            key = reader.text()
            out.append(Artifact(kind, key, reader.raw()))
    return out


def _text(s: str) -> bytes:
    payload = base64.b64encode(s.encode("utf-8"))
    return _U64.pack(len(payload)) + payload


def encode(artifacts: Iterable[Artifact]) -> bytes:
    """Build a container ``torch.compiler.load_cache_artifacts`` accepts.

    Artifacts are grouped by kind, in the order kinds first appear.
    """
    groups: dict[str, list[Artifact]] = {}
    for a in artifacts:
        groups.setdefault(a.kind, []).append(a)
    body = bytearray(_U64.pack(ENCODING_VERSION))
    for kind, items in groups.items():
        body += _text(kind)
        body += _U64.pack(len(items))
        for a in items:
            body += _text(a.key)
            body += _U64.pack(len(a.content))
            body += a.content
    return zlib.crc32(body).to_bytes(4, "big") + bytes(body)
