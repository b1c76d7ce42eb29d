"""Canonical encoding of structured objects (docs/format.md, "Object encoding").

A structured object is ``b"cas" + FORMAT_VERSION + type code + body`` where the body is
*canonical MessagePack*: maps have text keys sorted by their UTF-8 bytes, integers use
their shortest form, floats are always float64, text is UTF-8 ``str``, bytes are ``bin``.
The same value therefore always gives the same bytes, and so the same id.

Blobs and chunks are not framed: their bytes are the artifact's bytes, so that a blob id
agrees with ``b3sum``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import msgpack

from cas.errors import CorruptObject, FormatVersionError

MAGIC = b"cas"
FORMAT_VERSION = 1
HEADER_SIZE = len(MAGIC) + 2
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


class ObjType(enum.IntEnum):
    """Object types; the code is stored in the LMDB record and in pack frames."""

    BLOB = 0
    CHUNK = 1
    ENV = 2
    NODE = 3
    COMMIT = 4
    TAG = 5

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> ObjType:
        return cls[label.upper()]


STRUCTURED = frozenset({ObjType.ENV, ObjType.NODE, ObjType.COMMIT, ObjType.TAG})


def check_int(value: Any) -> None:
    """ValueError for an integer msgpack cannot hold (it would raise OverflowError); say
    what is wrong in the codec's own terms. Anything else passes."""
    if isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _INT_MAX:
        raise ValueError(f"integer {value} does not fit in 64 bits")


def canonical(value: Any) -> Any:
    """Return ``value`` rearranged so that msgpack packs it canonically."""
    if isinstance(value, Mapping):
        items = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"canonical maps need text keys, got {type(k).__name__}")
            items.append((k.encode(), k, canonical(v)))
        items.sort()
        return {k: v for _, k, v in items}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    check_int(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot encode {type(value).__name__} canonically")


def pack(value: Any) -> bytes:
    """Canonical MessagePack bytes of ``value``."""
    return msgpack.packb(canonical(value), use_bin_type=True)


def unpack(data: bytes | memoryview) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise CorruptObject(f"cannot decode object body: {exc}") from exc


def encode(otype: ObjType, body: Any) -> bytes:
    """Frame ``body`` as a structured object of type ``otype``."""
    if otype not in STRUCTURED:
        raise ValueError(f"{otype.label} objects are not framed")
    return MAGIC + bytes((FORMAT_VERSION, int(otype))) + pack(body)


def decode(data: bytes | memoryview, expected: ObjType | None = None) -> tuple[ObjType, Any]:
    """Split a structured object into its type and decoded body."""
    head = bytes(data[:HEADER_SIZE])
    if len(head) < HEADER_SIZE or head[:3] != MAGIC:
        raise CorruptObject("not a structured cas object (bad magic)")
    if head[3] != FORMAT_VERSION:
        raise FormatVersionError(
            f"object format version {head[3]} is not supported (this cas reads {FORMAT_VERSION})"
        )
    try:
        otype = ObjType(head[4])
    except ValueError as exc:
        raise CorruptObject(f"unknown object type code {head[4]}") from exc
    if otype not in STRUCTURED:
        raise CorruptObject(f"type {otype.label} is never framed")
    if expected is not None and otype != expected:
        raise CorruptObject(f"expected a {expected.label} object, found a {otype.label}")
    return otype, unpack(data[HEADER_SIZE:])


def sniff(data: bytes | memoryview) -> ObjType | None:
    """The structured type of ``data`` if it is framed like one, else None."""
    if len(data) >= HEADER_SIZE and bytes(data[:3]) == MAGIC and data[3] == FORMAT_VERSION:
        try:
            otype = ObjType(data[4])
        except ValueError:
            return None
        return otype if otype in STRUCTURED else None
    return None
