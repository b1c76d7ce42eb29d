"""The tree algorithms: one operation on one store reads nodes through the cache,
builds, updates, filters and compares subtrees, and writes its new nodes in one batch.

Every function here works on raw rows and raw ids (see cas.manifest.node); the public
API in cas.manifest.api turns them into EntryKey/Entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import blake3

from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import CorruptObject, ObjectNotFound
from cas.manifest.cache import cache_for
from cas.manifest.node import (
    EMPTY,
    EMPTY_BYTES,
    EMPTY_NODE,
    EMPTY_RAW,
    LEAF_MAX,
    MAX_DEPTH,
    Item,
    Node,
    Row,
    Sub,
    decode_node,
    key_hash,
    make_row,
    row_hash,
    same_row,
    slot_of,
)
from cas.objects import Entry, EntryKey, ManifestNode
from cas.store import Store


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


class Tree:
    """One operation on one store: reads through the cache, buffers new nodes."""

    def __init__(self, store: Store, stats: Stats | None) -> None:
        self.store = store
        self.cache = cache_for(store)
        self.stats = stats if stats is not None else Stats()
        self.pending: dict[bytes, tuple[Node, bytes]] = {}
        self.known: set[bytes] = set()  # ids read from the store: never rewritten

    # -- reading --

    def load(self, rid: bytes) -> Node:
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

    def _fetch(self, rid: bytes) -> Node:
        if rid == EMPTY_RAW:
            return EMPTY_NODE  # a constant; build/update store it when it is a root
        oid = ObjectId(rid)
        got = self.store.objects.get_typed(oid, verify=True)  # a damaged disk is an error, not a row
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
        return decode_node(oid, data)

    def leaves(self, rid: bytes) -> Iterator[Node]:
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

    def _add(self, node: Node, data: bytes) -> Sub:
        rid = blake3.blake3(data).digest()
        self.pending[rid] = (node, data)
        return rid, node.count

    def leaf(self, depth: int, items: list[Item]) -> Sub:
        sub = self.leaf_rows(depth, [row for _, row in items])
        self.pending[sub[0]][0]._items = items  # h already known: keep it
        return sub

    def leaf_rows(self, depth: int, rows: list[Row]) -> Sub:
        """A leaf of ``rows``, which must be checked and already in ``h`` order."""
        node = Node(depth, len(rows), None, rows)
        node._checked = True
        return self._add(node, ManifestNode.encode_leaf(depth, rows))

    def inner(self, depth: int, total: int, children: dict[int, bytes]) -> Sub:
        kids = sorted(children.items())
        data = ManifestNode.encode_inner(depth, total, [[s, c] for s, c in kids])
        return self._add(Node(depth, total, dict(kids), None), data)

    def make(self, depth: int, items: list[Item]) -> Sub | None:
        """The canonical subtree at ``depth`` of ``items`` (sorted by h)."""
        if not items:
            return None
        if len(items) <= LEAF_MAX or depth >= MAX_DEPTH:
            return self.leaf(depth, items)
        children: dict[int, bytes] = {}
        for slot, group in groupby(items, key=lambda it: slot_of(it[0], depth)):
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
            return self.make(depth, sorted(merged.items(), key=first)), node.count
        kids = dict(node.children)
        total = node.count
        for slot, group in groupby(changes, key=lambda c: slot_of(c[0], depth)):
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
        if root == EMPTY_RAW and not self.store.objects.has(EMPTY):
            out.append((EMPTY, ObjType.NODE, EMPTY_BYTES))
        if out:
            self.store.objects.write(out, verified=True)
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


def first(item: tuple[bytes, Any]) -> bytes:
    return item[0]


def _group(items: list[Item], depth: int) -> dict[int, list[Item]]:
    return {s: list(g) for s, g in groupby(items, key=lambda it: slot_of(it[0], depth))}


def _diff_items(xa: list[Item], xb: list[Item]) -> Iterator[tuple[Row | None, Row | None]]:
    da, db = dict(xa), dict(xb)
    for h in sorted(da.keys() | db.keys()):
        ra, rb = da.get(h), db.get(h)
        if ra is None or rb is None or not same_row(ra, rb):
            yield ra, rb


def changes_of(changes: Mapping[EntryKey, Entry | None]) -> list[tuple[bytes, Row | None]]:
    out: list[tuple[bytes, Row | None]] = []
    for key, entry in changes.items():
        if entry is None:
            out.append((key_hash(key), None))
        else:
            row = make_row(key, entry)
            out.append((row_hash(row), row))
    out.sort(key=first)
    return out
