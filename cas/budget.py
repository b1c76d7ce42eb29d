"""A size-bounded store: which blobs a gc with a byte budget evicts, and its settings.

The model (docs/robustness.md, "A size-bounded store"): history is never cut. Commits,
manifest nodes, tags and envs (the structure) stay as long as a ref reaches them, as in
a plain gc; only **blobs** (the entries' bytes, nearly all of a store) are evicted, and
only those that no *kept* snapshot names:

* kept snapshots: the commit (or tag) every ref other than a branch names, i.e. every
  tag, and the last ``keep_commits`` commits of each branch (``refs/heads/*`` and
  ``refs/remotes/*``), newest first by commit time;
* kept too: everything younger than the grace period, and what a young object names;
* the rest of the blobs that survive the plain sweep are evicted least recently read
  first (by the read times of cas.store.reads; never read sorts before any read), then
  oldest written first, until the stored bytes fit the budget.

An evicted blob leaves a mark (the ``evicted`` database) so that fsck knows its absence
is by design: the manifests of older commits still name it, ``cas log`` still shows
those commits, and a lookup of the entry is a miss (torch compiles it again).

Rejected: cutting a branch's history beyond N commits (a shallow store, git's model):
it evicts all of an old commit at once, however hot its entries still are, and loses
the history that provenance and audit read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from cas import history
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import BudgetTooSmall, CasError, UsageError
from cas.store import Store
from cas.store.records import Record

#: Commits of each branch whose entries a budget gc keeps, newest first.
DEFAULT_KEEP_COMMITS = 10
#: Store meta key holding the saved budget (JSON of :class:`Budget`).
META_KEY = "gc.budget"
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_BRANCHES = ("refs/heads/", "refs/remotes/")


@dataclass(frozen=True)
class Budget:
    """A byte budget for the stored bytes of a store, and what it always keeps."""

    max_size: int
    keep_commits: int = DEFAULT_KEEP_COMMITS
    #: None: gc's default grace period.
    grace_seconds: int | None = None

    def __post_init__(self) -> None:
        if self.max_size <= 0:
            raise UsageError(f"gc budget must be a positive size, not {self.max_size}")
        if self.keep_commits < 1:
            raise UsageError(f"gc must keep at least 1 commit per branch, not {self.keep_commits}")


def parse_size(text: str) -> int:
    """``20G``, ``512M``, ``1.5GiB``, ``4096`` -> bytes (binary units)."""
    m = _SIZE.match(text)
    if m is None:
        raise UsageError(f"bad size {text!r}", hint="e.g. 20G, 512M, 4096")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def load(store: Store) -> Budget | None:
    """The budget saved in the store (``cas gc --max-size N --save``), or None."""
    raw = store.meta.get(META_KEY)
    if raw is None:
        return None
    try:
        return Budget(**json.loads(raw))
    except (ValueError, TypeError, CasError):
        return None  # a damaged setting must not stop the server: no budget


def save(store: Store, budget: Budget | None) -> None:
    """Record ``budget`` as the store's ``gc.budget`` setting (None clears it)."""
    store.meta.set(META_KEY, None if budget is None else json.dumps(asdict(budget)))


@dataclass
class Plan:
    """What a budget gc will evict, decided before anything is deleted."""

    budget: Budget
    #: Stored bytes of what the plain sweep leaves.
    size: int = 0
    #: Stored bytes that must stay (kept snapshots, young objects, structure).
    pinned: int = 0
    #: (blob, its chunks to delete with it), in eviction order, enough to fit.
    units: list[tuple[ObjectId, list[ObjectId]]] = field(default_factory=list)
    evict_bytes: int = 0

    @property
    def size_after(self) -> int:
        return self.size - self.evict_bytes


def kept_roots(store: Store, keep_commits: int) -> list[ObjectId]:
    """The snapshots a budget gc keeps whole: every non-branch ref's target, and the last
    ``keep_commits`` commits of each branch."""
    roots: list[ObjectId] = []
    for name, target in store.refs.as_dict("").items():
        if not name.startswith(_BRANCHES):
            roots.append(target)
            continue
        try:
            roots.extend(oid for oid, _ in history.log(store, target, limit=keep_commits))
        except CasError:
            roots.append(target)  # a damaged history: keep what the ref names, fsck reports it
    return roots


def plan(
    store: Store,
    budget: Budget,
    records: dict[ObjectId, Record],
    kept: set[ObjectId],
    times: dict[ObjectId, int],
    cutoff: float,
) -> Plan:
    """Decide the evictions that bring ``records`` (what a plain gc keeps: the records
    its mark read) under budget.

    ``kept`` is what kept snapshots and young objects reach (never evicted). Raises
    :class:`BudgetTooSmall` when even evicting every candidate would not fit.
    """
    out = Plan(budget, size=sum(r.stored_size for r in records.values()))
    candidates = [
        r for oid, r in records.items()
        if r.type is ObjType.BLOB and oid not in kept and times.get(oid, cutoff) < cutoff
    ]
    units = _units(store, candidates, kept, records)
    out.pinned = out.size - sum(size for _, _, size in units.values())
    if out.pinned > budget.max_size:
        raise BudgetTooSmall(
            f"budget of {budget.max_size} bytes is smaller than the {out.pinned} bytes gc must keep",
            hint=f"raise --max-size, or keep fewer commits per branch (--keep-commits, now {budget.keep_commits})",
            max_size=budget.max_size, pinned=out.pinned,
        )
    reads = store.maintenance.read_times()
    order = sorted(units, key=lambda o: (reads.get(o, -1), times.get(o, 0), o.raw))
    for oid in order:
        if out.size_after <= budget.max_size:
            break
        blob, chunks, size = units[oid]
        out.units.append((blob, chunks))
        out.evict_bytes += size
    return out


def _units(
    store: Store, blobs: Iterable[Record], kept: set[ObjectId], records: dict[ObjectId, Record]
) -> dict[ObjectId, tuple[ObjectId, list[ObjectId], int]]:
    """Each candidate blob with the chunks that go with it and the bytes that frees.

    A chunk shared by two candidates is left in place (so that no surviving blob loses a
    chunk); once no blob names it, a later gc collects it as unreachable.
    """
    out: dict[ObjectId, tuple[ObjectId, list[ObjectId], int]] = {}
    chunked: list[Record] = []
    for rec in blobs:
        if rec.chunked:
            chunked.append(rec)
        else:
            out[rec.oid] = (rec.oid, [], rec.stored_size)
    lists = {rec.oid: [c for c in store.objects.chunk_ids(rec.oid) if c not in kept] for rec in chunked}
    shared = _shared_chunks(lists.values())
    for rec in chunked:
        own = [c for c in lists[rec.oid] if c not in shared]
        out[rec.oid] = (rec.oid, own, rec.stored_size + sum(records[c].stored_size for c in own if c in records))
    return out


def _shared_chunks(lists: Iterable[list[ObjectId]]) -> set[ObjectId]:
    seen: set[ObjectId] = set()
    shared: set[ObjectId] = set()
    for chunks in lists:
        shared.update(c for c in chunks if c in seen)
        seen.update(chunks)
    return shared


__all__ = [
    "DEFAULT_KEEP_COMMITS",
    "Budget",
    "Plan",
    "kept_roots",
    "load",
    "parse_size",
    "plan",
    "save",
]
