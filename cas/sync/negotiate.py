"""What to send: the objects a push must offer, computed locally in O(change).

The remote is known to hold the complete closure of every ref it lists (remotes never
publish incomplete objects). So for the commits we are about to publish, only three
kinds of object can be new to it:

* commits not reachable from any remote tip we also hold (the "haves");
* manifest nodes of those commits that are not in a tree the remote already has —
  ``manifest.new_nodes(base, root)`` against the first parent's tree (or, for a root
  commit, the remote tip's tree), which skips shared subtrees: O(k log n) for k changes;
* the blobs and envs referenced by the *new* leaves (an old leaf's blobs are held).

This is a superset of what is missing (e.g. after someone else pushed the same blob);
one ``missing`` request filters it. The result is in closure order: blobs and envs,
then nodes children first, then commits parents first, then tags.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from cas import manifest
from cas.codec import ObjType, decode
from cas.digest import ObjectId
from cas.errors import CorruptObject
from cas.objects import Commit, Tag
from cas.store import Store


@dataclass
class Plan:
    """Candidate objects for a push, by kind, each list already in sending order."""

    leaves: list[ObjectId] = field(default_factory=list)
    nodes: list[ObjectId] = field(default_factory=list)
    commits: list[ObjectId] = field(default_factory=list)
    tags: list[ObjectId] = field(default_factory=list)
    #: Blob sizes as the manifest entries give them (for progress totals).
    sizes: dict[ObjectId, int] = field(default_factory=dict)

    def ordered(self) -> list[ObjectId]:
        """Every candidate in closure order, each once."""
        seen: set[ObjectId] = set()
        out = []
        for oid in (*self.leaves, *self.nodes, *self.commits, *self.tags):
            if oid not in seen:
                seen.add(oid)
                out.append(oid)
        return out

    def __len__(self) -> int:
        return len(self.leaves) + len(self.nodes) + len(self.commits) + len(self.tags)


def _typed(store: Store, oid: ObjectId) -> tuple[ObjType, bytes]:
    return store.objects.require(oid)


def peel_local(store: Store, oid: ObjectId) -> tuple[ObjectId | None, list[ObjectId]]:
    """(the commit a target leads to, the tag objects on the way); None if not a commit."""
    tags: list[ObjectId] = []
    for _ in range(32):
        otype, data = _typed(store, oid)
        if otype == ObjType.TAG:
            tags.append(oid)
            oid = Tag.decode(data).target
            continue
        return (oid if otype == ObjType.COMMIT else None), tags
    return None, tags


def held_commits(store: Store, remote_tips: Iterable[ObjectId]) -> set[ObjectId]:
    """Commits the remote holds for sure: every ancestor of its tips that we know."""
    starts = []
    for tip in remote_tips:
        if store.objects.has(tip):
            commit, _ = peel_local(store, tip)
            if commit is not None:
                starts.append(commit)
    held: set[ObjectId] = set()
    todo = list(starts)
    while todo:
        oid = todo.pop()
        if oid in held:
            continue
        held.add(oid)
        todo.extend(_commit(store, oid).parents)
    return held


def _commit(store: Store, oid: ObjectId) -> Commit:
    return Commit.decode(store.objects.require(oid)[1])


def new_commits(store: Store, tips: Iterable[ObjectId], held: set[ObjectId]) -> list[ObjectId]:
    """Commits reachable from ``tips`` and not in ``held``, parents before children."""
    order: list[ObjectId] = []
    seen: set[ObjectId] = set(held)
    # Iterative post-order DFS: a commit is emitted after all its new parents.
    for tip in tips:
        if tip in seen:
            continue
        stack: list[tuple[ObjectId, bool]] = [(tip, False)]
        while stack:
            oid, expanded = stack.pop()
            if expanded:
                order.append(oid)
                continue
            if oid in seen:
                continue
            seen.add(oid)
            stack.append((oid, True))
            for parent in _commit(store, oid).parents:
                if parent not in seen:
                    stack.append((parent, False))
    return order


def plan_push(
    store: Store, targets: Iterable[ObjectId], remote_tips: Iterable[ObjectId]
) -> Plan:
    """The candidate objects that publishing ``targets`` may need, in closure order."""
    tips = list(remote_tips)
    held = held_commits(store, tips)
    plan = Plan()
    heads: list[ObjectId] = []
    for target in targets:
        commit, tags = peel_local(store, target)
        plan.tags.extend(reversed(tags))  # innermost tag first: closure order
        if commit is not None:
            heads.append(commit)
    plan.commits = new_commits(store, heads, held)
    fallback = _first_held_root(store, tips, held)
    new_set = set(plan.commits)
    roots: dict[ObjectId, ObjectId | None] = {}
    for oid in plan.commits:
        c = _commit(store, oid)
        base = fallback
        if c.parents and (c.parents[0] in held or c.parents[0] in new_set):
            base = _commit(store, c.parents[0]).manifest
        roots.setdefault(c.manifest, base)
    nodes: list[ObjectId] = []
    seen_nodes: set[ObjectId] = set()
    for root, base in roots.items():
        found = list(manifest.new_nodes(store, base, root)) if base != root else []
        # A tree equal to its base yields nothing; the root itself may still be new to
        # the remote (e.g. the empty manifest of a first commit), so offer it.
        for oid in (*found, root):
            if oid not in seen_nodes:
                seen_nodes.add(oid)
                nodes.append(oid)
    plan.nodes = nodes
    plan.leaves, plan.sizes = _leaf_references(store, nodes)
    return plan


def _first_held_root(store: Store, tips: list[ObjectId], held: set[ObjectId]) -> ObjectId | None:
    for tip in tips:
        if store.objects.has(tip):
            commit, _ = peel_local(store, tip)
            if commit is not None and commit in held:
                return _commit(store, commit).manifest
    return None


def node_links(data: bytes) -> tuple[list[bytes], list[tuple[bytes, bytes, int]]]:
    """(child ids, leaf rows as (blob id, env id, size)) of a node, as raw bytes.

    The walk only needs the links, so the rows are read from the msgpack body without
    building EntryKey/Entry objects (ManifestNode.decode cost ~1.5 ms a leaf).
    """
    _, body = decode(data, ObjType.NODE)
    try:
        if "c" in body:
            return [bytes(c) for _, c in body["c"]], []
        return [], [(bytes(r[4]), bytes(r[0]), int(r[5])) for r in body["e"]]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CorruptObject(f"malformed manifest node: {exc}") from exc


def _leaf_references(
    store: Store, nodes: list[ObjectId]
) -> tuple[list[ObjectId], dict[ObjectId, int]]:
    """Blobs and envs referenced by the leaves among ``nodes``, each once; blob sizes."""
    out: list[bytes] = []
    seen: set[bytes] = set()
    sizes: dict[bytes, int] = {}
    for i in range(0, len(nodes), 1024):
        got = store.objects.get_many(nodes[i : i + 1024])
        for oid in nodes[i : i + 1024]:
            _, rows = node_links(got[oid][1])
            for blob, env, size in rows:
                sizes[blob] = size
                for ref in (blob, env):
                    if ref not in seen:
                        seen.add(ref)
                        out.append(ref)
    return [ObjectId(r) for r in out], {ObjectId(r): sizes[r] for r in out if r in sizes}
