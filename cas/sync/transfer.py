"""Push, fetch, pull and clone over any Remote (docs/sync.md).

Push offers what negotiate.plan_push finds, asks ``missing`` once, sends the rest in
packs in closure order and then compare-and-swaps each remote ref. Fetch lists the
remote's refs, walks what is new (cas.sync.walk, or cas.sync.partial for ``envs``) and
then records the remote's branches in ``refs/remotes/<name>/*``. Pull integrates a
fetched branch (cas.sync.merge); clone fills an empty store.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import cast

from cas import pack, provenance, remotes_config
from cas.config import identity
from cas.digest import ObjectId
from cas.errors import (
    BadRefName,
    CorruptObject,
    NonFastForward,
    ObjectNotFound,
    RefConflict,
    RefNotFound,
    RemoteError,
    TagExists,
    UsageError,
)
from cas.history import is_ancestor
from cas.refs import DEFAULT_BRANCH, HEADS, REMOTES, TAGS, branch_ref, check_any, check_name
from cas.remote.base import FrameSender, Remote, WireObject
from cas.revocations import REF as REVOCATIONS
from cas.store import Store
from cas.sync import negotiate
from cas.sync.merge import Integration, integrate
from cas.sync.partial import fetch_partial
from cas.sync.results import ProgressFn, RefUpdate, Result, Stats, tracking_ref
from cas.sync.revoked import take, with_revocations
from cas.sync.walk import PARALLEL, Walker, fetch_full, pipelined

#: Objects read from the store at once while producing a push.
READ_GROUP = 32


# -- push ------------------------------------------------------------------------------


def push(
    store: Store,
    remote: Remote,
    refspecs: Sequence[tuple[str, str]],
    *,
    remote_name: str | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
) -> Result:
    """Publish local refs on ``remote``: ``refspecs`` pairs (local ref, remote ref).

    A branch moves only forward unless ``force``; a tag never moves unless ``force``.
    Every remote ref moves by compare-and-swap against the value listed at the start,
    so a concurrent push to the same ref makes this one fail with "pull first". The
    revocation branch is always carried (cas.sync.revoked.with_revocations).
    """
    start = time.monotonic()
    result = Result()
    remote_refs = listed_refs(remote)
    todo: list[RefUpdate] = []
    for local_ref, remote_ref in with_revocations(store, refspecs):
        new = store.refs.get(local_ref)
        if new is None:
            raise RefNotFound(f"no local ref {local_ref} to push", ref=local_ref)
        old = remote_refs.get(remote_ref)
        if old == new:
            result.updates.append(RefUpdate(remote_ref, old, new, "up-to-date"))
            continue
        try:
            status = _push_status(store, remote.url, remote_ref, old, new, force)
        except NonFastForward:
            if remote_ref != REVOCATIONS:
                raise
            note = "the remote has revocations this store lacks; fetch, then push again"
            result.updates.append(RefUpdate(remote_ref, old, new, "rejected", note))
            continue
        todo.append(RefUpdate(remote_ref, old, new, status))
    if todo:
        plan = negotiate.plan_push(store, [u.new for u in todo if u.new], remote_refs.values())
        candidates = plan.ordered()
        _check_local(store, candidates)
        absent = remote.missing(candidates) if candidates else []
        _send(store, remote, absent, result.stats, progress, set(plan.leaves), plan.sizes)
    for update in todo:
        _publish(remote, update)
        result.updates.append(update)
        if remote_name and update.ref.startswith(HEADS) and update.new is not None:
            tracking = f"{REMOTES}{remote_name}/{update.ref[len(HEADS):]}"
            store.refs.set(tracking, update.new, who=identity(), message="push")
    result.stats.seconds = time.monotonic() - start
    return result


def _push_status(
    store: Store, url: str, ref: str, old: ObjectId | None, new: ObjectId, force: bool
) -> str:
    if old is None:
        return "new"
    if ref.startswith(TAGS):
        if force:
            return "forced"
        raise TagExists(
            f"tag {ref[len(TAGS):]} already exists on {url} (at {old.short()})",
            hint="tags never move; use --force to move it anyway",
            ref=ref,
        )
    if store.objects.has(old):
        old_commit, _ = negotiate.peel_local(store, old)
        new_commit, _ = negotiate.peel_local(store, new)
        if old_commit is not None and new_commit is not None:
            if is_ancestor(store, old_commit, new_commit):
                return "fast-forward"
        why = "it would discard commits the remote has"
    else:
        why = "the remote has commits you do not have"
    if force:
        return "forced"
    raise NonFastForward(
        f"push to {ref} on {url} rejected: {why}",
        hint="pull first (`cas pull`), or push --force to overwrite",
        ref=ref,
    )


def _check_local(store: Store, ids: list[ObjectId]) -> None:
    """Refuse to push from an incomplete store before anything is sent."""
    lacking = store.objects.missing(ids)
    if lacking:
        raise ObjectNotFound(
            f"cannot push: object {lacking[0].short()} is referenced but not in this store"
            + (f" ({len(lacking)} objects missing)" if len(lacking) > 1 else ""),
            hint="run `cas fsck`; nothing was sent",
            oid=lacking[0],
        )


def _publish(remote: Remote, update: RefUpdate) -> None:
    try:
        remote.update_ref(update.ref, update.new, update.old)
    except RefConflict as exc:
        raise RefConflict(
            f"someone else pushed to {update.ref} on {remote.url} meanwhile; nothing was overwritten",
            hint="pull first (`cas pull`), then push again",
            ref=update.ref,
        ) from exc


def _read_objects(
    store: Store, ids: Sequence[ObjectId], frames: Callable[[Sequence[ObjectId]], bool | None]
) -> Iterator[WireObject | pack.Sized]:
    """The objects to push; those stored compressed carry their zstd frames (pack.Framed,
    a chunked blob its chunks' frames), which travel as they are, so no side compresses
    them again. Where the remote takes stored frames (``frames(group)`` is not None:
    whether a chunked blob may go as its chunks' frames), those come as pack.Sized,
    never decompressed here either."""
    for i in range(0, len(ids), READ_GROUP):
        group = ids[i : i + READ_GROUP]
        multi = frames(group)
        objs = (
            pack.from_store(store.objects, group)
            if multi is None
            else pack.from_store_frames(store.objects, group, multi_frame=multi)
        )
        for oid, obj in zip(group, objs, strict=True):
            if obj is None:
                raise CorruptObject(f"object {oid.short()} vanished from the store during a push")
            yield obj


def _stored_frames(remote: Remote, sizes: Mapping[ObjectId, int]) -> Callable[[Sequence[ObjectId]], bool | None]:
    """For a group of ids: None where ``remote`` takes no pack.Sized (cas.remote.base.
    FrameSender), else whether it takes a chunked blob as its chunks' frames, asked (its
    health, once) only for a group holding a blob over pack.MULTI_FRAME_MIN."""
    if getattr(remote, "takes_stored_frames", False) is not True:
        return lambda _group: None
    sender = cast(FrameSender, remote)
    return lambda group: any(sizes.get(o, 0) > pack.MULTI_FRAME_MIN for o in group) and sender.multi_frame


def _send(
    store: Store,
    remote: Remote,
    ids: Sequence[ObjectId],
    stats: Stats,
    progress: ProgressFn | None,
    leaves: set[ObjectId],
    sizes: dict[ObjectId, int],
) -> None:
    if not ids:
        return
    total = sum(sizes.get(oid, 0) for oid in ids)  # blobs dominate; others count 0

    def sent(batch: list[WireObject | pack.Sized], wire: int) -> None:
        stats.wire_bytes += wire
        stats.objects += len(batch)
        stats.bytes += sum(map(pack.raw_size, batch))
        if progress:
            progress("send", stats.objects, stats.bytes, len(ids), total)

    # One send_pack per pack: each accepted pack is kept by the remote, so a transfer
    # cut half-way resumes (next push, or RetryingRemote) with only what is missing.
    # Blobs and envs reference nothing, so their packs may arrive in any order and go
    # PARALLEL at a time (hashing and zstd release the GIL); nodes, commits and tags
    # follow one pack at a time, in closure order, as the remote checks each pack.
    cut = next((i for i, oid in enumerate(ids) if oid not in leaves), len(ids))
    frames = _stored_frames(remote, sizes)
    send = cast(FrameSender, remote).send_pack  # pack.Sized only where it takes them
    pipelined(pack.batches(_read_objects(store, ids[:cut], frames)), send, sent, PARALLEL)
    pipelined(pack.batches(_read_objects(store, ids[cut:], frames)), send, sent, 1)


# -- fetch -----------------------------------------------------------------------------


def fetch(
    store: Store,
    remote: Remote,
    *,
    remote_name: str | None = None,
    envs: set[ObjectId] | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    cpu_variant: str | None = None,
) -> Result:
    """Bring the remote's branches and tags into the store.

    Branches land in ``refs/remotes/<remote_name>/*`` (stale ones are pruned); tags in
    ``refs/tags/*``, never moving an existing local tag unless ``force``. With ``envs``
    the fetch is partial (see :func:`fetch_partial` and docs/sync.md). The remote's
    revocations are taken in where they are honoured (cas.sync.revoked.take).
    """
    start = time.monotonic()
    result = Result()
    wanted = {
        name: oid
        for name, oid in listed_refs(remote, remote_name).items()
        if name.startswith(HEADS) or name.startswith(TAGS)
    }
    walker = Walker(store, remote, result.stats, progress)
    who = provenance.remote_identity(remote)
    if envs is not None:
        revocations = wanted.pop(REVOCATIONS, None)  # never partial: it holds no entries
        provenance.mark_remote(store, fetch_full(walker, [revocations] if revocations else []), who)
        fetch_partial(walker, wanted, envs, remote_name, result, cpu_variant)
    else:
        received = fetch_full(walker, list(wanted.values()))
        provenance.mark_remote(store, received, who)
        remotes_config.note_server(store, remote.url, provenance.server_id_of(remote))
        result.tips = {n: o for n, o in wanted.items()}
        _track(store, wanted, remote_name, force, result)
        revocations = wanted.get(REVOCATIONS)
    take(store, revocations, who, result)
    if remote_name is not None and store.meta.get(CLONE_PENDING) == remote_name:
        _finish_clone(store, remote.url, result.tips, envs is not None)
    result.stats.seconds = time.monotonic() - start
    return result


def listed_refs(remote: Remote, remote_name: str | None = None) -> dict[str, ObjectId]:
    """The remote's refs, every name checked by the local rules (refs.check_any), and
    the tracking ref each branch would get, before anything is fetched: a name like
    ``refs/heads/../../x``, ``refs/heads/-x`` or one of 5,000 characters stops the fetch
    with one line and nothing half-made."""
    listed = remote.list_refs()
    for name in listed:
        why = _breaks_local_rules(name, remote_name)
        if why is not None:
            raise RemoteError(
                f"{remote.url} lists a ref that cannot be a local ref: {why}",
                hint="nothing was fetched; the remote's refs need renaming there",
                url=remote.url,
            )
    return listed


def _breaks_local_rules(name: str, remote_name: str | None) -> str | None:
    """Why the remote ref ``name`` (or its tracking ref) cannot be a local ref; None if it can."""
    try:
        check_any(name)
        if remote_name is not None and name.startswith(HEADS):
            check_name(tracking_ref(remote_name, name))
    except BadRefName as exc:
        return exc.message
    return None


def _track(
    store: Store, wanted: dict[str, ObjectId], remote_name: str | None, force: bool, result: Result
) -> None:
    who = identity()
    for name, oid in sorted(wanted.items()):
        if name.startswith(TAGS):
            old = store.refs.get(name)
            if old == oid:
                continue
            if old is not None and not force:
                note = f"local tag is at {old.short()}; tags never move without --force"
                result.updates.append(RefUpdate(name, old, oid, "rejected", note))
                continue
            store.refs.set(name, oid, expected=old, who=who, message="fetch")
            result.updates.append(RefUpdate(name, old, oid, "forced" if old else "new"))
        elif remote_name:
            ref = tracking_ref(remote_name, name)
            old = store.refs.set(ref, oid, who=who, message="fetch")
            if old != oid:
                result.updates.append(RefUpdate(ref, old, oid, "new" if old is None else "updated"))
    if not remote_name:
        return
    heads = {tracking_ref(remote_name, n) for n in wanted if n.startswith(HEADS)}
    prefix = f"{REMOTES}{remote_name}/"
    for ref, oid in store.refs.as_dict(prefix).items():
        if ref not in heads and not ref.startswith(prefix + "tags/"):
            store.refs.set(ref, None, expected=oid, who=who, message="fetch: pruned")
            result.updates.append(RefUpdate(ref, oid, None, "deleted"))


# -- pull and clone ----------------------------------------------------------------------


def remote_branch_tip(result: Result, branch: str) -> ObjectId:
    """The local commit standing for the remote's ``branch`` after a fetch."""
    ref = branch if branch.startswith("refs/") else HEADS + branch
    tip = result.tips.get(ref)
    if tip is None:
        raise RefNotFound(f"the remote has no branch {branch}", ref=ref)
    return tip


def pull(
    store: Store,
    remote: Remote,
    *,
    branch: str,
    remote_branch: str | None = None,
    remote_name: str | None = None,
    envs: set[ObjectId] | None = None,
    force: bool = False,
    allow_conflicts: bool = False,
    progress: ProgressFn | None = None,
    cpu_variant: str | None = None,
) -> tuple[Result, Integration]:
    """Fetch, then bring local ``branch`` up to the remote's ``remote_branch``.

    Fast-forwards when it can; otherwise writes a merge commit whose manifest is the
    three-way merge under the per-kind rules (sync.merge.integrate).
    """
    fetched = fetch(
        store, remote, remote_name=remote_name, envs=envs, force=force, progress=progress,
        cpu_variant=cpu_variant,
    )
    other = remote_branch or branch
    theirs = remote_branch_tip(fetched, other)
    what = f"pull {remote_name or remote.url} {other}"
    done = integrate(
        store,
        branch_ref(branch),
        theirs,
        message=what,
        who=identity(),
        allow_conflicts=allow_conflicts,
        remote=provenance.remote_identity(remote),
    )
    return fetched, done


def clone(
    store: Store,
    remote: Remote,
    *,
    remote_name: str = "origin",
    url: str | None = None,
    envs: set[ObjectId] | None = None,
    progress: ProgressFn | None = None,
    cpu_variant: str | None = None,
    options: Mapping[str, str] | None = None,
) -> Result:
    """Fill an empty store (no refs) from ``remote``: every branch and tag.

    A clone cut half-way leaves a store without local branches (meta ``clone.pending``);
    cloning again, or fetching from the same remote, resumes it and makes them.

    ``url`` (if given) is recorded as the remote's config, with ``options`` (transport
    options such as ``deadline``). HEAD becomes ``main`` when the
    remote has it, else its first branch.
    """
    if store.refs.as_dict() and store.meta.get(CLONE_PENDING) != remote_name:
        raise UsageError(
            f"the store at {store.path} is not empty", hint="clone into a new directory"
        )
    known = {r.name: r.url for r in remotes_config.list_remotes(store)}
    if url is not None and known.get(remote_name) != url:
        # Re-running a cut clone finds its own config: that resumes, not an error.
        remotes_config.add(store, remote_name, url, **(options or {}))
    # Until the branches are made: a cut clone is finished by `cas clone` or `cas fetch`.
    store.meta.set(CLONE_PENDING, remote_name)
    return fetch(store, remote, remote_name=remote_name, envs=envs, progress=progress,
                 cpu_variant=cpu_variant)


#: Meta key naming the remote of a clone not yet finished (its local branches not made).
CLONE_PENDING = "clone.pending"


def _finish_clone(store: Store, url: str, tips: dict[str, ObjectId], partial: bool) -> None:
    """Make a clone's local branches (and a partial clone's tags), set HEAD, and mark the
    clone done. Branches already made by a cut run are left as they are."""
    who = identity()
    branches = []
    for name, tip in sorted(tips.items()):
        if name == REVOCATIONS:
            continue  # made by take() where its revocations are honoured, else not at all
        if name.startswith(HEADS) or (partial and store.refs.get(name) is None):
            # A partial clone cannot hold the remote's tag objects: its tags are
            # lightweight tags of the local partial commits.
            if store.refs.get(name) is None:
                store.refs.set(name, tip, expected=None, who=who, message=f"clone from {url}")
            if name.startswith(HEADS):
                branches.append(name)
    if branches:
        head = HEADS + DEFAULT_BRANCH if HEADS + DEFAULT_BRANCH in branches else branches[0]
        store.meta.set("HEAD", head)
    store.meta.set(CLONE_PENDING, None)


__all__ = [
    "ProgressFn",
    "RefUpdate",
    "Result",
    "Stats",
    "clone",
    "fetch",
    "pull",
    "push",
    "remote_branch_tip",
    "tracking_ref",
]
