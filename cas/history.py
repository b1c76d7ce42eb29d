"""Commits and their ancestry: create, log, is-ancestor, merge base."""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from cas import manifest, provenance
from cas.config import identity
from cas.digest import ObjectId
from cas.errors import RefConflict
from cas.objects import Commit, Entry, EntryKey
from cas.refs import branch_ref, load_commit
from cas.store import Store

__all__ = [
    "commit",
    "commit_changes",
    "is_ancestor",
    "load_commit",
    "log",
    "merge_base",
]

#: How often commit_changes re-reads the tip and retries after losing a race.
MAX_RETRIES = 64


def commit(
    store: Store,
    root: ObjectId,
    parents: list[ObjectId] | tuple[ObjectId, ...],
    message: str,
    metadata: Mapping[str, Any] | None = None,
    *,
    author: str | None = None,
    when: int | None = None,
) -> ObjectId:
    """Write a commit object (the manifest and parents must already be stored)."""
    c = Commit(
        manifest=root,
        parents=tuple(parents),
        author=author or identity(),
        time=int(time.time()) if when is None else when,
        message=message,
        metadata=dict(metadata or {}),
    )
    missing = store.objects.missing(c.references())
    if missing:
        from cas.errors import ObjectNotFound

        raise ObjectNotFound(
            f"cannot commit: object {missing[0].short()} is not in the store", oid=missing[0]
        )
    oid = store.objects.put_object(c)
    if not c.metadata.get("remote"):
        provenance.mark_local(store, oid)
    return oid


def commit_changes(
    store: Store,
    branch: str,
    changes: Mapping[EntryKey, Entry | None],
    message: str,
    metadata: Mapping[str, Any] | None = None,
    *,
    author: str | None = None,
) -> ObjectId:
    """Apply ``changes`` on top of ``branch`` and move it, retrying lost races.

    Reads the tip, updates its manifest, writes a commit whose parent is the tip and
    compare-and-swaps the ref; if another writer moved the branch meanwhile, starts over
    from the new tip. Nothing is ever overwritten.
    """
    ref = branch_ref(branch)
    for _ in range(MAX_RETRIES):
        tip = store.refs.get(ref)
        base = load_commit(store, tip).manifest if tip is not None else manifest.EMPTY
        root = manifest.update(store, base, dict(changes))
        if root == manifest.EMPTY:
            manifest.build(store, [])  # make sure the empty manifest is stored
        parents = [tip] if tip is not None else []
        oid = commit(store, root, parents, message, metadata, author=author)
        try:
            store.refs.set(ref, oid, expected=tip, who=author or identity(), message=message)
            return oid
        except RefConflict:
            continue
    raise RefConflict(f"branch {branch} kept changing; gave up after {MAX_RETRIES} tries")


def log(
    store: Store, start: ObjectId | Iterable[ObjectId], limit: int | None = None
) -> Iterator[tuple[ObjectId, Commit]]:
    """Commits reachable from ``start`` (one commit or several), each once, newest first
    (by commit time, then id)."""
    starts = [start] if isinstance(start, ObjectId) else list(dict.fromkeys(start))
    seen = set(starts)
    heap: list[tuple[int, bytes, ObjectId, Commit]] = []
    for oid in starts:
        first = load_commit(store, oid)
        heapq.heappush(heap, (-first.time, oid.raw, oid, first))
    n = 0
    while heap and (limit is None or n < limit):
        _, _, oid, c = heapq.heappop(heap)
        yield oid, c
        n += 1
        for p in c.parents:
            if p not in seen:
                seen.add(p)
                pc = load_commit(store, p)
                heapq.heappush(heap, (-pc.time, p.raw, p, pc))


def ancestors(store: Store, start: ObjectId) -> set[ObjectId]:
    """``start`` and every commit reachable from it."""
    out = {start}
    todo = [start]
    while todo:
        for p in load_commit(store, todo.pop()).parents:
            if p not in out:
                out.add(p)
                todo.append(p)
    return out


def is_ancestor(store: Store, a: ObjectId, b: ObjectId) -> bool:
    """True if ``a`` is ``b`` or an ancestor of ``b`` (a fast-forward from a to b)."""
    if a == b:
        return True
    return a in ancestors(store, b)


def merge_base(store: Store, a: ObjectId, b: ObjectId) -> ObjectId | None:
    """A best common ancestor of ``a`` and ``b`` (the newest common one), or None."""
    common = ancestors(store, a) & ancestors(store, b)
    if not common:
        return None
    # The best common ancestors are those that no other common commit descends from.
    dominated: set[ObjectId] = set()
    for c in common:
        if c not in dominated:
            dominated |= ancestors(store, c) - {c}
    best = common - dominated
    return max(best, key=lambda o: (load_commit(store, o).time, o.raw))
