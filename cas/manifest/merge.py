"""Three-way merge of manifests, with per-kind rules for the keys both sides changed.

The manifest knows no kinds: its only rule is the fallback, keep ours. A module that
defines a kind with a better rule declares it (e.g. ``cas.tuning.MERGE_RULES``), and
the caller that merges branches passes the table (``cas.sync.merge.RULES``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cas.digest import ObjectId
from cas.manifest.api import diff, update
from cas.manifest.tree import Stats
from cas.objects import Entry, EntryKey
from cas.store import Store


class _Deleted:
    def __repr__(self) -> str:
        return "DELETED"


#: What a resolver returns to resolve a conflict by removing the key.
DELETED = _Deleted()

Resolution = Entry | _Deleted | None
Resolver = Callable[[EntryKey, Entry | None, Entry | None], Resolution]


@dataclass(frozen=True)
class Rule:
    """A named resolver: ``fn(key, ours, theirs)`` -> Entry (keep it), DELETED, or None.

    ``ours``/``theirs`` are None where that side removed the key. None means "cannot
    decide": the conflict is reported unresolved.
    """

    name: str
    fn: Resolver

    def __call__(self, key: EntryKey, ours: Entry | None, theirs: Entry | None) -> Resolution:
        return self.fn(key, ours, theirs)


def _keep_ours(key: EntryKey, ours: Entry | None, theirs: Entry | None) -> Resolution:
    return DELETED if ours is None else ours


#: Keep our side: the fallback, and the rule for every kind that declares none.
OURS = Rule("ours", _keep_ours)

#: kind -> rule; "*" is the fallback for kinds not listed. The manifest names no kind:
#: callers merge with a table that adds the rules kinds declare (cas.sync.merge.RULES).
DEFAULT_RULES: Mapping[str, Resolver] = MappingProxyType({"*": OURS})


@dataclass
class MergeResult:
    """A three-way merge: the merged root, what is left unresolved, what rules decided.

    For an unresolved conflict ``root`` keeps our side; the caller decides whether to
    commit it (e.g. raise MergeConflict). ``resolved`` lists (key, chosen, rule name),
    ``chosen`` None where the rule removed the key.
    """

    root: ObjectId
    conflicts: list[tuple[EntryKey, Entry | None, Entry | None]] = field(default_factory=list)
    resolved: list[tuple[EntryKey, Entry | None, str]] = field(default_factory=list)
    #: Keys whose entry on their side was refused (``refuse``): ours kept.
    refused: list[EntryKey] = field(default_factory=list)


def _rule_name(resolver: Resolver) -> str:
    return str(getattr(resolver, "name", None) or getattr(resolver, "__name__", "rule"))


def merge(
    store: Store,
    base: ObjectId,
    ours: ObjectId,
    theirs: ObjectId,
    rules: Mapping[str, Resolver] = DEFAULT_RULES,
    *,
    stats: Stats | None = None,
    refuse: Callable[[Entry], bool] | None = None,
) -> MergeResult:
    """Three-way merge: the union of both sides' changes since ``base``.

    A conflict is a key both sides changed differently; it goes to ``rules[kind]`` (or
    ``rules["*"]``); without a rule, or when the rule returns None, it stays unresolved.
    An entry of theirs that ``refuse`` rejects (a revoked blob) is never taken, whatever
    the rule; an entry of ours it rejects gives way to theirs (rule ``refused``).
    Costs two diffs and one update: O(k log n) for k changed keys.
    """
    if ours == theirs or theirs == base:
        return MergeResult(ours)
    if ours == base and refuse is None:
        return MergeResult(theirs)
    mine = {c.key: c.new for c in diff(store, base, ours, stats=stats)}
    result = MergeResult(ours)
    apply: dict[EntryKey, Entry | None] = {}
    for key, _, new in diff(store, base, theirs, stats=stats):
        if refuse is not None and new is not None and refuse(new):
            result.refused.append(key)
            continue
        mine_entry = mine.get(key)
        if refuse is not None and mine_entry is not None and refuse(mine_entry):
            result.resolved.append((key, new, "refused"))
            apply[key] = new
            continue
        if key not in mine:
            apply[key] = new
            continue
        if mine[key] == new:
            continue
        resolver = rules.get(key.kind) or rules.get("*")
        chosen = resolver(key, mine[key], new) if resolver is not None else None
        if chosen is None:
            result.conflicts.append((key, mine[key], new))
            continue
        value = None if isinstance(chosen, _Deleted) else chosen
        result.resolved.append((key, value, _rule_name(resolver)))  # type: ignore[arg-type]
        if value != mine[key]:
            apply[key] = value
    result.root = update(store, ours, apply, stats=stats)
    return result
