"""Audit of one entry: every commit that added, changed, removed or revoked it.

``cas blame KEY`` (and ``cas log --entry KEY``) walk the history of the given refs
(default: every local branch and tag) once, newest first, and diff each commit's
manifest against its first parent's (a root commit against the empty manifest): a
diff reads O(k log n) nodes for k changed entries, so the walk costs in proportion to
what the history changed, not to the size of its manifests. A merge is compared with
its first parent, so what it brought in shows as the merge's own change. Revocations of
the entry's blobs (:mod:`cas.revocations`) are listed with them, honoured or not.

A row carries what the commit says about who made it: producer, machine (``host``),
Redis-door token, and the timings the entry and commit record.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from cas import manifest, revocations
from cas.digest import ObjectId
from cas.errors import NotFound
from cas.history import log
from cas.objects import Commit, Entry, EntryKey
from cas.refs import load_commit
from cas.store import Store

__all__ = ["Event", "blame", "walk"]

_TIMINGS = ("time_taken_ms", "compile_ms", "tuning_ms", "compile_time_ms")


@dataclass
class Event:
    """One commit's change to the entry (``action``: added, changed, removed, revoked)."""

    commit: ObjectId
    action: str
    entry: str
    blob: ObjectId | None
    author: str
    time: int
    message: str
    producer: str = ""
    machine: str = ""
    token: str = ""
    timings: dict[str, int] = field(default_factory=dict)
    #: For a revocation: why it is not honoured here (None: honoured).
    ignored: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("commit", "blob")}
        return out | {"commit": self.commit.hex, "blob": self.blob.hex if self.blob else None}

    def line(self) -> str:
        who = ", ".join(p for p in (self.producer, self.machine, f"token {self.token}" if self.token else "") if p)
        times = " ".join(f"{k}={v}" for k, v in sorted(self.timings.items()))
        blob = f" {self.blob.short()}" if self.blob else ""
        note = f" (ignored: {self.ignored})" if self.ignored else ""
        return (f"{self.commit.short()} {self.action:<8} {self.entry}{blob}  {self.author} [{who}]"
                + (f" {times}" if times else "") + f"  {self.message.splitlines()[0] if self.message else ''}{note}")


def walk(
    store: Store, refs: Sequence[str] | None = None, limit: int | None = None
) -> Iterator[tuple[ObjectId, Commit]]:
    """Commits reachable from the revisions ``refs`` (default every local branch and tag,
    the revocation branch aside), each once, newest first: history.log from all of them
    (the newest ``limit`` only, if given)."""
    return log(store, revocations.tips(store, refs), limit)


def _event(oid: ObjectId, c: Commit, action: str, key: EntryKey, entry: Entry | None) -> Event:
    meta = c.metadata
    timings = {k: int(v) for src in (entry.meta if entry else {}, meta) for k, v in src.items()
               if k in _TIMINGS and isinstance(v, int)}
    return Event(oid, action, str(key), entry.blob if entry else None, c.author, c.time, c.message,
                 str(meta.get("producer", "")), str(meta.get("host", "")), str(meta.get("token", "")), timings)


def _changes(store: Store, oid: ObjectId, c: Commit, match: Any) -> Iterator[Event]:
    base = load_commit(store, c.parents[0]).manifest if c.parents else manifest.EMPTY
    for ch in manifest.diff(store, base, c.manifest):
        if match(ch.key):
            action = "added" if ch.old is None else "removed" if ch.new is None else "changed"
            yield _event(oid, c, action, ch.key, ch.new if ch.new is not None else ch.old)


def blame(store: Store, key: str, refs: Sequence[str] | None = None, limit: int | None = None) -> list[Event]:
    """The history of the entries whose torch cache key is ``key`` (exact, as ``cas ls``
    prints it, or a prefix of 8+ characters), newest first; NotFound if none has it.
    ``limit`` bounds the commits walked (the web view's explain page walks the newest
    LOG_LIMIT, so a page costs the same on a long history)."""
    def match(k: EntryKey) -> bool:
        return k.key == key or str(k) == key or (len(key) >= revocations.MIN_PREFIX and k.key.startswith(key))

    commits = list(walk(store, refs, limit))
    events = [e for oid, c in commits for e in _changes(store, oid, c, match)]
    if not events:
        raise NotFound(f"no commit of {', '.join(refs) if refs else 'any branch or tag'} holds key {key!r}",
                       hint="see `cas ls REF` for the entries of a ref")
    events += _revocations(store, {e.blob for e in events if e.blob})
    # Commit times are seconds: commits of one second are ordered by ancestry (a child
    # before its parent), which the time-ordered walk from several tips cannot promise.
    gen = _generations(commits)
    return sorted(events, key=lambda e: (-e.time, e.action != "revoked", -gen.get(e.commit, 0)))


def _generations(commits: Sequence[tuple[ObjectId, Commit]]) -> dict[ObjectId, int]:
    """Each walked commit's generation: 1 + its deepest walked parent's (a root: 1)."""
    parents = {oid: list(c.parents) for oid, c in commits}
    gen: dict[ObjectId, int] = {}
    for start in parents:
        stack = [start]
        while stack:
            oid = stack[-1]
            todo = [p for p in parents[oid] if p in parents and p not in gen]
            if oid in gen or not todo:
                gen.setdefault(oid, 1 + max((gen[p] for p in parents[oid] if p in parents), default=0))
                stack.pop()
            else:
                stack.extend(todo)
    return gen


def _revocations(store: Store, blobs: set[ObjectId]) -> list[Event]:
    tip = store.refs.get(revocations.REF)
    if tip is None:
        return []
    out = []
    for oid, c in walk(store, [revocations.REF]):
        for row in revocations.revoked_rows(c):
            if ObjectId.parse(row["blob"]) not in blobs:
                continue
            ev = Event(oid, "revoked", revocations.entry_text(row), ObjectId.parse(row["blob"]), c.author, c.time,
                       str(c.metadata.get("reason") or c.message), "revoke", str(c.metadata.get("host", "")))
            ev.ignored = revocations.honoured(store, oid, c)
            out.append(ev)
    return out
