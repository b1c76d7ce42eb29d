"""Bring a local branch up to a fetched commit: fast-forward, or merge manifests.

The per-kind rules live with the kinds (:data:`RULES`: the faster autotune record wins,
``cas.tuning.MERGE_RULES``; anything else keeps ours, ``manifest.DEFAULT_RULES``); a key
both sides changed differently that no rule decides is a conflict. Conflicts are
reported, and the branch is not moved unless the caller accepts our side for them
(``allow_conflicts``), because a merge that silently drops one side of a conflict would
be a lost update. A revoked entry (cas.revocations) is never taken from their side, and
gives way where ours holds it, so a merge never brings one back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cas import history, manifest, revocations, tuning
from cas.digest import ObjectId
from cas.errors import MergeConflict
from cas.objects import Entry, EntryKey
from cas.refs import load_commit, short_name
from cas.store import Store

Conflict = tuple[EntryKey, Entry | None, Entry | None]

#: kind -> merge rule for branches: the manifest's fallback (keep ours) and the rules the
#: modules that define kinds declare. Injected here so the manifest names no kind.
RULES: Mapping[str, manifest.Resolver] = MappingProxyType({**manifest.DEFAULT_RULES, **tuning.MERGE_RULES})


@dataclass
class Integration:
    """What happened to a branch: ``kind`` is created, up-to-date, fast-forward or merge."""

    ref: str
    kind: str
    old: ObjectId | None
    new: ObjectId | None
    conflicts: list[Conflict] = field(default_factory=list)
    resolved: list[tuple[EntryKey, Entry | None, str]] = field(default_factory=list)
    #: Keys whose entry on their side is revoked: not taken.
    refused: list[EntryKey] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "ref": self.ref,
            "kind": self.kind,
            "old": str(self.old) if self.old else None,
            "new": str(self.new) if self.new else None,
            "conflicts": [str(k) for k, _, _ in self.conflicts],
            "resolved": [{"key": str(k), "rule": rule} for k, _, rule in self.resolved],
            "refused_revoked": [str(k) for k in self.refused],
        }


def integrate(
    store: Store,
    ref: str,
    theirs: ObjectId,
    *,
    message: str,
    who: str,
    allow_conflicts: bool = False,
    remote: str | None = None,
) -> Integration:
    """Move ``ref`` to include ``theirs``: create, fast-forward, or write a merge commit.

    The ref is moved by compare-and-swap against the value read here, so a concurrent
    local commit makes this fail with RefConflict rather than be overwritten.
    """
    ours = store.refs.get(ref)
    if ours is None:
        store.refs.set(ref, theirs, expected=None, who=who, message=message)
        return Integration(ref, "created", None, theirs)
    if history.is_ancestor(store, theirs, ours):
        return Integration(ref, "up-to-date", ours, ours)
    if history.is_ancestor(store, ours, theirs):
        store.refs.set(ref, theirs, expected=ours, who=who, message=message + " (fast-forward)")
        return Integration(ref, "fast-forward", ours, theirs)
    base_commit = history.merge_base(store, ours, theirs)
    base = load_commit(store, base_commit).manifest if base_commit else manifest.EMPTY
    revoked = revocations.load(store)
    result = manifest.merge(
        store, base, load_commit(store, ours).manifest, load_commit(store, theirs).manifest, RULES,
        refuse=(lambda e: e.blob in revoked) if len(revoked) else None,
    )
    out = Integration(ref, "merge", ours, None, result.conflicts, result.resolved, result.refused)
    if result.conflicts and not allow_conflicts:
        keys = ", ".join(str(k) for k, _, _ in result.conflicts[:3])
        more = f" and {len(result.conflicts) - 3} more" if len(result.conflicts) > 3 else ""
        raise MergeConflict(
            f"merging into {short_name(ref)}: {len(result.conflicts)} conflicting entries ({keys}{more})",
            hint="rerun with --ours to keep the local entries for them",
            ref=ref,
            conflicts=len(result.conflicts),
        )
    decided = [k for k, _, _ in result.resolved if k.kind == tuning.KIND]
    sides = [{k: manifest.lookup(store, load_commit(store, c).manifest, k) for k in decided} for c in (ours, theirs)]
    tuned = tuning.merge_lines(result.resolved, *sides)
    if tuned:  # say which measurement each tuned kernel kept, and why
        message = f"{message}\n\nautotune, faster measurement kept:\n" + "\n".join(tuned)
    meta = {
        "producer": "merge",
        **({"autotune": tuned} if tuned else {}),
        # merged-in entries came from ``remote``: the trust policy treats the commit so
        **({"remote": remote} if remote else {}),
        "resolved": [[str(k), rule] for k, _, rule in result.resolved],
        "conflicts_kept_ours": [str(k) for k, _, _ in result.conflicts],
        **({"refused_revoked": [str(k) for k in result.refused]} if result.refused else {}),
    }
    merged = history.commit(store, result.root, [ours, theirs], message, meta, author=who)
    store.refs.set(ref, merged, expected=ours, who=who, message=message)
    out.new = merged
    return out
