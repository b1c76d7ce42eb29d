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
  older than the grace period are cleared, after marking (the roots only take reflog
  entries and staged objects younger than the grace period anyway), so that a budget
  too small (below) deletes nothing at all;
* with a :class:`cas.budget.Budget`, blobs that no kept snapshot names are then evicted
  least recently read first until the store fits (cas.budget has the model), in write
  transactions of EVICT_BATCH blobs, each of which re-reads write times like the sweep.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cas import budget as budgets
from cas.codec import STRUCTURED, ObjType
from cas.digest import ObjectId
from cas.errors import CasError
from cas.objects import references
from cas.store import Store
from cas.store.records import Record

DEFAULT_GRACE_SECONDS = 14 * 86400
DEFAULT_REFLOG_EXPIRY_SECONDS = 90 * 86400
#: Blobs evicted per write transaction.
EVICT_BATCH = 8192


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
    #: With a budget: the budget, the stored bytes before eviction and after, what had
    #: to stay, and the blobs evicted (least recently read first).
    max_size: int | None = None
    keep_commits: int | None = None
    size_before: int | None = None
    size_after: int | None = None
    pinned_bytes: int | None = None
    evicted: int = 0
    evicted_bytes: int = 0

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
    budget: budgets.Budget | None = None,
) -> GcReport:
    """Collect garbage in ``store``; see the module docstring for what is kept.

    With ``budget``, a budget smaller than what must be kept raises
    :class:`cas.errors.BudgetTooSmall` before anything is deleted.
    """
    if grace_seconds < 0 or reflog_expiry_seconds < 0:
        raise CasError("gc periods must not be negative")
    now = store.clock() if now is None else now
    # Float, not whole seconds: write times are whole seconds rounded down, so with a
    # grace of 0 an object written earlier in this very second is already old.
    cutoff = now - grace_seconds
    report = GcReport(dry_run=dry_run)
    times = store.maintenance.object_times()
    all_ids = list(store.objects.iter_ids())
    report.objects = len(all_ids)
    roots = _roots(store, cutoff, times)
    young = [o for o in all_ids if o not in times or times[o] >= cutoff]
    absent: set[ObjectId] = set()
    recs: dict[ObjectId, Record] | None = {} if budget is not None else None
    from_refs = mark(store, roots, absent=absent, records=recs)
    marked = mark(store, young, known=from_refs, absent=absent, records=recs)
    report.reachable = len(from_refs)
    report.kept_recent = len(marked) - len(from_refs)
    plan = None
    if budget is not None:
        kept = mark(store, [*budgets.kept_roots(store, budget.keep_commits), *young], parents=False)
        assert recs is not None
        plan = budgets.plan(store, budget, recs, kept, times, cutoff)

    if not dry_run:
        report.reflog_expired = store.refs.expire_log(now - reflog_expiry_seconds)
        report.stage_cleared = store.stage.expire(cutoff)
        # An object of unknown age (written by a cas without write times) counts as
        # young, and gets stamped now so that it can age out.
        store.maintenance.stamp_missing(o for o in all_ids if o not in times)
    candidates = [o for o in all_ids if o not in marked]
    _count(report, store.maintenance.sweep(candidates, before=cutoff, dry_run=dry_run))
    if plan is not None:
        _evict(store, report, plan, cutoff, dry_run)
    if not dry_run:
        # Eviction marks stay for blobs a kept object names: absent ones named before, and
        # those evicted just now (they were marked when present).
        store.maintenance.forget_evicted(lambda oid: oid in absent or oid in marked)
        store.maintenance.prune_times()
        store.meta.set("last_gc", str(int(now)))
    return report


def _count(report: GcReport, freed: list[Record]) -> None:
    counts: Counter[str] = Counter(report.freed_by_type)
    for rec in freed:
        report.objects_freed += 1
        if not rec.chunked:  # a chunked blob's bytes are its chunks' bytes
            report.raw_bytes_freed += rec.raw_size
        report.stored_bytes_freed += rec.stored_size
        counts[rec.type.label] += 1
    report.freed_by_type = dict(counts)


def _evict(store: Store, report: GcReport, plan: budgets.Plan, cutoff: float, dry_run: bool) -> None:
    report.max_size, report.keep_commits = plan.budget.max_size, plan.budget.keep_commits
    report.size_before, report.pinned_bytes = plan.size, plan.pinned
    if dry_run:
        report.evicted, report.evicted_bytes = len(plan.units), plan.evict_bytes
        report.objects_freed += sum(1 + len(chunks) for _, chunks in plan.units)
        report.stored_bytes_freed += plan.evict_bytes
    else:
        # Batches: the writer lock is held for one batch at a time (a Redis door commit
        # waits for one, not for all), and pages freed by one batch serve the next.
        gone = []
        for i in range(0, len(plan.units), EVICT_BATCH):
            gone.extend(store.maintenance.evict(plan.units[i : i + EVICT_BATCH], before=cutoff))
        report.evicted = sum(1 for r in gone if r.type is ObjType.BLOB)
        report.evicted_bytes = sum(r.stored_size for r in gone)
        _count(report, gone)
    report.size_after = plan.size - report.evicted_bytes


def _roots(store: Store, cutoff: float, times: dict[ObjectId, int]) -> list[ObjectId]:
    roots = list(store.refs.as_dict("").values())
    for entry in store.refs.log():
        if entry.time >= cutoff:
            roots.extend(o for o in (entry.old, entry.new) if o is not None)
    for rec, when in store.stage.entries():
        # A staged object waits for its references to arrive; keep those already here.
        if (when is None or when >= cutoff) and rec.type in STRUCTURED:
            staged = store.stage.get(rec.oid)
            if staged is not None:
                roots.extend(_safe_refs(staged[0], staged[1]))
    return roots


def mark(
    store: Store,
    roots: list[ObjectId],
    *,
    known: set[ObjectId] | None = None,
    parents: bool = True,
    absent: set[ObjectId] | None = None,
    records: dict[ObjectId, Record] | None = None,
) -> set[ObjectId]:
    """Every present object reachable from ``roots`` (plus ``known``, already marked).

    Follows structured references and the chunks of chunked blobs; with ``parents``
    false, a commit's manifest but not its parents (the snapshots named, not their
    history). Missing or corrupt objects are skipped (fsck reports them): gc never
    deletes *more* because of damage; ``absent`` collects the missing ones, ``records``
    the records of those marked (read anyway, kept for a budget's plan).
    """
    marked: set[ObjectId] = set(known or ())
    stack = [o for o in roots if o not in marked]
    while stack:
        oid = stack.pop()
        if oid in marked:
            continue
        try:
            rec = store.objects.record(oid)
            if rec is None:
                if absent is not None:
                    absent.add(oid)
                continue
            marked.add(oid)
            if records is not None:
                records[oid] = rec
            if rec.chunked:
                stack.extend(store.objects.chunk_ids(oid))
            elif rec.type in STRUCTURED:
                got = store.objects.get_typed(oid)
                if got is not None:
                    refs = _safe_refs(rec.type, got[1])
                    if not parents and rec.type is ObjType.COMMIT:
                        refs = refs[:1]  # the manifest (references() puts it first)
                    stack.extend(o for o in refs if o not in marked)
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
