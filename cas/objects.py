"""The object model: frozen dataclasses with canonical encodings, and no I/O.

Each structured object knows how to turn itself into bytes (``encode``) and back
(``decode``); its id is ``ObjectId.of(obj.encode())``. See docs/format.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar

import msgpack

from cas.codec import FORMAT_VERSION, MAGIC, ObjType, canonical, decode, encode
from cas.digest import ObjectId
from cas.errors import CorruptObject

# Header of every framed manifest node (see codec.encode).
_NODE_HEADER = MAGIC + bytes((FORMAT_VERSION, int(ObjType.NODE)))


def _frozen(meta: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(meta or {}))


def _oid(value: Any, what: str) -> ObjectId:
    if not isinstance(value, bytes) or len(value) != 32:
        raise CorruptObject(f"{what} is not a 32-byte id")
    return ObjectId(value)


@dataclass(frozen=True)
class Env:
    """A canonical record of a compile environment.

    ``fields`` holds torch build key, versions, platform, device class and cache_key_tag
    (see cas.torch.env); the store treats them as opaque text. Two processes with the same
    fields have the same env id.
    """

    fields: Mapping[str, str]
    TYPE: ClassVar[ObjType] = ObjType.ENV

    def __post_init__(self) -> None:
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))

    def encode(self) -> bytes:
        return encode(ObjType.ENV, dict(self.fields))

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Env:
        _, body = decode(data, ObjType.ENV)
        if not isinstance(body, dict):
            raise CorruptObject("env body is not a map")
        return cls({str(k): v for k, v in body.items()})

    @property
    def id(self) -> ObjectId:
        return ObjectId.of(self.encode())

    def describe(self) -> str:
        f = self.fields
        parts = [f.get("device", "?"), f"torch {f.get('torch_version', '?')}"]
        return ", ".join(parts)


@dataclass(frozen=True)
class Commit:
    """A snapshot: manifest root, parents, who, when, why, and what produced it."""

    manifest: ObjectId
    parents: tuple[ObjectId, ...]
    author: str
    time: int  # seconds since the epoch, UTC
    message: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    TYPE: ClassVar[ObjType] = ObjType.COMMIT

    def __post_init__(self) -> None:
        object.__setattr__(self, "parents", tuple(self.parents))
        object.__setattr__(self, "metadata", _frozen(self.metadata))

    def encode(self) -> bytes:
        return encode(
            ObjType.COMMIT,
            {
                "manifest": self.manifest.raw,
                "parents": [p.raw for p in self.parents],
                "author": self.author,
                "time": int(self.time),
                "message": self.message,
                "metadata": dict(self.metadata),
            },
        )

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Commit:
        _, b = decode(data, ObjType.COMMIT)
        try:
            return cls(
                manifest=_oid(b["manifest"], "commit manifest"),
                parents=tuple(_oid(p, "commit parent") for p in b["parents"]),
                author=str(b["author"]),
                time=int(b["time"]),
                message=str(b["message"]),
                metadata=dict(b.get("metadata") or {}),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CorruptObject(f"malformed commit: {exc}") from exc

    @property
    def id(self) -> ObjectId:
        return ObjectId.of(self.encode())

    def references(self) -> list[ObjectId]:
        return [self.manifest, *self.parents]


@dataclass(frozen=True)
class Tag:
    """An annotated pin of a target object, optionally signed."""

    target: ObjectId
    target_type: ObjType
    name: str
    tagger: str
    time: int
    message: str
    signature: bytes | None = None
    TYPE: ClassVar[ObjType] = ObjType.TAG

    def body(self, *, with_signature: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": self.target.raw,
            "type": self.target_type.label,
            "name": self.name,
            "tagger": self.tagger,
            "time": int(self.time),
            "message": self.message,
        }
        if with_signature and self.signature is not None:
            out["signature"] = self.signature
        return out

    def encode(self) -> bytes:
        return encode(ObjType.TAG, self.body())

    def signed_payload(self) -> bytes:
        """The bytes a signature covers: the tag without its signature."""
        return encode(ObjType.TAG, self.body(with_signature=False))

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Tag:
        _, b = decode(data, ObjType.TAG)
        try:
            return cls(
                target=_oid(b["target"], "tag target"),
                target_type=ObjType.from_label(b["type"]),
                name=str(b["name"]),
                tagger=str(b["tagger"]),
                time=int(b["time"]),
                message=str(b["message"]),
                signature=b.get("signature"),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CorruptObject(f"malformed tag: {exc}") from exc

    @property
    def id(self) -> ObjectId:
        return ObjectId.of(self.encode())

    def references(self) -> list[ObjectId]:
        return [self.target]


@dataclass(frozen=True, order=True)
class EntryKey:
    """Where an artifact applies: env, kind, torch's cache key, and a guard variant."""

    env: ObjectId
    kind: str
    key: str
    variant: str = ""

    def encode(self) -> bytes:
        """Canonical bytes of the key; its BLAKE3 places the entry in the manifest tree."""
        from cas.codec import pack

        return pack([self.env.raw, self.kind, self.key, self.variant])

    def __str__(self) -> str:
        v = f"#{self.variant}" if self.variant else ""
        return f"{self.env.short(8)}/{self.kind}/{self.key}{v}"


@dataclass(frozen=True)
class Entry:
    """An artifact: its blob, size, guard expression (if any) and small metadata."""

    blob: ObjectId
    size: int
    guards: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "meta", _frozen(self.meta))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Entry)
            and self.blob == other.blob
            and self.size == other.size
            and self.guards == other.guards
            and dict(self.meta) == dict(other.meta)
        )

    def __hash__(self) -> int:
        return hash((self.blob, self.size, self.guards))


@dataclass(frozen=True)
class ManifestNode:
    """One node of the manifest tree (see cas.manifest and docs/format.md).

    A leaf holds entries sorted by the BLAKE3 of their encoded key; an inner node holds
    ``(slot, child id)`` pairs sorted by slot and the number of entries below it. The
    tree's shape depends only on the set of entries, never on insertion order.
    """

    depth: int
    count: int
    children: tuple[tuple[int, ObjectId], ...] = ()
    entries: tuple[tuple[EntryKey, Entry], ...] = ()
    TYPE: ClassVar[ObjType] = ObjType.NODE

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @staticmethod
    def encode_inner(depth: int, count: int, children: list[list[Any]]) -> bytes:
        """Bytes of an inner node from ``[[slot, child_raw_id], ...]`` sorted by slot.

        Writes the canonical body directly (keys already in sorted order "c" < "d" < "n")
        instead of going through codec.canonical: the manifest encodes ~10^5 nodes per
        build and the generic path costs more than the rest of the build.
        """
        return _NODE_HEADER + msgpack.packb({"c": children, "d": depth, "n": count})

    @staticmethod
    def encode_leaf(depth: int, rows: list[list[Any]]) -> bytes:
        """Bytes of a leaf from rows ``[env, kind, key, variant, blob, size, guards, meta]``.

        ``meta`` must already be canonical (``codec.canonical``); rows are sorted by the
        BLAKE3 of their encoded key. Keys are in sorted order "d" < "e" < "n".
        """
        return _NODE_HEADER + msgpack.packb({"d": depth, "e": rows, "n": len(rows)})

    def encode(self) -> bytes:
        if self.children:
            return self.encode_inner(
                self.depth, self.count, [[slot, cid.raw] for slot, cid in self.children]
            )
        rows = [
            [k.env.raw, k.kind, k.key, k.variant, e.blob.raw, e.size, e.guards, canonical(dict(e.meta))]
            for k, e in self.entries
        ]
        return self.encode_leaf(self.depth, rows)

    @classmethod
    def decode(cls, data: bytes | memoryview) -> ManifestNode:
        _, b = decode(data, ObjType.NODE)
        try:
            depth, count = int(b["d"]), int(b["n"])
            if "c" in b:
                children = tuple((int(s), _oid(c, "node child")) for s, c in b["c"])
                return cls(depth, count, children=children)
            entries = tuple(
                (
                    EntryKey(_oid(env, "entry env"), kind, key, variant),
                    Entry(_oid(blob, "entry blob"), int(size), guards, meta or {}),
                )
                for env, kind, key, variant, blob, size, guards, meta in b["e"]
            )
            if count != len(entries):
                raise CorruptObject(f"manifest leaf says {count} entries, holds {len(entries)}")
            return cls(depth, count, entries=entries)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptObject(f"malformed manifest node: {exc}") from exc

    @property
    def id(self) -> ObjectId:
        return ObjectId.of(self.encode())

    def references(self) -> list[ObjectId]:
        if self.children:
            return [cid for _, cid in self.children]
        out: list[ObjectId] = []
        seen: set[ObjectId] = set()
        for k, e in self.entries:
            out.append(e.blob)
            if k.env not in seen:
                seen.add(k.env)
                out.append(k.env)
        return out


_DECODERS: dict[ObjType, Any] = {
    ObjType.ENV: Env.decode,
    ObjType.NODE: ManifestNode.decode,
    ObjType.COMMIT: Commit.decode,
    ObjType.TAG: Tag.decode,
}


def decode_object(otype: ObjType, data: bytes | memoryview) -> Env | ManifestNode | Commit | Tag:
    """Decode a structured object of a known type."""
    try:
        return _DECODERS[otype](data)
    except KeyError as exc:
        raise CorruptObject(f"{otype.label} objects have no structure") from exc


def references(otype: ObjType, data: bytes | memoryview) -> list[ObjectId]:
    """The ids an object refers to (what must be stored before it). Blobs: none.

    Chunks of a chunked blob are a storage detail of one store and are not listed here.
    """
    if otype in (ObjType.BLOB, ObjType.CHUNK, ObjType.ENV):
        return []
    if otype == ObjType.NODE:
        return _node_references(data)
    obj = decode_object(otype, data)
    return obj.references()  # type: ignore[union-attr]


def _node_references(data: bytes | memoryview) -> list[ObjectId]:
    """``ManifestNode.decode(data).references()`` without building every Entry.

    Pushes, fetches and closure checks call this for every node they move; building
    EntryKey/Entry objects for 64 rows per leaf cost ~1.5 ms per leaf (sync profile).
    """
    _, b = decode(data, ObjType.NODE)
    try:
        if "c" in b:
            return [_oid(c, "node child") for _, c in b["c"]]
        out: list[ObjectId] = []
        envs: set[bytes] = set()
        for row in b["e"]:
            if len(row) != 8:
                raise CorruptObject("malformed manifest node: bad entry row")
            out.append(_oid(row[4], "entry blob"))
            if row[0] not in envs:
                envs.add(row[0])
                out.append(_oid(row[0], "entry env"))
        return out
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptObject(f"malformed manifest node: {exc}") from exc
