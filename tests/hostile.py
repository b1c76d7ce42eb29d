"""Hostile objects for tests, made with the real codec: each is well formed on its own,
but one of its references names an object of another type than its role wants (a
commit whose manifest is a blob, a tag that names a blob, ...), or it holds a value
that cannot be shown (a time past the year 9999, a compile time that is text).

A :class:`Shape` gives the objects a hostile one references (in closure order), the
hostile object itself, and what its refusal names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cas.codec import ObjType, encode
from cas.digest import ObjectId
from cas.objects import Commit, Entry, EntryKey, Env, ManifestNode, Tag

WireObject = tuple[ObjectId, ObjType, bytes]
T = 1_700_000_000
#: The empty manifest: the same object in every shape (so it may be stored by another).
EMPTY_NODE = ObjectId.of(ManifestNode(depth=0, count=0).encode())


def wire(otype: ObjType, data: bytes) -> WireObject:
    return ObjectId.of(data), otype, data


@dataclass(frozen=True)
class Shape:
    """A hostile object, what it references, and the words its refusal must hold."""

    name: str
    refs: list[WireObject]  # closure order: each after what it references
    bad: WireObject
    says: str


class Parts:
    """Innocent objects of every type, distinct per ``salt`` (so that each shape's
    objects are its own, and "nothing stored" can be checked on one shared remote)."""

    def __init__(self, salt: str) -> None:
        self.blob = wire(ObjType.BLOB, f"bytes, not a commit ({salt})".encode())
        self.blob2 = wire(ObjType.BLOB, f"more bytes ({salt})".encode())
        self.env = wire(ObjType.ENV, Env({"device": "cpu", "salt": salt}).encode())
        self.node = wire(ObjType.NODE, ManifestNode(depth=0, count=0).encode())  # EMPTY_NODE
        commit = Commit(self.node[0], (), "tester@example", T, f"fine ({salt})", {})
        self.commit = wire(ObjType.COMMIT, commit.encode())

    def commit_of(self, manifest: WireObject, *parents: WireObject) -> WireObject:
        c = Commit(manifest[0], tuple(p[0] for p in parents), "mallory", T, "hostile", {})
        return wire(ObjType.COMMIT, c.encode())

    def tag_of(self, target: WireObject, says: ObjType) -> WireObject:
        return wire(ObjType.TAG, Tag(target[0], says, "v1", "mallory", T, "hostile").encode())

    def leaf_of(self, env: WireObject, blob: WireObject) -> WireObject:
        entry = (EntryKey(env[0], "inductor", "fkey1"), Entry(blob[0], len(blob[2])))
        return wire(ObjType.NODE, ManifestNode(depth=0, count=1, entries=(entry,)).encode())


def _names(what: str, ref: WireObject, role: str) -> str:
    return f"names {ref[0].short()} as its {role}, but that is a {what}"


def wrong_types(salt: str) -> list[Shape]:
    """Every reference role, naming an object of a type it must not have."""
    p = Parts(salt)
    inner = wire(ObjType.NODE, ManifestNode.encode_inner(1, 1, [[0, p.blob[0].raw]]))
    return [
        Shape("commit manifest is a blob", [p.blob], p.commit_of(p.blob), _names("blob", p.blob, "manifest")),
        Shape("commit manifest is an env", [p.env], p.commit_of(p.env), _names("env", p.env, "manifest")),
        Shape("commit parent is a blob", [p.node, p.blob], p.commit_of(p.node, p.blob),
              _names("blob", p.blob, "parent")),
        Shape("commit parent is an env", [p.node, p.env], p.commit_of(p.node, p.env),
              _names("env", p.env, "parent")),
        Shape("tag names a blob", [p.blob], p.tag_of(p.blob, ObjType.BLOB), "target type 'blob'"),
        Shape("tag says commit, names a blob", [p.blob], p.tag_of(p.blob, ObjType.COMMIT),
              _names("blob", p.blob, "target")),
        Shape("tag says tag, names a commit", [p.node, p.commit], p.tag_of(p.commit, ObjType.TAG),
              _names("commit", p.commit, "target")),
        Shape("node child is a blob", [p.blob], inner, _names("blob", p.blob, "child")),
        Shape("entry blob is a commit", [p.env, p.node, p.commit], p.leaf_of(p.env, p.commit),
              _names("commit", p.commit, "entry blob")),
        Shape("entry env is a blob", [p.blob, p.blob2], p.leaf_of(p.blob, p.blob2),
              _names("blob", p.blob, "entry env")),
    ]


def _commit_body(**change: object) -> dict[str, object]:
    body: dict[str, object] = {"manifest": ObjectId.of(ManifestNode(0, 0).encode()).raw, "parents": [],
                               "author": "a", "time": T, "message": "m", "metadata": {}}
    body.update(change)
    return body


def _leaf_meta(meta: dict[str, object]) -> Callable[[Parts], WireObject]:
    return lambda p: wire(ObjType.NODE, ManifestNode.encode_leaf(
        0, [[p.env[0].raw, "inductor", "fkey1", "", p.blob[0].raw, 1, None, meta]]))


#: Objects that hold what no date or count can show; each refused whatever it references.
UNSHOWABLE: dict[str, Callable[[Parts], WireObject]] = {
    "commit time past the year 9999": lambda p: wire(ObjType.COMMIT, encode(ObjType.COMMIT, _commit_body(time=2**63 - 1))),
    "commit time before the year 1": lambda p: wire(ObjType.COMMIT, encode(ObjType.COMMIT, _commit_body(time=-(2**63)))),
    "tag time past the year 9999": lambda p: wire(ObjType.TAG, Tag(p.commit[0], ObjType.COMMIT, "t", "a",
                                                                    253_402_300_800, "m").encode()),
    "time_taken_ms is text": _leaf_meta({"time_taken_ms": "a while"}),
    "compile_ms is negative": _leaf_meta({"compile_ms": -1}),
    "compile_ms is a list": _leaf_meta({"compile_ms": [1, 2]}),
    "time_taken_ms is a bool": _leaf_meta({"time_taken_ms": True}),
    "time_taken_ms is a float": _leaf_meta({"time_taken_ms": 1.5}),
}
