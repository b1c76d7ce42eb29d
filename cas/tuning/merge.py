"""How two measurements of one tuned thing merge: the faster one wins.

:data:`MERGE_RULES` is what cas.sync.merge adds to the manifest's fallback rules; only
autotune records (one per tuned kernel and device class) carry a measured time, and a
time that is impossible (cas.timings) counts as none, so it never wins. The raw files
torch keeps (``autotune``/``autotune_remote``/``gemm_timing``) keep ours, and hydrate
writes the records' choices over them. :func:`merge_lines` says in the merge commit's
message what each decision kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from cas import manifest, timings
from cas.objects import Entry, EntryKey
from cas.tuning.record import KIND, short_choice

__all__ = ["FASTER", "MERGE_RULES", "TIMING_KEYS", "entry_time", "merge_lines"]


#: Metadata keys holding a measured time in milliseconds, in order of preference.
TIMING_KEYS = timings.TIMING_KEYS


def entry_time(entry: Entry | None) -> float | None:
    """The time an entry's metadata says was measured, or None when there is none or it
    is impossible (cas.timings: -1, 0, 1e-300; a store may hold one written by other
    means): it counts as no time at all, so it never wins a merge."""
    if entry is None:
        return None
    for name in TIMING_KEYS:
        value = entry.meta.get(name)
        if timings.problem(value) is None:
            return float(value)  # type: ignore[arg-type]
    return None


def _measured_at(entry: Entry) -> float:
    value = entry.meta.get("measured_at")
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok else float("inf")  # type: ignore[arg-type]


def _faster(key: EntryKey, ours: Entry | None, theirs: Entry | None) -> manifest.Resolution:
    # The side with the lower measured time wins; a side with a time beats one without
    # (a removal has none); equal times go to the earlier measurement (``measured_at``),
    # and otherwise to ours, so the rule is total and both merge orders agree.
    mine, other = entry_time(ours), entry_time(theirs)
    if other is not None and (mine is None or other < mine):
        return theirs
    if other is not None and other == mine and theirs is not None and ours is not None:
        if _measured_at(theirs) < _measured_at(ours):
            return theirs
    return manifest.OURS(key, ours, theirs)


FASTER = manifest.Rule("faster", _faster)

#: The merge rule of the record kind (cas.sync.merge.RULES adds it to the manifest's
#: fallback). Only autotune records (one per tuned kernel and device class)
#: carry a measured time; the raw files torch keeps (``autotune``/``autotune_remote``/
#: ``gemm_timing``) keep ours, and hydrate writes the records' choices over them.
MERGE_RULES: Mapping[str, manifest.Resolver] = MappingProxyType({KIND: FASTER})


def merge_lines(
    resolved: Iterable[tuple[EntryKey, Entry | None, str]],
    ours: Mapping[EntryKey, Entry | None],
    theirs: Mapping[EntryKey, Entry | None],
) -> list[str]:
    """One line per autotune record a merge rule decided, for the merge commit message:
    which side's measurement was kept, both times, and the choice.

    ``resolved`` is ``MergeResult.resolved``; ``ours``/``theirs`` map those keys to each side.
    """
    out = []
    for key, chosen, _rule in resolved:
        if key.kind != KIND or chosen is None:
            continue
        mine, other = ours.get(key), theirs.get(key)
        took, lost = ("theirs", mine) if chosen != mine else ("ours", other)
        won_ms, lost_ms = entry_time(chosen), entry_time(lost)
        other_side = "ours" if took == "theirs" else "theirs"
        vs = f" vs {other_side} {lost_ms:.4g} ms" if lost_ms is not None else ""
        won = f"{won_ms:.4g} ms" if won_ms is not None else "untimed"
        out.append(f"{chosen.meta.get('op')} [{chosen.meta.get('shapes')}] on {key.variant}: kept {took}, "
                   f"{won}{vs} ({short_choice(chosen.meta.get('choice'))})")
    return out
