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
"""

from __future__ import annotations

from cas.objects import Entry, EntryKey, ManifestNode

__all__ = ["Entry", "EntryKey", "ManifestNode"]
