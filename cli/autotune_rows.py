"""Autotune records as ``cas autotune log|show|diff`` lists them: rows and deltas.

What the CLI shows of the records in a store (cas.tuning): the records measured by
autotune commits (log), every record of a commit with the commit that measured it
(show), and how two commits' records differ (diff). Display only; the records, their
merge rule and their readers live in cas.tuning.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cas import history, manifest
from cas.digest import ObjectId
from cas.objects import Commit, Entry, EntryKey
from cas.refs import load_commit
from cas.store import Store
from cas.tuning import KIND, entry_time

__all__ = ["Delta", "Row", "diff_records", "diff_rows", "log_rows", "rows_of", "show_rows"]


@dataclass(frozen=True)
class Row:
    """A record as listed: its entry key and entry, plus the record when it was read."""

    key: EntryKey
    entry: Entry
    commit: ObjectId | None = None

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.entry.meta

    def time(self) -> float | None:
        """The measured time, or None when there is none or it is impossible."""
        return entry_time(self.entry)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key.key,
            "device_class": self.key.variant,
            "env": str(self.key.env),
            "commit": str(self.commit) if self.commit else None,
            **{k: v for k, v in self.entry.meta.items()},
            # an impossible time is shown as none, as the merge rule counts it
            **({"time_ms": self.time()} if "time_ms" in self.entry.meta else {}),
        }


def rows_of(pairs: Iterable[tuple[EntryKey, Entry]]) -> list[Row]:
    """The autotune-record entries among ``pairs``, ordered by op, shapes, device class."""
    return sorted((Row(k, e) for k, e in pairs if k.kind == KIND), key=_order)


@dataclass(frozen=True)
class Delta:
    """One record compared between two manifests: ``ratio`` is old time / new time."""

    key: EntryKey
    old: Entry | None
    new: Entry | None

    def ratio(self) -> float | None:
        a = Row(self.key, self.old).time() if self.old else None
        b = Row(self.key, self.new).time() if self.new else None
        return a / b if a and b else None

    def verdict(self) -> str:
        if self.old is None:
            return "added"
        if self.new is None:
            return "removed"
        r = self.ratio()
        if r is None:
            return "changed"
        return "speedup" if r > 1 else "regression" if r < 1 else "same"

    def to_dict(self) -> dict[str, Any]:
        side = self.new or self.old
        assert side is not None
        return {
            "key": self.key.key, "device_class": self.key.variant, "verdict": self.verdict(),
            "op": side.meta.get("op"), "shapes": side.meta.get("shapes"),
            "old_choice": self.old.meta.get("choice") if self.old else None,
            "new_choice": self.new.meta.get("choice") if self.new else None,
            "old_ms": entry_time(self.old),
            "new_ms": entry_time(self.new),
            "ratio": self.ratio(),
        }


def diff_records(changes: Iterable[tuple[EntryKey, Entry | None, Entry | None]]) -> list[Delta]:
    """The autotune-record changes among manifest changes (``manifest.diff`` output)."""
    return [Delta(k, a, b) for k, a, b in changes if k.kind == KIND]


def _changed_records(store: Store, oid: ObjectId, commit: Commit) -> Iterator[Row]:
    parent = load_commit(store, commit.parents[0]).manifest if commit.parents else manifest.EMPTY
    for key, _old, new in manifest.diff(store, parent, commit.manifest):
        if key.kind == KIND and new is not None:
            yield Row(key, new, oid)


def log_rows(store: Store, start: ObjectId, limit: int | None = None) -> list[Row]:
    """Records measured by the autotune commits reachable from ``start``, newest first.

    Only commits made by recording (``metadata.producer == "autotune"``) count: a merge
    that took a record from the other side did not measure it. ``limit`` counts commits.
    """
    rows: list[Row] = []
    seen = 0
    for oid, commit in history.log(store, start):
        if commit.metadata.get("producer") != "autotune":
            continue
        rows.extend(sorted(_changed_records(store, oid, commit), key=_order))
        seen += 1
        if limit is not None and seen >= limit:
            break
    return rows


def show_rows(store: Store, start: ObjectId) -> list[Row]:
    """Every record in the manifest of commit ``start``, with the commit that measured it
    (None when no autotune commit in its history holds that very record)."""
    current = rows_of(manifest.entries(store, load_commit(store, start).manifest))
    want = {r.entry.blob for r in current}
    found: dict[ObjectId, ObjectId] = {}
    for oid, commit in history.log(store, start):
        if len(found) == len(want):
            break
        if commit.metadata.get("producer") == "autotune":
            for row in _changed_records(store, oid, commit):
                if row.entry.blob in want:
                    found.setdefault(row.entry.blob, oid)
    return [Row(r.key, r.entry, found.get(r.entry.blob)) for r in current]


def diff_rows(store: Store, a: ObjectId, b: ObjectId) -> list[Delta]:
    """How the records of commit ``b`` differ from those of commit ``a``."""
    ra, rb = load_commit(store, a).manifest, load_commit(store, b).manifest
    deltas = diff_records(manifest.diff(store, ra, rb))
    deltas.sort(key=lambda d: _order(Row(d.key, d.new or d.old)))  # type: ignore[arg-type]
    return deltas


def _order(row: Row) -> tuple[str, str, str, str]:
    return (str(row.meta.get("op", "")), str(row.meta.get("shapes", "")), row.key.variant, row.key.key)
