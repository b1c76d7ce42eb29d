"""The manifest: a history-independent hash trie from EntryKey to Entry.

CONTRACT (other modules code against these names; the implementation fills them in):

    EMPTY: ObjectId                      id of the empty manifest (a leaf with no entries)
    build(store, entries) -> ObjectId    root of a manifest holding exactly ``entries``
    update(store, root, changes) -> ObjectId
                                         apply {EntryKey: Entry | None} (None removes)
    lookup(store, root, key) -> Entry | None
    entries(store, root) -> Iterator[tuple[EntryKey, Entry]]
    count(store, root) -> int
    diff(store, a, b) -> Iterator[Change]     Change(key, old, new); reads O(k log n) nodes
    merge(store, base, ours, theirs, rules=DEFAULT_RULES) -> MergeResult
    walk(store, root) -> Iterator[ObjectId]    every node id of the tree (not blobs/envs)
    new_nodes(store, old_root, new_root) -> Iterator[ObjectId]
                                         node ids reachable from new_root and not old_root
    select(store, root, envs) -> ObjectId      the sub-manifest of entries whose env is in envs

All functions write new nodes in one store transaction per call, children before parents.

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
Decoded nodes are kept in a per-store LRU (nodes are immutable, so it is never stale).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import groupby
from types import MappingProxyType
from typing import Any, NamedTuple

import blake3
import msgpack

from cas import entrykeys
from cas.codec import ObjType, canonical, decode
from cas.digest import ObjectId
from cas.errors import CorruptObject, ObjectNotFound, UsageError
from cas.objects import Entry, EntryKey, ManifestNode
from cas.store import Store

__all__ = [
    "BITS", "DEFAULT_RULES", "DELETED", "EMPTY", "FANOUT", "LEAF_MAX", "TIMING_KEYS",
    "Change", "Entry", "EntryKey", "ManifestNode", "MergeResult", "Rule", "Stats",
    "build", "check", "count", "diff", "entries", "key_hash", "lookup", "merge", "new_nodes",
    "select", "update", "walk",
]  # fmt: skip

#: Bits of ``h`` consumed per level; a node has at most FANOUT children.
BITS = 4
FANOUT = 1 << BITS
#: A subtree with at most this many entries is a single leaf.
LEAF_MAX = 64
#: Nodes this deep have used up all 256 bits of ``h`` and are leaves whatever their size.
MAX_DEPTH = 256 // BITS
_MASK = FANOUT - 1
#: Decoded nodes kept per store. A cached 16-way inner node is ~1.5 KB (all 4,369 inner
#: nodes of a 10^6-entry tree fit), a leaf of ~15 entries ~10 KB: ~60 MB at most.
CACHE_INNER = 16384
CACHE_LEAVES = 4096

_EMPTY_BYTES = ManifestNode.encode_leaf(0, [])
#: The id of the empty manifest: a leaf at depth 0 with no entries.
EMPTY = ObjectId.of(_EMPTY_BYTES)
_EMPTY_RAW = EMPTY.raw

Row = list[Any]  # [env, kind, key, variant, blob, size, guards, meta] as stored
Item = tuple[bytes, Row]  # (h, row)
Sub = tuple[bytes, int]  # (node id, entries below it)


# -- keys and rows ------------------------------------------------------------------------


def key_hash(key: EntryKey) -> bytes:
    """``h``: the 32-byte BLAKE3 of ``EntryKey.encode()``; places the entry in the tree."""
    # msgpack of [bin, str, str, str] is already canonical: skip codec.pack's generic pass
    # (8 us of a 20 us lookup). tests/test_manifest.py checks the bytes agree.
    return blake3.blake3(msgpack.packb([key.env.raw, key.kind, key.key, key.variant])).digest()


def _row_hash(row: Row) -> bytes:
    # Same bytes as EntryKey.encode() (a msgpack array of bin + 3 str), without the
    # generic canonicalisation pass: this runs once per entry of a build.
    return blake3.blake3(msgpack.packb(row[:4])).digest()


def _row(key: EntryKey, entry: Entry) -> Row:
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
    if all(type(k) is str and isinstance(v, _SCALARS) for k, v in meta.items()):
        return dict(sorted(meta.items()))
    try:
        return canonical(dict(meta))  # type: ignore[no-any-return]
    except TypeError as exc:
        raise UsageError(f"entry metadata cannot be stored: {exc}") from exc


def _key_of(row: Row) -> EntryKey:
    return EntryKey(ObjectId(row[0]), row[1], row[2], row[3])


def _entry_of(row: Row) -> Entry:
    return Entry(ObjectId(row[4]), row[5], row[6], row[7])


def _same(a: Row, b: Row) -> bool:
    # == alone would call meta {"t": 1} and {"t": 1.0} equal though their bytes differ.
    return a == b and msgpack.packb(a) == msgpack.packb(b)


def _slot(h: bytes, depth: int) -> int:
    """The child slot of ``h`` at ``depth``: bits [depth*BITS, (depth+1)*BITS), MSB first."""
    return (int.from_bytes(h, "big") >> (256 - (depth + 1) * BITS)) & _MASK


# -- nodes --------------------------------------------------------------------------------


class _Node:
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
                _check_row(row)
            self._checked = True
        return self._rows or []

    def raw_rows(self) -> list[Any]:
        """Rows as decoded, unchecked: for a scan that checks only the row it returns."""
        return self._rows or []

    def items(self) -> list[Item]:
        """The leaf's (h, row) pairs, sorted by h (h computed once, on demand)."""
        if self._items is None:
            self._items = [(_row_hash(r), r) for r in self.rows]
        return self._items


_EMPTY_NODE = _Node(0, 0, None, [])


def _check_row(row: Any) -> None:
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


def _decode(oid: ObjectId, data: bytes) -> _Node:
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
            return _Node(depth, count, children, None)
        rows = body["e"]
        if not isinstance(rows, list):
            raise TypeError("leaf entries are not a list")
        if count != len(rows):
            raise ValueError(f"leaf says {count} entries, holds {len(rows)}")
        return _Node(depth, count, None, rows)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptObject(f"malformed manifest node {oid.short()}: {exc}", oid=oid) from exc


class _Cache:
    """Thread-safe LRUs of decoded nodes by raw id: one for inner nodes, one for leaves.

    Two pools because random lookups over a big tree touch a new leaf almost every time;
    in one pool those leaves would evict the few thousand inner nodes that every lookup
    needs (measured at 10^6: 108 us median with one pool of 8192, see bench).
    """

    def __init__(self, inner: int, leaves: int) -> None:
        self._pools: tuple[OrderedDict[bytes, _Node], OrderedDict[bytes, _Node]] = (
            OrderedDict(),
            OrderedDict(),
        )
        self._caps = (inner, leaves)
        self._lock = threading.Lock()

    def get(self, rid: bytes) -> _Node | None:
        with self._lock:
            for pool in self._pools:
                node = pool.get(rid)
                if node is not None:
                    pool.move_to_end(rid)
                    return node
            return None

    def put(self, rid: bytes, node: _Node) -> None:
        which = 0 if node.children is not None else 1
        pool, cap = self._pools[which], self._caps[which]
        with self._lock:
            pool[rid] = node
            pool.move_to_end(rid)
            while len(pool) > cap:
                pool.popitem(last=False)


_caches: weakref.WeakKeyDictionary[Any, _Cache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def _cache_for(store: Store) -> _Cache:
    # One cache per store object: a node cached from one store must not make a node
    # look present in another store that lacks it.
    try:
        with _caches_lock:
            cache = _caches.get(store)
            if cache is None:
                cache = _caches[store] = _Cache(CACHE_INNER, CACHE_LEAVES)
            return cache
    except TypeError:  # not weak-referenceable: no sharing across calls
        return _Cache(CACHE_INNER, CACHE_LEAVES)


@dataclass
class Stats:
    """What manifest operations cost; pass one as ``stats=`` to any function to collect.

    ``nodes_read`` counts every node the algorithm visits (cache hits included): it is the
    cost the O(k log n) bounds speak about. ``nodes_fetched`` counts the visits that went
    to the store. ``nodes_written``/``bytes_written`` count new nodes handed to the store.
    """

    nodes_read: int = 0
    nodes_fetched: int = 0
    nodes_written: int = 0
    bytes_written: int = 0


class _Tree:
    """One operation on one store: reads through the cache, buffers new nodes."""

    def __init__(self, store: Store, stats: Stats | None) -> None:
        self.store = store
        self.cache = _cache_for(store)
        self.stats = stats if stats is not None else Stats()
        self.pending: dict[bytes, tuple[_Node, bytes]] = {}
        self.known: set[bytes] = set()  # ids read from the store: never rewritten

    # -- reading --

    def load(self, rid: bytes) -> _Node:
        self.stats.nodes_read += 1
        got = self.pending.get(rid)
        if got is not None:
            return got[0]
        node = self.cache.get(rid)
        if node is None:
            node = self._fetch(rid)
            self.cache.put(rid, node)
        self.known.add(rid)
        return node

    def _fetch(self, rid: bytes) -> _Node:
        if rid == _EMPTY_RAW:
            return _EMPTY_NODE  # a constant; build/update store it when it is a root
        oid = ObjectId(rid)
        got = self.store.get_typed(oid, verify=True)  # a damaged disk is an error, not a row
        if got is None:
            raise ObjectNotFound(
                f"manifest node {oid.short()} is missing from the store",
                hint="the store is incomplete; run `cas fsck`",
                oid=oid,
            )
        otype, data = got
        if otype != ObjType.NODE:
            raise CorruptObject(f"object {oid.short()} is a {otype.label}, not a manifest node", oid=oid)
        self.stats.nodes_fetched += 1
        return _decode(oid, data)

    def leaves(self, rid: bytes) -> Iterator[_Node]:
        """The leaves below ``rid`` in slot order (so their rows come in ``h`` order)."""
        stack = [rid]
        while stack:
            node = self.load(stack.pop())
            if node.children is None:
                yield node
            else:  # children dicts are built in slot order; push reversed to pop in order
                stack.extend(reversed(node.children.values()))

    def items_below(self, rid: bytes) -> list[Item]:
        out: list[Item] = []
        for leaf in self.leaves(rid):
            out.extend(leaf.items())
        return out

    def filter(self, rid: bytes, depth: int, keep: Callable[[Row], bool]) -> bytes | list[Row]:
        """The canonical subtree of the rows of ``rid`` that ``keep`` accepts.

        Returns the unchanged id when every row is kept, else the rows themselves when at
        most LEAF_MAX remain (the parent decides at which depth they become a leaf), else
        a new node id. No ``h`` is computed: filtering keeps the ``h`` order of the rows.
        """
        node = self.load(rid)
        if node.children is None:
            rows = [r for r in node.rows if keep(r)]
            return rid if len(rows) == node.count else rows
        parts = {slot: self.filter(cid, depth + 1, keep) for slot, cid in node.children.items()}
        if all(parts[s] == c for s, c in node.children.items()):
            return rid
        sizes = {s: len(p) if isinstance(p, list) else self.load(p).count for s, p in parts.items()}
        total = sum(sizes.values())
        if total <= LEAF_MAX:
            return [r for p in parts.values() for r in (p if isinstance(p, list) else self.all_rows(p))]
        kids: dict[int, bytes] = {}
        for slot, part in parts.items():
            if isinstance(part, bytes):
                kids[slot] = part
            elif part:
                kids[slot] = self.leaf_rows(depth + 1, part)[0]
        return self.inner(depth, total, kids)[0]

    def all_rows(self, rid: bytes) -> list[Row]:
        return [r for leaf in self.leaves(rid) for r in leaf.rows]

    # -- writing --

    def _add(self, node: _Node, data: bytes) -> Sub:
        rid = blake3.blake3(data).digest()
        self.pending[rid] = (node, data)
        return rid, node.count

    def leaf(self, depth: int, items: list[Item]) -> Sub:
        sub = self.leaf_rows(depth, [row for _, row in items])
        self.pending[sub[0]][0]._items = items  # h already known: keep it
        return sub

    def leaf_rows(self, depth: int, rows: list[Row]) -> Sub:
        """A leaf of ``rows``, which must be checked and already in ``h`` order."""
        node = _Node(depth, len(rows), None, rows)
        node._checked = True
        return self._add(node, ManifestNode.encode_leaf(depth, rows))

    def inner(self, depth: int, total: int, children: dict[int, bytes]) -> Sub:
        kids = sorted(children.items())
        data = ManifestNode.encode_inner(depth, total, [[s, c] for s, c in kids])
        return self._add(_Node(depth, total, dict(kids), None), data)

    def make(self, depth: int, items: list[Item]) -> Sub | None:
        """The canonical subtree at ``depth`` of ``items`` (sorted by h)."""
        if not items:
            return None
        if len(items) <= LEAF_MAX or depth >= MAX_DEPTH:
            return self.leaf(depth, items)
        children: dict[int, bytes] = {}
        for slot, group in groupby(items, key=lambda it: _slot(it[0], depth)):
            sub = self.make(depth + 1, list(group))
            assert sub is not None
            children[slot] = sub[0]
        return self.inner(depth, len(items), children)

    def update(self, rid: bytes, depth: int, changes: list[tuple[bytes, Row | None]]) -> tuple[Sub | None, int]:
        """Apply ``changes`` (sorted by h) below node ``rid``; returns (new subtree, old count)."""
        node = self.load(rid)
        if node.children is None:
            merged = dict(node.items())
            for h, row in changes:
                if row is None:
                    merged.pop(h, None)
                else:
                    merged[h] = row
            return self.make(depth, sorted(merged.items(), key=_first)), node.count
        kids = dict(node.children)
        total = node.count
        for slot, group in groupby(changes, key=lambda c: _slot(c[0], depth)):
            part = list(group)
            cid = kids.get(slot)
            if cid is None:
                sub, old = self.make(depth + 1, [(h, r) for h, r in part if r is not None]), 0
            else:
                sub, old = self.update(cid, depth + 1, part)
            total += (sub[1] if sub else 0) - old
            if sub is None:
                kids.pop(slot, None)
            else:
                kids[slot] = sub[0]
        if total <= LEAF_MAX:  # shrank below the threshold: canonical form is one leaf
            items: list[Item] = []
            for slot in sorted(kids):
                items.extend(self.items_below(kids[slot]))
            return self.make(depth, items), node.count
        return self.inner(depth, total, kids), node.count

    def flush(self, root: bytes) -> ObjectId:
        """Write the new nodes reachable from ``root`` in one transaction, children first."""
        out: list[tuple[ObjectId, ObjType, bytes]] = []
        seen: set[bytes] = set()

        def visit(rid: bytes) -> None:
            if rid in seen or rid in self.known or rid not in self.pending:
                return
            seen.add(rid)
            node, data = self.pending[rid]
            for cid in (node.children or {}).values():
                visit(cid)
            out.append((ObjectId(rid), ObjType.NODE, data))

        visit(root)
        if root == _EMPTY_RAW and not self.store.has(EMPTY):
            out.append((EMPTY, ObjType.NODE, _EMPTY_BYTES))
        if out:
            self.store.write(out, verified=True)
        self.stats.nodes_written += len(out)
        self.stats.bytes_written += sum(len(d) for _, _, d in out)
        for oid, _, _ in out:
            if oid.raw in self.pending:
                self.cache.put(oid.raw, self.pending[oid.raw][0])
        self.pending.clear()
        return ObjectId(root)

    # -- comparing --

    def expand(self, side: bytes | list[Item] | None) -> dict[int, Any] | list[Item]:
        if side is None:
            return []
        if isinstance(side, list):
            return side
        node = self.load(side)
        return dict(node.children) if node.children is not None else node.items()

    def diff(
        self, a: bytes | list[Item] | None, b: bytes | list[Item] | None, depth: int
    ) -> Iterator[tuple[Row | None, Row | None]]:
        """Rows that differ between two subtrees at the same path, in h order."""
        if isinstance(a, bytes) and a == b:
            return  # identical subtrees: the whole point of comparing by id
        ea, eb = self.expand(a), self.expand(b)
        if isinstance(ea, list) and isinstance(eb, list):
            yield from _diff_items(ea, eb)
            return
        ga = ea if isinstance(ea, dict) else _group(ea, depth)
        gb = eb if isinstance(eb, dict) else _group(eb, depth)
        for slot in sorted(ga.keys() | gb.keys()):
            yield from self.diff(ga.get(slot), gb.get(slot), depth + 1)

    def new_nodes(self, new: bytes, old: bytes | None) -> Iterator[bytes]:
        if new == old:
            return
        node = self.load(new)
        if node.children is not None:
            prev = self.load(old) if old is not None else None
            olds = prev.children if prev is not None and prev.children is not None else {}
            for slot, cid in node.children.items():
                yield from self.new_nodes(cid, olds.get(slot))
        yield new

    def walk(self, rid: bytes) -> Iterator[bytes]:
        node = self.load(rid)
        for cid in (node.children or {}).values():
            yield from self.walk(cid)
        yield rid


def _first(item: tuple[bytes, Any]) -> bytes:
    return item[0]


def _group(items: list[Item], depth: int) -> dict[int, list[Item]]:
    return {s: list(g) for s, g in groupby(items, key=lambda it: _slot(it[0], depth))}


def _diff_items(xa: list[Item], xb: list[Item]) -> Iterator[tuple[Row | None, Row | None]]:
    da, db = dict(xa), dict(xb)
    for h in sorted(da.keys() | db.keys()):
        ra, rb = da.get(h), db.get(h)
        if ra is None or rb is None or not _same(ra, rb):
            yield ra, rb


def _changes(changes: Mapping[EntryKey, Entry | None]) -> list[tuple[bytes, Row | None]]:
    out: list[tuple[bytes, Row | None]] = []
    for key, entry in changes.items():
        if entry is None:
            out.append((key_hash(key), None))
        else:
            row = _row(key, entry)
            out.append((_row_hash(row), row))
    out.sort(key=_first)
    return out


# -- the public API -----------------------------------------------------------------------


def build(
    store: Store,
    entries: Mapping[EntryKey, Entry] | Iterable[tuple[EntryKey, Entry]],
    *,
    stats: Stats | None = None,
) -> ObjectId:
    """Store the manifest holding exactly ``entries`` and return its root id.

    Built bottom-up from the entries sorted by ``h`` and written in one transaction. When a
    key occurs twice in an iterable, the last entry wins.
    """
    pairs = entries.items() if isinstance(entries, Mapping) else entries
    by_h: dict[bytes, Row] = {}
    for key, entry in pairs:
        row = _row(key, entry)
        by_h[_row_hash(row)] = row
    tree = _Tree(store, stats)
    sub = tree.make(0, sorted(by_h.items(), key=_first))
    return tree.flush(sub[0] if sub else _EMPTY_RAW)


def update(
    store: Store,
    root: ObjectId,
    changes: Mapping[EntryKey, Entry | None],
    *,
    stats: Stats | None = None,
) -> ObjectId:
    """Apply ``changes`` (an Entry sets a key, None removes it) and return the new root.

    Only the nodes on the paths of the changed keys are rewritten; removing an absent key
    or setting an entry to its current value changes nothing and writes nothing.
    """
    items = _changes(changes)
    if not items:
        return root
    tree = _Tree(store, stats)
    sub, _ = tree.update(root.raw, 0, items)
    return tree.flush(sub[0] if sub else _EMPTY_RAW)


def lookup(store: Store, root: ObjectId, key: EntryKey, *, stats: Stats | None = None) -> Entry | None:
    """The entry stored under ``key``, or None (a miss is a value)."""
    h = key_hash(key)
    env, kind, name, variant = key.env.raw, key.kind, key.key, key.variant
    tree = _Tree(store, stats)
    rid, depth = root.raw, 0
    while True:
        node = tree.load(rid)
        if node.children is None:
            # Scan without checking every row: a leaf is decoded far more often than it
            # is fully used. The returned row is checked; a malformed one cannot match.
            for row in node.raw_rows():
                if row[2] == name and row[0] == env and row[1] == kind and row[3] == variant:
                    _check_row(row)
                    return _entry_of(row)
            return None
        nxt = node.children.get(_slot(h, depth))
        if nxt is None:
            return None
        rid, depth = nxt, depth + 1


def entries(store: Store, root: ObjectId, *, stats: Stats | None = None) -> Iterator[tuple[EntryKey, Entry]]:
    """Every (key, entry) of the manifest, in ``h`` order."""
    tree = _Tree(store, stats)
    return ((_key_of(row), _entry_of(row)) for leaf in tree.leaves(root.raw) for row in leaf.rows)


def count(store: Store, root: ObjectId) -> int:
    """How many entries the manifest holds (read from the root; O(1))."""
    return _Tree(store, None).load(root.raw).count


def check(store: Store, root: ObjectId) -> Iterator[str]:
    """Problems with the tree's canonical shape, one line each (for fsck); none if sound.

    Checks what hashing each node cannot: depths, counts, slot paths and the order of
    rows. Missing or undecodable nodes raise, as everywhere else.
    """
    tree = _Tree(store, None)
    stack: list[tuple[bytes, int, int]] = [(root.raw, 0, 0)]  # (id, depth, path bits)
    while stack:
        rid, depth, path = stack.pop()
        node, name = tree.load(rid), ObjectId(rid).short()
        if node.depth != depth:
            yield f"node {name} says depth {node.depth}, sits at depth {depth}"
        if node.children is not None:
            below = 0
            for slot, cid in node.children.items():
                below += tree.load(cid).count
                stack.append((cid, depth + 1, (path << BITS) | slot))
            if below != node.count:
                yield f"node {name} says {node.count} entries, its children hold {below}"
            continue
        hs = [h for h, _ in node.items()]
        if hs != sorted(hs) or len(set(hs)) != len(hs):
            yield f"leaf {name} is not sorted by key hash"
        if depth and any(int.from_bytes(h, "big") >> (256 - depth * BITS) != path for h in hs):
            yield f"leaf {name} holds entries that belong elsewhere in the tree"
        if node.count > LEAF_MAX and depth < MAX_DEPTH:
            yield f"leaf {name} holds {node.count} entries (at most {LEAF_MAX})"


class Change(NamedTuple):
    """One differing key: ``old`` is None for an added key, ``new`` None for a removed one."""

    key: EntryKey
    old: Entry | None
    new: Entry | None


def diff(store: Store, a: ObjectId, b: ObjectId, *, stats: Stats | None = None) -> Iterator[Change]:
    """The changes that turn manifest ``a`` into ``b``, in ``h`` order.

    Subtrees with equal ids are skipped unread, so k changes in a tree of n entries read
    O(k log n) nodes.
    """
    tree = _Tree(store, stats)
    for ra, rb in tree.diff(a.raw, b.raw, 0):
        row = ra if ra is not None else rb
        assert row is not None
        yield Change(
            _key_of(row),
            _entry_of(ra) if ra is not None else None,
            _entry_of(rb) if rb is not None else None,
        )


def walk(store: Store, root: ObjectId, *, stats: Stats | None = None) -> Iterator[ObjectId]:
    """Every node id of the tree, children before their parent (the order to send them)."""
    return (ObjectId(r) for r in _Tree(store, stats).walk(root.raw))


def new_nodes(
    store: Store, old_root: ObjectId | None, new_root: ObjectId, *, stats: Stats | None = None
) -> Iterator[ObjectId]:
    """Node ids reachable from ``new_root`` and not from ``old_root``, children first.

    Exact, not an over-approximation: a node's entries fix its path, so a node of the new
    tree can only occur in the old one at the same slot path, where it is compared by id.
    ``old_root=None`` yields the whole tree.
    """
    tree = _Tree(store, stats)
    old = old_root.raw if old_root is not None else None
    return (ObjectId(r) for r in tree.new_nodes(new_root.raw, old))


def select(
    store: Store, root: ObjectId, envs: Iterable[ObjectId], *, stats: Stats | None = None
) -> ObjectId:
    """The manifest of the entries of ``root`` whose env id is in ``envs`` (partial pulls)."""
    wanted = {e.raw for e in envs}
    tree = _Tree(store, stats)
    got = tree.filter(root.raw, 0, lambda row: row[0] in wanted)
    if isinstance(got, list):  # at most LEAF_MAX entries left: one leaf at the root
        got = tree.leaf_rows(0, got)[0] if got else _EMPTY_RAW
    return tree.flush(got)


# -- merge ----------------------------------------------------------------------------------


class _Deleted:
    def __repr__(self) -> str:
        return "DELETED"


#: What a resolver returns to resolve a conflict by removing the key.
DELETED = _Deleted()

Resolution = Entry | _Deleted | None
Resolver = Callable[[EntryKey, Entry | None, Entry | None], Resolution]


@dataclass(frozen=True)
class Rule:
    """A named resolver: ``fn(key, ours, theirs)`` -> Entry (keep it), DELETED, or None.

    ``ours``/``theirs`` are None where that side removed the key. None means "cannot
    decide": the conflict is reported unresolved.
    """

    name: str
    fn: Resolver

    def __call__(self, key: EntryKey, ours: Entry | None, theirs: Entry | None) -> Resolution:
        return self.fn(key, ours, theirs)


#: Metadata keys holding a measured time in milliseconds, in order of preference.
TIMING_KEYS = ("time_ms", "timing_ms")


def _timing(entry: Entry | None) -> float | None:
    if entry is None:
        return None
    for name in TIMING_KEYS:
        value = entry.meta.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _measured_at(entry: Entry) -> float:
    value = entry.meta.get("measured_at")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else float("inf")  # type: ignore[arg-type]


def _keep_ours(key: EntryKey, ours: Entry | None, theirs: Entry | None) -> Resolution:
    return DELETED if ours is None else ours


def _faster(key: EntryKey, ours: Entry | None, theirs: Entry | None) -> Resolution:
    # The side with the lower measured time wins; a side with a time beats one without
    # (a removal has none); equal times go to the earlier measurement (``measured_at``),
    # and otherwise to ours, so the rule is total and both merge orders agree.
    mine, other = _timing(ours), _timing(theirs)
    if other is not None and (mine is None or other < mine):
        return theirs
    if other is not None and other == mine and theirs is not None and ours is not None:
        if _measured_at(theirs) < _measured_at(ours):
            return theirs
    return _keep_ours(key, ours, theirs)


OURS = Rule("ours", _keep_ours)
FASTER = Rule("faster", _faster)

#: kind -> rule; "*" is the fallback for kinds not listed. Only autotune records
#: (cas.autotune, one per tuned kernel and device class) carry a measured time; the raw
#: files torch keeps (``autotune``/``autotune_remote``/``gemm_timing``) keep ours, and
#: hydrate writes the records' choices over them.
DEFAULT_RULES: Mapping[str, Resolver] = MappingProxyType({"autotune_record": FASTER, "*": OURS})


@dataclass
class MergeResult:
    """A three-way merge: the merged root, what is left unresolved, what rules decided.

    For an unresolved conflict ``root`` keeps our side; the caller decides whether to
    commit it (e.g. raise MergeConflict). ``resolved`` lists (key, chosen, rule name),
    ``chosen`` None where the rule removed the key.
    """

    root: ObjectId
    conflicts: list[tuple[EntryKey, Entry | None, Entry | None]] = field(default_factory=list)
    resolved: list[tuple[EntryKey, Entry | None, str]] = field(default_factory=list)


def _rule_name(resolver: Resolver) -> str:
    return str(getattr(resolver, "name", None) or getattr(resolver, "__name__", "rule"))


def merge(
    store: Store,
    base: ObjectId,
    ours: ObjectId,
    theirs: ObjectId,
    rules: Mapping[str, Resolver] = DEFAULT_RULES,
    *,
    stats: Stats | None = None,
) -> MergeResult:
    """Three-way merge: the union of both sides' changes since ``base``.

    A conflict is a key both sides changed differently; it goes to ``rules[kind]`` (or
    ``rules["*"]``); without a rule, or when the rule returns None, it stays unresolved.
    Costs two diffs and one update: O(k log n) for k changed keys.
    """
    if ours == theirs or theirs == base:
        return MergeResult(ours)
    if ours == base:
        return MergeResult(theirs)
    mine = {c.key: c.new for c in diff(store, base, ours, stats=stats)}
    result = MergeResult(ours)
    apply: dict[EntryKey, Entry | None] = {}
    for key, _, new in diff(store, base, theirs, stats=stats):
        if key not in mine:
            apply[key] = new
            continue
        if mine[key] == new:
            continue
        resolver = rules.get(key.kind) or rules.get("*")
        chosen = resolver(key, mine[key], new) if resolver is not None else None
        if chosen is None:
            result.conflicts.append((key, mine[key], new))
            continue
        value = None if isinstance(chosen, _Deleted) else chosen
        result.resolved.append((key, value, _rule_name(resolver)))  # type: ignore[arg-type]
        if value != mine[key]:
            apply[key] = value
    result.root = update(store, ours, apply, stats=stats)
    return result
