"""The fetch walk: verify what arrives, stage structured objects, promote bottom-up.

Fetch walks the remote top-down (tags, commits, then manifest levels, skipping every
subtree already held). Every id it asks for has a type known in advance (a ref target
is a commit or a tag, a tag's target what the tag says, a parent a commit, a manifest
a node, a leaf row a blob and an env): the remote is told (``Remote.fetch`` ``expect``)
and refuses an object of another type from its header, before decompressing it.

Blobs and envs reference nothing and are stored as they arrive; commits and nodes wait
in the staging area until the walk is complete and are then promoted children first in
one transaction, so the local store never holds an object without its references and a
cut fetch resumes from what it staged and stored.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from cas import ingest, pack
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import RemoteError
from cas.objects import Commit, Tag
from cas.remote.base import Remote, WireObject
from cas.store import Store
from cas.store.records import Encoded
from cas.sync import negotiate
from cas.sync.results import ProgressFn, Stats

#: Ids per ``fetch`` of structured objects (one level of a walk may take several).
FETCH_IDS = 4096
#: Raw bytes per ``fetch`` of blobs: one pack's worth, so a cut loses at most one pack.
FETCH_BYTES = pack.PACK_BYTES
#: Packs of blobs in flight at once, each way (they have no order to keep). A fetch or
#: push over HTTP thus holds at most this many connections to a `cas serve`
#: (cas.remote.http.CONNECTIONS bounds the client's pool to the same number), so that N
#: machines behind one address fit a per-peer cap of 3 x N (docs/server.md, "A fleet of
#: machines"). 3 rather than 2: a 128 MiB fetch took 1.6-1.8 s against 1.9 s with 2
#: (docs/benchmarks.md, "Large pins"); more would ask operators for a larger cap.
PARALLEL = 3
#: Stored bytes (records, mostly compressed) of fetched blobs written per transaction.
STORE_BYTES = 4 * pack.PACK_BYTES

J = TypeVar("J")
R = TypeVar("R")


def pipelined(
    jobs: Iterable[J], work: Callable[[J], R], done: Callable[[J, R], None], workers: int
) -> None:
    """Run ``work`` on up to ``workers`` jobs at once; ``done`` runs here, in job order."""
    if workers <= 1:
        for job in jobs:
            done(job, work(job))
        return
    pending: deque[tuple[J, Future[R]]] = deque()
    with ThreadPoolExecutor(workers) as pool:
        try:
            for job in jobs:
                pending.append((job, pool.submit(work, job)))
                if len(pending) >= workers:
                    first, fut = pending.popleft()
                    done(first, fut.result())
            while pending:
                first, fut = pending.popleft()
                done(first, fut.result())
        except BaseException:
            for _, fut in pending:
                fut.cancel()
            raise


class Walker:
    """Fetches objects for a store, verifying each, staging the structured ones."""

    def __init__(self, store: Store, remote: Remote, stats: Stats, progress: ProgressFn | None):
        self.store = store
        self.remote = remote
        self.stats = stats
        self.progress = progress
        self._lock = threading.Lock()

    def structured(
        self, expect: Mapping[ObjectId, frozenset[ObjType]]
    ) -> dict[ObjectId, tuple[ObjType, bytes]]:
        """The objects ``expect`` names, each of one of the types it gives, from the
        stage, else from the remote (then staged)."""
        out: dict[ObjectId, tuple[ObjType, bytes]] = {}
        need = []
        for oid, types in expect.items():
            got = self.store.stage.get(oid)
            if got is not None and got[0] in types:
                out[oid] = got
            else:
                need.append(oid)
        for i in range(0, len(need), FETCH_IDS):
            batch = need[i : i + FETCH_IDS]
            objs = self._fetch(batch, expect)
            self._count(objs)
            self.store.stage.put(objs)
            out.update((oid, (t, d)) for oid, t, d in objs)
        return out

    def leaves(self, blobs: dict[ObjectId, int], envs: Iterable[ObjectId]) -> None:
        """Fetch and store ``blobs`` (id: size) and ``envs`` (no references: stored as
        they arrive).

        Batches are fetched and verified PARALLEL at a time and stored in order, in one
        transaction per STORE_BYTES of records (a durable commit costs two fsyncs: one per
        8 MiB pack made a large pin's fetch wait on the disk); a cut fetch still stores
        every batch that finished before the cut.
        """
        expect: dict[ObjectId, frozenset[ObjType]] = dict.fromkeys(blobs, BLOBS)
        for env in envs:
            expect[env] = expect.get(env, frozenset()) | ENVS  # an env's bytes may be a blob too
        wanted = {oid: blobs.get(oid, 0) for oid in expect}
        ids = self.store.objects.missing(list(wanted))
        total = sum(wanted[o] for o in ids)
        done_objects = done_bytes = 0

        def work(batch: list[ObjectId]) -> list[WireObject]:
            return self._fetch(batch, expect)

        held: list[Encoded] = []

        def store() -> None:
            # Stores are written here, on one thread: LMDB may grow its map only while
            # no other transaction of this process is open.
            self.store.objects.write(held, encoded=True)
            held.clear()

        def done(batch: list[ObjectId], objs: list[WireObject]) -> None:
            nonlocal done_objects, done_bytes
            held.extend(ingest.records(objs))  # frames as they arrived, large blobs chunked
            if sum(len(r[2]) for r in held) >= STORE_BYTES:
                store()
            self._count(objs)
            done_objects += len(objs)
            done_bytes += sum(len(o[2]) for o in objs)
            if self.progress:
                self.progress("fetch", done_objects, done_bytes, len(ids), total)

        try:
            pipelined(by_size(ids, wanted, FETCH_BYTES), work, done, PARALLEL)
        finally:  # a cut fetch keeps what it verified (resumed, it asks for the rest)
            if held:
                store()

    def _count(self, objs: list[WireObject]) -> None:
        self.stats.objects += len(objs)
        self.stats.bytes += sum(len(o[2]) for o in objs)

    def _fetch(
        self, asked: Sequence[ObjectId], expect: Mapping[ObjectId, frozenset[ObjType]]
    ) -> list[WireObject]:
        """Fetch ``asked``, then check every object against its id and expected type
        (the remote checked the types already, from headers); all or nothing."""
        sub = {oid: expect[oid] for oid in asked}
        wire = [0]  # bytes the remote reported receiving (progress gives a running total)
        got = self.remote.fetch(asked, lambda _n, received: wire.__setitem__(0, received), expect=sub)
        with self._lock:  # walks fetch PARALLEL batches at once
            self.stats.wire_bytes += wire[0]
        url = self.remote.url
        wanted = set(asked)
        for oid, _, _ in got:
            if oid not in wanted:
                raise RemoteError(f"remote {url} sent {oid.short()}, which was not asked for", url=url)
        # ids, expected types, structure: malformed bodies fail here, before staging
        ingest.verify_objects(
            got, expect=sub, source=url, hint="nothing of it was stored; check the remote with `cas fsck`"
        )
        seen = {oid for oid, _, _ in got}
        absent = [o for o in asked if o not in seen]
        if absent:
            raise RemoteError(
                f"remote {url} lacks object {absent[0].short()}"
                + (f" and {len(absent) - 1} more" if len(absent) > 1 else "")
                + " that its refs need",
                hint="the remote is incomplete; nothing was stored here",
                url=url,
                oid=absent[0],
            )
        return got


def by_size(ids: list[ObjectId], sizes: dict[ObjectId, int], limit: int) -> Iterator[list[ObjectId]]:
    batch: list[ObjectId] = []
    size = 0
    for oid in ids:
        n = sizes.get(oid, 0) + 64
        if batch and (size + n > limit or len(batch) >= FETCH_IDS):
            yield batch
            batch, size = [], 0
        batch.append(oid)
        size += n
    if batch:
        yield batch


TOPS = frozenset({ObjType.COMMIT, ObjType.TAG})
COMMITS = frozenset({ObjType.COMMIT})
NODES = frozenset({ObjType.NODE})
BLOBS = frozenset({ObjType.BLOB})
ENVS = frozenset({ObjType.ENV})


def tag_target(tag: Tag) -> frozenset[ObjType]:
    """What a tag's target must be: the type the tag names, when the walk can follow it
    (a commit or a tag); else TOPS, so that the target is refused as not one."""
    return frozenset({tag.target_type}) if tag.target_type in TOPS else TOPS


def add(expect: dict[ObjectId, frozenset[ObjType]], oid: ObjectId, types: frozenset[ObjType]) -> None:
    """Record that ``oid`` may be of ``types`` (several paths to one id: any of them)."""
    expect[oid] = expect.get(oid, frozenset()) | types


def fetch_full(walker: Walker, tips: Sequence[ObjectId]) -> list[ObjectId]:
    """Bring ``tips`` and everything they reference into the store (closure kept).

    Returns the commits that were received (for provenance)."""
    store = walker.store
    tags: list[ObjectId] = []
    parents: dict[ObjectId, tuple[ObjectId, ...]] = {}
    roots: list[ObjectId] = []
    frontier = dict.fromkeys(store.objects.missing(unique(tips)), TOPS)  # ref targets
    seen = set(frontier)
    while frontier:
        got = walker.structured(frontier)
        nxt: dict[ObjectId, frozenset[ObjType]] = {}
        for oid in frontier:
            otype, data = got[oid]
            if otype == ObjType.TAG:
                tags.append(oid)
                tag = Tag.decode(data)
                add(nxt, tag.target, tag_target(tag))
            else:
                c = Commit.decode(data)
                parents[oid] = c.parents
                roots.append(c.manifest)
                for p in c.parents:
                    add(nxt, p, COMMITS)
        frontier = {o: nxt[o] for o in store.objects.missing(list(nxt)) if o not in seen}
        seen.update(frontier)
    nodes = fetch_trees(walker, roots)
    order = [*reversed(nodes), *parents_first(parents), *reversed(tags)]
    store.stage.promote(order)
    return list(parents)


def fetch_trees(walker: Walker, roots: Sequence[ObjectId]) -> list[ObjectId]:
    """Fetch the nodes of the trees at ``roots`` that are not stored, level by level,
    then their missing blobs and envs. Returns the node ids in discovery order."""
    store = walker.store
    order: list[ObjectId] = []
    raw_blobs: dict[bytes, int] = {}
    raw_envs: dict[bytes, None] = {}
    frontier = store.objects.missing(unique(roots))
    seen = set(frontier)
    while frontier:
        got = walker.structured(dict.fromkeys(frontier, NODES))
        children: list[ObjectId] = []
        for oid in frontier:
            kids, rows = negotiate.node_links(got[oid][1])
            order.append(oid)
            for blob, env, size in rows:
                raw_blobs.setdefault(blob, size)
                raw_envs[env] = None
            children.extend(ObjectId(c) for c in kids)
        # A stored subtree is complete (closure), so the walk stops at it.
        frontier = [o for o in store.objects.missing(unique(children)) if o not in seen]
        seen.update(frontier)
    walker.leaves({ObjectId(k): v for k, v in raw_blobs.items()}, map(ObjectId, raw_envs))
    return order


def parents_first(parents: dict[ObjectId, tuple[ObjectId, ...]]) -> list[ObjectId]:
    out: list[ObjectId] = []
    done: set[ObjectId] = set()
    for start in parents:
        stack = [(start, False)]
        while stack:
            oid, expanded = stack.pop()
            if expanded:
                out.append(oid)
                continue
            if oid in done or oid not in parents:
                continue
            done.add(oid)
            stack.append((oid, True))
            stack.extend((p, False) for p in parents[oid] if p not in done)
    return out


def unique(ids: Iterable[ObjectId]) -> list[ObjectId]:
    return list(dict.fromkeys(ids))
