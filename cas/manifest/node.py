"""The manifest's node format: where an entry sits in the tree, and how nodes are encoded.

Design (docs/format.md, "Manifest tree")
----------------------------------------
An entry lives at ``h = BLAKE3(EntryKey.encode())``. A set of entries at depth ``d`` whose
size is at most LEAF_MAX is one leaf (entries sorted by ``h``); a larger set is an inner
node whose children are the non-empty sub-sets by the ``d``-th group of BITS bits of
``h`` (most significant first). The shape therefore depends only on the set (history
independence), a change rewrites one node per level, and two trees can be compared slot
by slot, skipping equal child ids: that is what keeps diff, merge and ``new_nodes``
proportional to what differs.

FANOUT 16 / LEAF_MAX 64 were chosen by measurement (``python bench/bench_manifest.py
shapes N``, CPU times): at 10^6 entries one change writes 5 nodes (~5.3 KiB mean, 7 KiB max), a
lookup reads 5 nodes, diff of 10 changes reads 74. 32-way/64 reads one node less but
writes 9.3 KiB per change and at 10^5 makes 32k leaves of ~3 entries; 16-way/32 splits
leaves often at 10^5 (19 nodes for one insert); LEAF_MAX 128 doubles leaf bytes and
lookup time. The price of any hash trie: a leaf crossing LEAF_MAX splits into up to
FANOUT leaves at once. Where n/16^k is near 64 (n ~ 1-2.6*10^4, 1.6-4*10^5, 2.6-6.7*10^6)
a few percent of inserts write ~19 nodes (~14 KiB; measured at n=20000); at 10^5 and
10^6 none do. Rejected for now: storing buckets of <= 4 entries inline in their parent,
which would remove most of that burst at the cost of a second kind of child.

Internally nodes are handled as raw msgpack rows (``[env, kind, key, variant, blob, size,
guards, meta]``) and raw 32-byte ids; EntryKey/Entry objects are made only at the API.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import blake3
import msgpack

from cas import entrykeys
from cas.codec import ObjType, canonical, decode
from cas.digest import ObjectId
from cas.errors import CorruptObject, UsageError
from cas.objects import Entry, EntryKey, ManifestNode

#: Bits of ``h`` consumed per level; a node has at most FANOUT children.
BITS = 4
FANOUT = 1 << BITS
#: A subtree with at most this many entries is a single leaf.
LEAF_MAX = 64
#: Nodes this deep have used up all 256 bits of ``h`` and are leaves whatever their size.
MAX_DEPTH = 256 // BITS
_MASK = FANOUT - 1

EMPTY_BYTES = ManifestNode.encode_leaf(0, [])
#: The id of the empty manifest: a leaf at depth 0 with no entries.
EMPTY = ObjectId.of(EMPTY_BYTES)
EMPTY_RAW = EMPTY.raw

Row = list[Any]  # [env, kind, key, variant, blob, size, guards, meta] as stored
Item = tuple[bytes, Row]  # (h, row)
Sub = tuple[bytes, int]  # (node id, entries below it)


# -- keys and rows ------------------------------------------------------------------------


def key_hash(key: EntryKey) -> bytes:
    """``h``: the 32-byte BLAKE3 of ``EntryKey.encode()``; places the entry in the tree."""
    # msgpack of [bin, str, str, str] is already canonical: skip codec.pack's generic pass
    # (8 us of a 20 us lookup). tests/test_manifest.py checks the bytes agree.
    return blake3.blake3(msgpack.packb([key.env.raw, key.kind, key.key, key.variant])).digest()


def row_hash(row: Row) -> bytes:
    # Same bytes as EntryKey.encode() (a msgpack array of bin + 3 str), without the
    # generic canonicalisation pass: this runs once per entry of a build.
    return blake3.blake3(msgpack.packb(row[:4])).digest()


def make_row(key: EntryKey, entry: Entry) -> Row:
    if not (isinstance(key.kind, str) and isinstance(key.key, str) and isinstance(key.variant, str)):
        raise UsageError(f"entry key {key!r}: kind, key and variant must be text")
    entrykeys.check(key.kind, key.key)
    if isinstance(entry.size, bool) or not isinstance(entry.size, int) or not 0 <= entry.size < 1 << 64:
        raise UsageError(f"entry {key}: size must be an integer in [0, 2^64)")
    if entry.guards is not None and not isinstance(entry.guards, str):
        raise UsageError(f"entry {key}: guards must be text or None")
    return [key.env.raw, key.kind, key.key, key.variant, entry.blob.raw, entry.size, entry.guards, _meta(entry.meta)]


_SCALARS = (str, int, float, bool, type(None))


def _meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Canonical form of entry metadata (sorted text keys; see codec.canonical)."""
    if not meta:
        return {}
    # Fast path for the common flat map of scalars: sorting str keys by code point is
    # the same order as codec.canonical's UTF-8 byte order. canonical() took a third of
    # a build's time.
    for k, v in meta.items():  # a loop, not all() over a generator: once per entry
        if type(k) is not str or not isinstance(v, _SCALARS):
            break
    else:
        return dict(sorted(meta.items()))
    try:
        return canonical(dict(meta))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise UsageError(f"entry metadata cannot be stored: {exc}") from exc


def key_of(row: Row) -> EntryKey:
    return EntryKey(ObjectId(row[0]), row[1], row[2], row[3])


def entry_of(row: Row) -> Entry:
    return Entry(ObjectId(row[4]), row[5], row[6], row[7])


def same_row(a: Row, b: Row) -> bool:
    # == alone would call meta {"t": 1} and {"t": 1.0} equal though their bytes differ.
    return a == b and msgpack.packb(a) == msgpack.packb(b)


def slot_of(h: bytes, depth: int) -> int:
    """The child slot of ``h`` at ``depth``: bits [depth*BITS, (depth+1)*BITS), MSB first."""
    return (int.from_bytes(h, "big") >> (256 - (depth + 1) * BITS)) & _MASK


# -- nodes --------------------------------------------------------------------------------


class Node:
    """A decoded node: ``children`` (slot -> raw id) for inner nodes, ``rows`` for leaves."""

    __slots__ = ("depth", "count", "children", "_rows", "_checked", "_items")

    def __init__(
        self, depth: int, count: int, children: dict[int, bytes] | None, rows: list[Row] | None
    ) -> None:
        self.depth = depth
        self.count = count
        self.children = children
        self._rows = rows
        self._checked = False
        self._items: list[Item] | None = None

    @property
    def rows(self) -> list[Row]:
        """The leaf's rows, each checked once on first use (CorruptObject if malformed)."""
        if not self._checked:
            for row in self._rows or ():
                check_row(row)
            self._checked = True
        return self._rows or []

    def raw_rows(self) -> list[Any]:
        """Rows as decoded, unchecked: for a scan that checks only the row it returns."""
        return self._rows or []

    def items(self) -> list[Item]:
        """The leaf's (h, row) pairs, sorted by h (h computed once, on demand)."""
        if self._items is None:
            self._items = [(row_hash(r), r) for r in self.rows]
        return self._items


EMPTY_NODE = Node(0, 0, None, [])


def check_row(row: Any) -> None:
    # type() rather than isinstance(): msgpack yields exact types, and bool is not a size.
    if type(row) is not list or len(row) != 8:
        raise CorruptObject("malformed manifest leaf entry")
    env, kind, key, variant, blob, size, guards, meta = row
    if not (
        type(env) is bytes
        and len(env) == 32
        and type(kind) is str
        and type(key) is str
        and type(variant) is str
        and type(blob) is bytes
        and len(blob) == 32
        and type(size) is int
        and (guards is None or type(guards) is str)
        and type(meta) is dict
    ):
        raise CorruptObject("malformed manifest leaf entry")


def decode_node(oid: ObjectId, data: bytes) -> Node:
    _, body = decode(data, ObjType.NODE)
    try:
        depth, count = body["d"], body["n"]
        if not (isinstance(depth, int) and isinstance(count, int)):
            raise TypeError("depth and count must be integers")
        if "c" in body:
            children: dict[int, bytes] = {}
            prev = -1
            for slot, cid in body["c"]:
                if not (isinstance(slot, int) and prev < slot < FANOUT):
                    raise ValueError("child slots out of order")
                if not (isinstance(cid, bytes) and len(cid) == 32):
                    raise ValueError("child id is not 32 bytes")
                children[slot] = cid
                prev = slot
            if not children or count <= LEAF_MAX:
                raise ValueError("inner node breaks the canonical shape")
            return Node(depth, count, children, None)
        rows = body["e"]
        if not isinstance(rows, list):
            raise TypeError("leaf entries are not a list")
        if count != len(rows):
            raise ValueError(f"leaf says {count} entries, holds {len(rows)}")
        return Node(depth, count, None, rows)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptObject(f"malformed manifest node {oid.short()}: {exc}", oid=oid) from exc
