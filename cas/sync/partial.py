"""Partial fetches: only the entries of some envs (docs/sync.md, "Partial pulls")."""

from __future__ import annotations

from cas import manifest, provenance
from cas.codec import ObjType
from cas.config import identity
from cas.digest import ObjectId
from cas.errors import CorruptObject
from cas.history import commit as make_commit
from cas.objects import Commit, Entry, EntryKey, ManifestNode, Tag
from cas.refs import load_commit
from cas.sync.results import RefUpdate, Result, tracking_ref
from cas.sync.walk import NODES, TOPS, Walker, tag_target, unique


def fetch_partial(
    walker: Walker,
    wanted: dict[str, ObjectId],
    envs: set[ObjectId],
    remote_name: str | None,
    result: Result,
    cpu_variant: str | None = None,
) -> None:
    """Fetch only the entries of ``envs``, as local commits (docs/sync.md, Partial pulls).

    With ``cpu_variant`` (``cpu-<fingerprint>``), entries built for one CPU model (their
    variant starts with ``cpu-``: C++ kernels, precompiled headers, GEMM timings) are
    fetched only for that CPU: a 150 MB header travels only to a machine it fits.

    The remote's commit cannot be stored here (its manifest would be incomplete), so
    each remote ref becomes a local commit whose manifest is the selected entries, with
    metadata ``partial_of`` (the remote commit) and ``envs``. It is recorded in
    ``refs/remotes/<name>/<branch>`` (tags: ``.../tags/<tag>``), and its parent is the
    previous partial commit there, so ``cas log`` shows the pulls.
    """
    store = walker.store
    env_list = sorted(str(e) for e in envs)
    for name, tip in sorted(wanted.items()):
        ref = tracking_ref(remote_name or "_", name) if remote_name else None
        old = store.refs.get(ref) if ref else None
        meta = load_commit(store, old).metadata if old is not None else {}
        if old is not None and meta.get("partial_of_ref") == str(tip) and meta.get("envs") == env_list:
            result.tips[name] = old
            continue
        # Chain partial commits of one ref; never hang one under a full commit, where it
        # would read as "every other env's entries were deleted".
        parents = [old] if old is not None and "partial_of" in meta else []
        commit_id, commit = fetch_top(walker, tip)
        selected = [(k, e) for k, e in remote_entries(walker, commit.manifest)
                    if k.env in envs and _fits(k, cpu_variant)]
        walker.leaves({e.blob: e.size for _, e in selected}, unique(k.env for k, _ in selected))
        root = manifest.build(store, selected)

        metadata = {
            "producer": "partial-pull",
            # the entries came from this remote: the trust policy treats the commit so
            "remote": provenance.remote_identity(walker.remote),
            "partial_of": str(commit_id),
            "partial_of_ref": str(tip),
            "envs": env_list,
        }
        if cpu_variant is not None:
            metadata["cpu"] = cpu_variant
        local = make_commit(
            store,
            root,
            parents,
            f"partial pull of {name} ({commit_id.short()}): {len(selected)} entries",
            metadata,
        )
        result.tips[name] = local
        if ref:
            store.refs.set(ref, local, expected=old, who=identity(), message="partial fetch")
            result.updates.append(RefUpdate(ref, old, local, "partial", f"of {commit_id.short()}"))


def _fits(key: EntryKey, cpu_variant: str | None) -> bool:
    return cpu_variant is None or not key.variant.startswith("cpu-") or key.variant == cpu_variant


def fetch_top(walker: Walker, tip: ObjectId) -> tuple[ObjectId, Commit]:
    """Peel ``tip`` (tags) to its commit, reading the store, the stage, or the remote."""
    oid, types = tip, TOPS
    for _ in range(32):
        got = walker.store.objects.get_typed(oid)
        if got is None:
            got = walker.structured({oid: types})[oid]
        otype, data = got
        if otype == ObjType.COMMIT:
            return oid, Commit.decode(data)
        if otype != ObjType.TAG:
            raise CorruptObject(f"ref target {oid.short()} is a {otype.label}, not a commit")
        tag = Tag.decode(data)
        oid, types = tag.target, tag_target(tag)
    raise CorruptObject(f"tag chain at {tip.short()} is too long")


def remote_entries(walker: Walker, root: ObjectId) -> list[tuple[EntryKey, Entry]]:
    """Every entry of a remote tree: stored subtrees read locally, the rest staged."""
    store = walker.store
    out: list[tuple[EntryKey, Entry]] = []
    frontier = [root]
    while frontier:
        local = set(frontier) - set(store.objects.missing(frontier))
        for oid in local:
            out.extend(manifest.entries(store, oid))
        remote_ids = [o for o in frontier if o not in local]
        got = walker.structured(dict.fromkeys(remote_ids, NODES)) if remote_ids else {}
        children: list[ObjectId] = []
        for oid in remote_ids:
            node = ManifestNode.decode(got[oid][1])
            if node.is_leaf:
                out.extend(node.entries)
            else:
                children.extend(cid for _, cid in node.children)
        frontier = unique(children)
    return out
