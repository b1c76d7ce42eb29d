"""Is an object well formed? The one check that ingest (cas serve, path remotes, fetches)
and fsck apply to every structured object, before it is stored or trusted.

Decoding alone is lenient (``Commit.decode`` turns a time of ``"12"`` into 12); this is
strict: the body is the canonical encoding of exactly the fields its type has, each of
its type (a time is an integer, an id 32 bytes, metadata a map), no float is NaN or
infinite, nothing nests deeper than MAX_NESTING, and every manifest entry key matches its
kind's grammar (cas.entrykeys), and every time an autotune record's entry claims is a
possible one (cas.timings). Anything else is :class:`~cas.errors.CorruptObject`
(422 on the server), or :class:`~cas.errors.BadEntryKey` or
:class:`~cas.errors.BadAutotuneRecord` (400).

What is valid can be shown: a time lies within what a calendar date can show (years 1
to 9999, MIN_TIME..MAX_TIME), and the entry metadata that is summed and handed to torch
(NUMERIC_META) is a non-negative integer. Every reference comes with the types its
target may have (:class:`Link`), so that ingest and fsck check them (docs/format.md,
"Reference types").
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from cas import codec, entrykeys, timings
from cas.codec import STRUCTURED, ObjType
from cas.digest import ObjectId
from cas.errors import BadAutotuneRecord, CorruptObject

#: Deepest nesting of maps and lists in a body (metadata included).
MAX_NESTING = 32
#: Commit and tag times, seconds since the epoch: 0001-01-01 to 9999-12-31 UTC, the dates
#: Python's datetime (so `cas log`, `cas show` and /ui) can show.
MIN_TIME, MAX_TIME = -62_135_596_800, 253_402_300_799
#: Entry metadata that cas sums (compile time saved) and hands to torch as an integer,
#: in the order cas.display prefers them.
NUMERIC_META = ("time_taken_ms", "compile_ms")
_INT64_MAX = 2**63 - 1
#: What a tag may target (and so name in its ``type`` field).
TAG_TARGETS = frozenset({ObjType.COMMIT, ObjType.TAG})
_FANOUT, _MAX_DEPTH = 16, 64  # cas.manifest.FANOUT / MAX_DEPTH (no import: manifest needs a Store)

_FIELDS: dict[ObjType, tuple[frozenset[str], frozenset[str]]] = {  # (required, optional)
    ObjType.COMMIT: (frozenset({"manifest", "parents", "author", "time", "message", "metadata"}), frozenset()),
    ObjType.TAG: (frozenset({"target", "type", "name", "tagger", "time", "message"}), frozenset({"signature"})),
}


class Link(NamedTuple):
    """A reference from an object: the id, the types its target may have, and its role
    (``manifest``, ``parent``, ``target``, ``child``, ``entry blob``, ``entry env``)."""

    oid: ObjectId
    types: frozenset[ObjType]
    role: str


_COMMITS, _NODES = frozenset({ObjType.COMMIT}), frozenset({ObjType.NODE})
_BLOBS, _ENVS = frozenset({ObjType.BLOB}), frozenset({ObjType.ENV})


def check(otype: ObjType, data: bytes | memoryview) -> list[Link]:
    """What a well-formed object refers to, with the types each target may have; raises
    if it is not well formed.

    Blobs and chunks are bytes, always well formed, and refer to nothing here.
    """
    if otype not in STRUCTURED:
        return []
    _, body = codec.decode(data, otype)
    what = otype.label
    _scan(body, what, 0)
    try:
        canonical = codec.encode(otype, body)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CorruptObject(f"malformed {what}: {exc}") from exc
    if canonical != bytes(data):
        raise CorruptObject(f"malformed {what}: not in canonical form")
    if not isinstance(body, dict):
        raise CorruptObject(f"malformed {what}: the body is not a map")
    if otype == ObjType.ENV:
        _env(body)
        return []
    if otype == ObjType.NODE:
        return _node(body)
    required, optional = _FIELDS[otype]
    if not required <= body.keys() <= required | optional:
        raise CorruptObject(f"malformed {what}: fields {sorted(body)}, expected {sorted(required)}")
    _is(body, "time", int, what)
    if not MIN_TIME <= body["time"] <= MAX_TIME:
        raise CorruptObject(f"malformed {what}: time {body['time']} is not a date in years 1 to 9999")
    for name in ("author", "message") if otype == ObjType.COMMIT else ("name", "tagger", "message", "type"):
        _is(body, name, str, what)
    if otype == ObjType.COMMIT:
        _is(body, "metadata", dict, what)
        _is(body, "parents", list, what)
        return [
            Link(_id(body["manifest"], "commit manifest"), _NODES, "manifest"),
            *(Link(_id(p, "commit parent"), _COMMITS, "parent") for p in body["parents"]),
        ]
    target = {t.label: t for t in TAG_TARGETS}.get(body["type"])
    if target is None:
        raise CorruptObject(f"malformed tag: target type {body['type']!r}, expected commit or tag")
    if "signature" in body and not isinstance(body["signature"], bytes):
        raise CorruptObject("malformed tag: signature is not bytes")
    return [Link(_id(body["target"], "tag target"), frozenset({target}), "target")]


def _scan(value: Any, what: str, depth: int) -> None:
    if depth > MAX_NESTING:
        raise CorruptObject(f"malformed {what}: nested deeper than {MAX_NESTING}")
    if isinstance(value, dict):
        for v in value.values():
            _scan(v, what, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _scan(v, what, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise CorruptObject(f"malformed {what}: a number is not finite")


def _is(body: dict[str, Any], name: str, kind: type, what: str) -> None:
    value = body[name]
    if type(value) is not kind:  # exact: a bool is no time
        raise CorruptObject(f"malformed {what}: {name} is a {type(value).__name__}, not a {kind.__name__}")


def _id(value: Any, what: str) -> ObjectId:
    if type(value) is not bytes or len(value) != 32:
        raise CorruptObject(f"{what} is not a 32-byte id")
    return ObjectId(value)


def _env(body: dict[str, Any]) -> None:
    for k, v in body.items():
        if not isinstance(v, (str, int, float, bool)) and v is not None:
            raise CorruptObject(f"malformed env: field {k!r} is a {type(v).__name__}, not text")


def _node(body: dict[str, Any]) -> list[Link]:
    depth, count = body.get("d"), body.get("n")
    if type(depth) is not int or type(count) is not int or not 0 <= depth <= _MAX_DEPTH or count < 0:
        raise CorruptObject("malformed manifest node: bad depth or count")
    if body.keys() == {"c", "d", "n"}:
        out, prev = [], -1
        for pair in body["c"] if type(body["c"]) is list else [None]:
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not int or not prev < pair[0] < _FANOUT:
                raise CorruptObject("malformed manifest node: bad child slot")
            prev = pair[0]
            out.append(Link(_id(pair[1], "node child"), _NODES, "child"))
        return out
    if body.keys() != {"d", "e", "n"} or type(body["e"]) is not list or len(body["e"]) != count:
        raise CorruptObject("malformed manifest node: neither an inner node nor a leaf")
    return _leaf(body["e"])


def _leaf(rows: list[Any]) -> list[Link]:
    blobs: list[ObjectId] = []
    envs: dict[bytes, None] = {}  # raw ids: hashing bytes is cheap, and a leaf has few envs
    for row in rows:
        if type(row) is not list or len(row) != 8:
            raise CorruptObject("malformed manifest leaf entry")
        env, kind, key, variant, blob, size, guards, meta = row
        if not (
            type(kind) is str and type(key) is str and type(variant) is str
            and type(size) is int and 0 <= size and (guards is None or type(guards) is str)
            and type(meta) is dict
        ):
            raise CorruptObject("malformed manifest leaf entry")
        entrykeys.check(kind, key)
        if meta and not meta.keys().isdisjoint(NUMERIC_META):
            _numeric_meta(meta)
        impossible = timings.entry_problem(kind, meta)
        if impossible is not None:
            raise BadAutotuneRecord(f"{kind} {key[:80]!r}: {impossible}")
        blobs.append(_id(blob, "entry blob"))
        if type(env) is not bytes or env not in envs:
            envs[_id(env, "entry env").raw] = None
    # An id that is both a blob and an env of this leaf (an env's bytes stored as a blob
    # too) may be either, as the fetch walk accepts (cas.sync.walk.Walker.leaves).
    both = envs.keys() & {b.raw for b in blobs}
    either = _BLOBS | _ENVS
    return [
        *(Link(b, either if b.raw in both else _BLOBS, "entry blob") for b in blobs),
        *(Link(ObjectId(e), either if e in both else _ENVS, "entry env") for e in envs),
    ]


def _numeric_meta(meta: dict[str, Any]) -> None:
    for name in NUMERIC_META:
        value = meta.get(name)
        if value is not None and (type(value) is not int or not 0 <= value <= _INT64_MAX):
            raise CorruptObject(f"malformed manifest leaf entry: {name} {value!r:.40} is not a count of milliseconds")
