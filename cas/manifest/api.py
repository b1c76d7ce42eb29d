"""The public operations on a manifest (see the contract in cas.manifest)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

from cas.codec import check_int
from cas.digest import ObjectId
from cas.errors import UsageError
from cas.manifest.node import (
    BITS,
    EMPTY_RAW,
    LEAF_MAX,
    MAX_DEPTH,
    Row,
    check_row,
    entry_of,
    key_hash,
    key_of,
    make_row,
    row_hash,
    slot_of,
)
from cas.manifest.tree import Stats, Tree, changes_of, first
from cas.objects import Entry, EntryKey
from cas.store import Store


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
        row = make_row(key, entry)
        by_h[row_hash(row)] = row
    tree = Tree(store, stats)
    sub = tree.make(0, sorted(by_h.items(), key=first))
    return tree.flush(sub[0] if sub else EMPTY_RAW)


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
    items = changes_of(changes)
    if not items:
        return root
    tree = Tree(store, stats)
    sub, _ = tree.update(root.raw, 0, items)
    return tree.flush(sub[0] if sub else EMPTY_RAW)


def check_entry(key: EntryKey, entry: Entry) -> None:
    """Raise :class:`~cas.errors.UsageError` (:class:`~cas.errors.BadEntryKey` for a key
    outside its kind's grammar) if :func:`update` could not store this one entry.

    For a caller that records many entries from strangers (the Redis door): it drops the
    one that fails and commits the rest, where a failing :func:`update` would lose all.
    ``make_row`` checks every field, and canonicalises metadata that is not a flat map of
    scalars; its fast path for a flat map leaves one thing to the node encoder, integers
    past 64 bits, checked here (a walk of the whole row with ``canonical`` was a third of
    the Redis door's commit work per SET).
    """
    row = make_row(key, entry)
    try:
        for value in row[7].values():
            check_int(value)
    except ValueError as exc:
        raise UsageError(f"entry {key.key[:80]!r} cannot be stored: {exc}") from exc


def lookup(store: Store, root: ObjectId, key: EntryKey, *, stats: Stats | None = None) -> Entry | None:
    """The entry stored under ``key``, or None (a miss is a value)."""
    h = key_hash(key)
    env, kind, name, variant = key.env.raw, key.kind, key.key, key.variant
    tree = Tree(store, stats)
    rid, depth = root.raw, 0
    while True:
        node = tree.load(rid)
        if node.children is None:
            # Scan without checking every row: a leaf is decoded far more often than it
            # is fully used. The returned row is checked; a malformed one cannot match.
            for row in node.raw_rows():
                if row[2] == name and row[0] == env and row[1] == kind and row[3] == variant:
                    check_row(row)
                    return entry_of(row)
            return None
        nxt = node.children.get(slot_of(h, depth))
        if nxt is None:
            return None
        rid, depth = nxt, depth + 1


def entries(store: Store, root: ObjectId, *, stats: Stats | None = None) -> Iterator[tuple[EntryKey, Entry]]:
    """Every (key, entry) of the manifest, in ``h`` order."""
    tree = Tree(store, stats)
    return ((key_of(row), entry_of(row)) for leaf in tree.leaves(root.raw) for row in leaf.rows)


def count(store: Store, root: ObjectId) -> int:
    """How many entries the manifest holds (read from the root; O(1))."""
    return Tree(store, None).load(root.raw).count


def check(store: Store, root: ObjectId) -> Iterator[str]:
    """Problems with the tree's canonical shape, one line each (for fsck); none if sound.

    Checks what hashing each node cannot: depths, counts, slot paths and the order of
    rows. Missing or undecodable nodes raise, as everywhere else.
    """
    tree = Tree(store, None)
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
    tree = Tree(store, stats)
    for ra, rb in tree.diff(a.raw, b.raw, 0):
        row = ra if ra is not None else rb
        assert row is not None
        yield Change(
            key_of(row),
            entry_of(ra) if ra is not None else None,
            entry_of(rb) if rb is not None else None,
        )


def walk(store: Store, root: ObjectId, *, stats: Stats | None = None) -> Iterator[ObjectId]:
    """Every node id of the tree, children before their parent (the order to send them)."""
    return (ObjectId(r) for r in Tree(store, stats).walk(root.raw))


def new_nodes(
    store: Store, old_root: ObjectId | None, new_root: ObjectId, *, stats: Stats | None = None
) -> Iterator[ObjectId]:
    """Node ids reachable from ``new_root`` and not from ``old_root``, children first.

    Exact, not an over-approximation: a node's entries fix its path, so a node of the new
    tree can only occur in the old one at the same slot path, where it is compared by id.
    ``old_root=None`` yields the whole tree.
    """
    tree = Tree(store, stats)
    old = old_root.raw if old_root is not None else None
    return (ObjectId(r) for r in tree.new_nodes(new_root.raw, old))


def select(
    store: Store, root: ObjectId, envs: Iterable[ObjectId], *, stats: Stats | None = None
) -> ObjectId:
    """The manifest of the entries of ``root`` whose env id is in ``envs`` (partial pulls)."""
    wanted = {e.raw for e in envs}
    tree = Tree(store, stats)
    got = tree.filter(root.raw, 0, lambda row: row[0] in wanted)
    if isinstance(got, list):  # at most LEAF_MAX entries left: one leaf at the root
        got = tree.leaf_rows(0, got)[0] if got else EMPTY_RAW
    return tree.flush(got)
