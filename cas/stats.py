"""stats: what a store holds, by object type, and what a ref's manifest holds.

Counts come from the object records (no payload is read); per-ref entry counts read the
ref's manifest through :mod:`cas.manifest`. With ``gc_preview``, also the store's gc
budget (cas.budget) and what the next gc would free: a dry run of it (a mark of the
store, as costly as the gc's own).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cas import budget as budgets
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import BudgetTooSmall, CasError, RefNotFound
from cas.gc import DEFAULT_GRACE_SECONDS, gc
from cas.objects import Commit, Tag
from cas.store import Store


def human_size(n: float) -> str:
    """A byte count (or rate) as people read it: ``512 B``, ``1.5 KiB`` ... ``2.0 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@dataclass
class TypeStats:
    """Objects of one type: how many, their bytes, and what they take on disk."""

    count: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "raw": self.raw_bytes, "stored": self.stored_bytes}


@dataclass
class Bucket:
    """Manifest entries of one kind or one env: how many, and their artifacts' bytes."""

    count: int = 0
    bytes: int = 0


@dataclass
class EntryStats:
    """The entries of one manifest (of the commit a ref names), by kind and by env id."""

    manifest: ObjectId
    commit: ObjectId | None = None
    entries: int = 0
    entry_bytes: int = 0
    by_kind: dict[str, Bucket] = field(default_factory=dict)
    by_env: dict[str, Bucket] = field(default_factory=dict)


@dataclass
class GcPreview:
    """The store's saved budget, and what the next ``cas gc`` would do (a dry run)."""

    max_size: int | None = None
    keep_commits: int | None = None
    #: Stored bytes now, and what the next gc would free (eviction included).
    size: int = 0
    frees_bytes: int = 0
    frees_objects: int = 0
    evicts: int = 0
    #: Set when the budget cannot be met: what gc must keep, and the error's line.
    pinned_bytes: int | None = None
    problem: str | None = None


@dataclass
class Stats:
    """The result of :func:`stats`.

    ``raw_bytes`` is the uncompressed size of what is stored once: a chunked blob's
    bytes are counted through its chunks (shared chunks once), not again at its record.
    Per type, ``blob`` still shows each blob at its full size.
    """

    by_type: dict[str, TypeStats] = field(default_factory=dict)
    objects: int = 0
    raw_bytes: int = 0
    stored_bytes: int = 0
    refs: int = 0
    refs_by_namespace: dict[str, int] = field(default_factory=dict)
    map_size: int = 0
    used_bytes: int = 0
    manifest: EntryStats | None = None
    gc: GcPreview | None = None

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            k: v for k, v in self.__dict__.items() if k not in ("by_type", "manifest", "gc")
        }
        if self.gc is not None:
            out["gc"] = vars(self.gc)
        out["by_type"] = {k: v.to_dict() for k, v in self.by_type.items()}
        m = self.manifest
        if m is not None:
            out["manifest"] = m.manifest.hex
            out["commit"] = m.commit.hex if m.commit else None
            out["entries"] = m.entries
            out["entry_bytes"] = m.entry_bytes
            out["by_kind"] = {k: vars(b) for k, b in m.by_kind.items()}
            out["by_env"] = {k: vars(b) for k, b in m.by_env.items()}
        return out


def stats(store: Store, target: str | ObjectId | None = None, *, gc_preview: bool = False) -> Stats:
    """Count the objects of ``store`` by type; with ``target``, also a manifest's entries.

    ``target`` is a ref name, or the id of a commit, a tag or a manifest root;
    ``gc_preview`` adds the gc budget and what the next gc would free.
    """
    out = Stats()
    for rec in store.objects.iter_records():
        t = out.by_type.setdefault(rec.type.label, TypeStats())
        t.count += 1
        t.raw_bytes += rec.raw_size
        t.stored_bytes += rec.stored_size
        out.objects += 1
        out.stored_bytes += rec.stored_size
        if not rec.chunked:  # a chunked blob's bytes are its chunks' bytes
            out.raw_bytes += rec.raw_size
    refs = store.refs.as_dict("")
    out.refs = len(refs)
    out.refs_by_namespace = dict(Counter(_namespace(name) for name in refs))
    info = store.info()
    out.map_size, out.used_bytes = info["map_size"], info["used_bytes"]
    if target is not None:
        out.manifest = entry_stats(store, target)
    if gc_preview:
        out.gc = preview_gc(store, out.stored_bytes)
    return out


def preview_gc(store: Store, size: int) -> GcPreview:
    """What the next ``cas gc`` would free, under the store's saved budget if any."""
    budget = budgets.load(store)
    out = GcPreview(size=size)
    grace = DEFAULT_GRACE_SECONDS
    if budget is not None:
        out.max_size, out.keep_commits = budget.max_size, budget.keep_commits
        grace = grace if budget.grace_seconds is None else budget.grace_seconds
    try:
        report = gc(store, grace_seconds=grace, budget=budget, dry_run=True)
    except BudgetTooSmall as exc:
        out.pinned_bytes, out.problem = exc.pinned, str(exc)
        report = gc(store, grace_seconds=grace, dry_run=True)
    out.frees_bytes, out.frees_objects = report.stored_bytes_freed, report.objects_freed
    out.evicts = report.evicted
    return out


def _namespace(name: str) -> str:
    parts = name.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else name


def entry_stats(store: Store, target: str | ObjectId) -> EntryStats:
    """Entries of a manifest, by kind and env; ``target`` as for :func:`stats`."""
    if isinstance(target, str):
        oid = store.refs.get(target)
        if oid is None:
            raise RefNotFound(f"no ref named {target}", ref=target)
    else:
        oid = target
    commit_id: ObjectId | None = None
    for _ in range(16):  # tags of tags, bounded
        otype, data = store.objects.require(oid)
        if otype == ObjType.TAG:
            oid = Tag.decode(data).target
        elif otype == ObjType.COMMIT:
            commit_id, oid = oid, Commit.decode(data).manifest
        elif otype == ObjType.NODE:
            break
        else:
            raise CasError(f"{oid.short()} is a {otype.label}, not a commit, tag or manifest")
    out = EntryStats(oid, commit_id)
    # Imported here: counting objects must work even where the manifest cannot load.
    from cas import manifest

    for key, entry in manifest.entries(store, oid):
        out.entries += 1
        out.entry_bytes += entry.size
        for bucket in (
            out.by_kind.setdefault(key.kind, Bucket()),
            out.by_env.setdefault(key.env.hex, Bucket()),
        ):
            bucket.count += 1
            bucket.bytes += entry.size
    return out


__all__ = ["Bucket", "EntryStats", "GcPreview", "preview_gc", "Stats", "TypeStats", "entry_stats", "human_size", "stats"]
