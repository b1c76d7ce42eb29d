"""gc: delete what nothing needs, keep what someone may be about to need.

Mark and sweep, with git's safety rules (docs/robustness.md, "Garbage collection"):

* roots are every ref, the old and new values of reflog entries younger than the grace
  period, every object written (or re-written) within the grace period, and every staged
  object younger than the grace period. Keeping what a *young* object references, not
  only what refs reach, keeps closure true for every stored object: a commit a crashed
  writer left behind never loses its manifest while it is itself kept;
* write times come from the store's ``otime`` index (id -> last write), stamped by every
  put, re-put included, in the same transaction as the object;
* the sweep is one write transaction that re-reads each candidate's write time, so an
  object re-put by a concurrent writer after the mark survives;
* reflog entries older than ``reflog_expiry_seconds`` are dropped, and staged objects
  older than the grace period are cleared, before marking.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cas.codec import STRUCTURED, ObjType
from cas.digest import ObjectId
from cas.errors import CasError
from cas.objects import references
from cas.store import Store

DEFAULT_GRACE_SECONDS = 14 * 86400
DEFAULT_REFLOG_EXPIRY_SECONDS = 90 * 86400


@dataclass
class GcReport:
    """What gc found and freed (or, with ``dry_run``, would free)."""

    dry_run: bool = False
    objects: int = 0
    reachable: int = 0
    kept_recent: int = 0
    objects_freed: int = 0
    raw_bytes_freed: int = 0
    stored_bytes_freed: int = 0
    freed_by_type: dict[str, int] = field(default_factory=dict)
    reflog_expired: int = 0
    stage_cleared: int = 0

    @property
    def objects_kept(self) -> int:
        return self.objects - self.objects_freed

    def to_dict(self) -> dict[str, object]:
        """Fields, plus ``objects_kept`` and ``bytes_freed`` (disk bytes, i.e. stored)."""
        out: dict[str, object] = dict(self.__dict__)
        out.update(objects_kept=self.objects_kept, bytes_freed=self.stored_bytes_freed)
        return out


def gc(
    store: Store,
    *,
    grace_seconds: int = DEFAULT_GRACE_SECONDS,
    reflog_expiry_seconds: int = DEFAULT_REFLOG_EXPIRY_SECONDS,
    now: float | None = None,
    dry_run: bool = False,
) -> GcReport:
    """Collect garbage in ``store``; see the module docstring for what is kept."""
    if grace_seconds < 0 or reflog_expiry_seconds < 0:
        raise CasError("gc periods must not be negative")
    now = store.clock() if now is None else now
    # Float, not whole seconds: write times are whole seconds rounded down, so with a
    # grace of 0 an object written earlier in this very second is already old.
    cutoff = now - grace_seconds
    report = GcReport(dry_run=dry_run)
    if not dry_run:
        report.reflog_expired = store.expire_reflog(now - reflog_expiry_seconds)
        report.stage_cleared = store.stage_expire(cutoff)

    times = store.object_times()
    all_ids = list(store.iter_ids())
    report.objects = len(all_ids)
    roots = _roots(store, cutoff, times)
    # An object of unknown age (written by a cas without write times) counts as young,
    # and gets stamped now so that it can age out.
    unknown = [o for o in all_ids if o not in times]
    if unknown and not dry_run:
        store.stamp_missing(unknown)
    young = [o for o in all_ids if o not in times or times[o] >= cutoff]
    from_refs = mark(store, roots)
    marked = mark(store, young, known=from_refs)
    report.reachable = len(from_refs)
    report.kept_recent = len(marked) - len(from_refs)

    candidates = [o for o in all_ids if o not in marked]
    freed = store.sweep(candidates, before=cutoff, dry_run=dry_run)
    counts: Counter[str] = Counter()
    for rec in freed:
        report.objects_freed += 1
        if not rec.chunked:  # a chunked blob's bytes are its chunks' bytes
            report.raw_bytes_freed += rec.raw_size
        report.stored_bytes_freed += rec.stored_size
        counts[rec.type.label] += 1
    report.freed_by_type = dict(counts)
    if not dry_run:
        store.prune_times()
        store.set_meta("last_gc", str(int(now)))
    return report


def _roots(store: Store, cutoff: float, times: dict[ObjectId, int]) -> list[ObjectId]:
    roots = list(store.list_refs("").values())
    for entry in store.reflog():
        if entry.time >= cutoff:
            roots.extend(o for o in (entry.old, entry.new) if o is not None)
    for rec, when in store.iter_stage():
        # A staged object waits for its references to arrive; keep those already here.
        if (when is None or when >= cutoff) and rec.type in STRUCTURED:
            staged = store.stage_get(rec.oid)
            if staged is not None:
                roots.extend(_safe_refs(staged[0], staged[1]))
    return roots


def mark(
    store: Store, roots: list[ObjectId], *, known: set[ObjectId] | None = None
) -> set[ObjectId]:
    """Every present object reachable from ``roots`` (plus ``known``, already marked).

    Follows structured references and the chunks of chunked blobs. Missing or corrupt
    objects are skipped (fsck reports them): gc never deletes *more* because of damage.
    """
    marked: set[ObjectId] = set(known or ())
    stack = [o for o in roots if o not in marked]
    while stack:
        oid = stack.pop()
        if oid in marked:
            continue
        try:
            rec = store.record(oid)
            if rec is None:
                continue
            marked.add(oid)
            if rec.chunked:
                stack.extend(store.chunk_ids(oid))
            elif rec.type in STRUCTURED:
                got = store.get_typed(oid)
                if got is not None:
                    stack.extend(o for o in _safe_refs(rec.type, got[1]) if o not in marked)
        except CasError:
            marked.add(oid)  # damaged but named: keep it for fsck and the user to see
    return marked


def _safe_refs(otype: ObjType, data: bytes) -> list[ObjectId]:
    try:
        return references(otype, data)
    except CasError:
        return []


__all__ = [
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_REFLOG_EXPIRY_SECONDS",
    "GcReport",
    "gc",
    "mark",
]
