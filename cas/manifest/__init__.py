"""The manifest: a history-independent hash trie from EntryKey to Entry.

CONTRACT (other modules code against these names; the implementation fills them in):

    EMPTY: ObjectId                      id of the empty manifest (a leaf with no entries)
    build(store, entries) -> ObjectId    root of a manifest holding exactly ``entries``
    update(store, root, changes) -> ObjectId
                                         apply {EntryKey: Entry | None} (None removes)
    lookup(store, root, key) -> Entry | None
    check_entry(key, entry) -> None      raises UsageError if update could not store it
    entries(store, root) -> Iterator[tuple[EntryKey, Entry]]
    count(store, root) -> int
    diff(store, a, b) -> Iterator[Change]     Change(key, old, new); reads O(k log n) nodes
    merge(store, base, ours, theirs, rules=DEFAULT_RULES) -> MergeResult
    walk(store, root) -> Iterator[ObjectId]    every node id of the tree (not blobs/envs)
    new_nodes(store, old_root, new_root) -> Iterator[ObjectId]
                                         node ids reachable from new_root and not old_root
    select(store, root, envs) -> ObjectId      the sub-manifest of entries whose env is in envs

All functions write new nodes in one store transaction per call, children before parents.

The package, one module per job (each imports only those above it in this list, as an
import-linter contract in pyproject.toml checks):

    node.py    the node format: where an entry sits (``h``, slots), rows, encode/decode
    cache.py   the per-store LRU of decoded nodes
    tree.py    the tree algorithms on raw rows: build, update, filter, diff, walk, flush
    api.py     the public operations above, on EntryKey/Entry
    merge.py   three-way merge and its rules; the manifest names no kind (rules that know
               a kind live with it, e.g. cas.tuning.MERGE_RULES)
"""

from __future__ import annotations

from cas.manifest.api import (
    Change,
    build,
    check,
    check_entry,
    count,
    diff,
    entries,
    lookup,
    new_nodes,
    select,
    update,
    walk,
)
from cas.manifest.merge import (
    DEFAULT_RULES,
    DELETED,
    OURS,
    MergeResult,
    Resolution,
    Resolver,
    Rule,
    merge,
)
from cas.manifest.node import BITS, EMPTY, FANOUT, LEAF_MAX, MAX_DEPTH, key_hash
from cas.manifest.tree import Stats
from cas.objects import Entry, EntryKey, ManifestNode

__all__ = [
    "BITS", "DEFAULT_RULES", "DELETED", "EMPTY", "FANOUT", "LEAF_MAX", "MAX_DEPTH", "OURS",
    "Change", "Entry", "EntryKey", "ManifestNode", "MergeResult", "Resolution", "Resolver",
    "Rule", "Stats",
    "build", "check", "check_entry", "count", "diff", "entries", "key_hash", "lookup", "merge", "new_nodes",
    "select", "update", "walk",
]  # fmt: skip
