"""Revocations: entries that must never reach torch again, from any ref.

Invariant 9: a revoked entry is never handed to torch again, from any ref, once the
revocation is known; revocations travel like commits.

A revocation is a commit on the branch ``refs/heads/cas/revocations`` (:data:`REF`),
made by ``cas revoke``. Its manifest is empty; its metadata (``producer: revoke``)
lists the revoked blobs, each with the entry key it was found under, the reason, and
optionally an Ed25519 signature (docs/format.md, "Revocations"). A blob, not a key, is
what is revoked: torch's bytes are not deterministic, so the same key compiled again
gives another blob, which is not revoked, while the bad bytes stay bad under any key
and in any ref, older tags included. Because it is a branch, push, fetch and clone
carry it with no special transport, and ``cas log cas/revocations`` is its history.

A revocation commit is **honoured** when it was made here, arrived from a trusted
remote, or is signed by a trusted key (the facts of :mod:`cas.trust`, as for torch's
trust policy); any other is ignored, and :func:`load` says which and why. Readers
(hydrate, the live backend, the Redis door, merges) consult a :class:`RevokedSet`,
loaded once per change of the branch tip (:class:`Watch`: one ref read per lookup).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from cas import manifest, provenance, trust
from cas.codec import ObjType
from cas.config import identity
from cas.digest import ObjectId, is_hex_prefix
from cas.errors import AmbiguousId, NotFound, RefConflict, UsageError
from cas.history import log
from cas.objects import Commit, EntryKey
from cas.refs import HEADS, TAGS, find_ref, load_commit, resolve, short_name
from cas.store import Store

__all__ = [
    "BRANCH",
    "REF",
    "Revoked",
    "RevokedSet",
    "Target",
    "Watch",
    "commits_since",
    "entry_text",
    "find_targets",
    "honoured",
    "is_revocation",
    "load",
    "revoke",
    "revoked_rows",
    "tips",
]

BRANCH = "cas/revocations"
REF = HEADS + BRANCH
PRODUCER = "revoke"
#: Shortest torch cache-key prefix ``cas revoke`` accepts (as ``cas explain``).
MIN_PREFIX = 8
_BLOB = re.compile(r"[0-9a-f]{64}")
#: How often :func:`revoke` re-reads the branch after losing a race with another writer.
MAX_RETRIES = 64


@dataclass(frozen=True)
class Target:
    """A blob to revoke, and the entry key it was found under (None: named by its id)."""

    blob: ObjectId
    key: EntryKey | None = None


@dataclass(frozen=True)
class Revoked:
    """One honoured revocation of one blob: what, by whom, when, why, in which commit."""

    blob: ObjectId
    entry: str
    reason: str
    author: str
    time: int
    commit: ObjectId
    signer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"blob": self.blob.hex, "entry": self.entry, "reason": self.reason, "author": self.author,
                "time": self.time, "commit": self.commit.hex, "signer": self.signer}

    def line(self) -> str:
        by = f"{self.author}" + (f", signed by {self.signer[:16]}" if self.signer else "")
        return f"revoked by {by} in {self.commit.short()}: {self.reason}"


@dataclass
class RevokedSet:
    """The honoured revocations of a store (``tip``: the branch commit they were read at)."""

    tip: ObjectId | None = None
    by_blob: dict[ObjectId, Revoked] = field(default_factory=dict)
    #: Revocation commits not honoured, with why: ``(commit, reason)``.
    ignored: list[tuple[ObjectId, str]] = field(default_factory=list)

    def __contains__(self, blob: object) -> bool:
        return blob in self.by_blob

    def __len__(self) -> int:
        return len(self.by_blob)

    def get(self, blob: ObjectId) -> Revoked | None:
        return self.by_blob.get(blob)


def is_revocation(c: Commit) -> bool:
    return c.metadata.get("producer") == PRODUCER


def revoked_rows(c: Commit) -> list[dict[str, str]]:
    """The rows a revocation commit lists (empty for any other commit)."""
    rows = c.metadata.get("revoked") if is_revocation(c) else None
    if not isinstance(rows, list):
        return []
    return [r for r in rows if isinstance(r, dict) and isinstance(b := r.get("blob"), str) and _BLOB.fullmatch(b)]


# -- naming what to revoke -------------------------------------------------------------------


def find_targets(store: Store, what: str, refs: Sequence[str] | None = None) -> list[Target]:
    """The blobs ``what`` names: a blob id (or unique prefix), or a torch cache key (exact,
    as ``cas ls`` shows it, or a prefix of at least :data:`MIN_PREFIX` characters) held by
    any entry of ``refs`` (full ref names; default every local branch and tag).

    Raises UsageError for a commit, tag or other non-blob object (refs are dropped with
    ``cas tag -d`` / ``cas branch -d``, not revoked), NotFound when nothing matches.
    """
    what = what.strip()
    if not what:
        raise UsageError("empty key: give a torch cache key or a blob id")
    oid = _object(store, what)
    if oid is not None:
        return [Target(oid)]
    found = [Target(e.blob, k) for k, e in _entries(store, refs) if _matches(k, what)]
    keys = {t.key.key for t in found if t.key is not None}
    if len(keys) > 1:
        raise AmbiguousId(f"key prefix {what!r} matches {len(keys)} cache keys", hint="give more of the key")
    if not found:
        _refuse_ref(store, what)
        where = ", ".join(refs) if refs else "any branch or tag"
        raise NotFound(f"no entry with key or blob {what!r} in {where}; nothing revoked",
                       hint="see `cas ls REF` for the entries of a ref")
    return list({t.blob: t for t in found}.values())


def _object(store: Store, text: str) -> ObjectId | None:
    """The blob ``text`` names as an id or id prefix, or None if it names no object."""
    if len(text) < MIN_PREFIX or not is_hex_prefix(text):
        return None
    ids = store.objects.resolve_prefix(text, limit=2)
    if len(ids) > 1:
        raise AmbiguousId(f"id prefix {text!r} is ambiguous", hint="give more characters of the id")
    if not ids:
        return None
    rec = store.objects.record(ids[0])
    if rec is not None and rec.type != ObjType.BLOB:
        hint = "revoke takes an entry key or a blob id; drop a tag with `cas tag -d NAME`"
        raise UsageError(f"{ids[0].short()} is a {rec.type.label}, not an entry's blob; nothing revoked", hint=hint)
    return ids[0]


def _refuse_ref(store: Store, text: str) -> None:
    """A UsageError if ``text`` names a branch or tag: refs are dropped, not revoked."""
    found = find_ref(store, text)
    if found is not None:
        what = "tag" if found[0].startswith(TAGS) else "branch" if found[0].startswith(HEADS) else "ref"
        drop = f"; drop a {what} with `cas {what} -d {short_name(found[0])}`" if what != "ref" else ""
        raise UsageError(f"{text} is a {what}, not an entry; nothing revoked",
                         hint=f"revoke takes an entry key or a blob id{drop}")


def _matches(k: EntryKey, text: str) -> bool:
    return k.key == text or str(k) == text or (len(text) >= MIN_PREFIX and k.key.startswith(text))


def tips(store: Store, revs: Sequence[str] | None) -> list[ObjectId]:
    """The commits of revisions ``revs``; default: of every local branch and tag but the
    revocation branch. RefNotFound for an unknown one."""
    if revs:
        return list(dict.fromkeys(resolve(store, r) for r in revs))
    names = [r for p in (HEADS, TAGS) for r in store.refs.as_dict(p) if r != REF]
    return list(dict.fromkeys(resolve(store, n) for n in names))


def _entries(store: Store, refs: Sequence[str] | None) -> Iterator[tuple[EntryKey, Any]]:
    """Entries of the manifests of revisions ``refs`` (each distinct manifest read once)."""
    roots = dict.fromkeys(load_commit(store, c).manifest for c in tips(store, refs))
    for root in roots:
        yield from manifest.entries(store, root)


# -- writing a revocation ------------------------------------------------------------------


def _rows(targets: Iterable[Target]) -> list[dict[str, str]]:
    out = []
    for t in targets:
        row = {"blob": t.blob.hex}
        if t.key is not None:
            row.update(env=t.key.env.hex, kind=t.key.kind, key=t.key.key, variant=t.key.variant)
        out.append(row)
    return out


def _signed(c: Commit, private_key: bytes | None) -> Commit:
    """``c`` with ``signer`` and ``signature`` (over the commit without ``signature``)."""
    if private_key is None:
        return c
    meta = dict(c.metadata) | {"signer": trust.public_key(private_key).hex()}
    unsigned = Commit(c.manifest, c.parents, c.author, c.time, c.message, meta)
    meta["signature"] = trust.sign(private_key, unsigned.encode()).hex()
    return Commit(c.manifest, c.parents, c.author, c.time, c.message, meta)


def revoke(
    store: Store,
    targets: Sequence[Target],
    reason: str,
    *,
    private_key: bytes | None = None,
    author: str | None = None,
) -> ObjectId:
    """Commit a revocation of ``targets`` on :data:`REF` (signed with ``private_key``, a
    raw Ed25519 key, when given) and return it. Retries a lost race like
    history.commit_changes; blobs already revoked are a UsageError, nothing written."""
    reason = reason.strip()
    if not reason:
        raise UsageError("a revocation needs a reason (-m WHY)")
    known = load(store)
    fresh = [t for t in targets if t.blob not in known]
    if not fresh:
        first = known.by_blob[targets[0].blob]
        raise UsageError(f"{targets[0].blob.short()} is already {first.line()}; nothing written")
    manifest.build(store, [])  # the empty manifest every revocation commit names
    meta = {"producer": PRODUCER, "revoked": _rows(fresh), "reason": reason, "host": socket.gethostname()}
    who = author or identity()
    for _ in range(MAX_RETRIES):
        tip = store.refs.get(REF)
        c = Commit(manifest.EMPTY, (tip,) if tip else (), who, int(time.time()), f"revoke: {reason}", meta)
        oid = store.objects.put_object(_signed(c, private_key))
        provenance.mark_local(store, oid)
        try:
            store.refs.set(REF, oid, expected=tip, who=who, message="revoke")
            return oid
        except RefConflict:
            continue
    raise RefConflict(f"{BRANCH} kept changing; gave up after {MAX_RETRIES} tries")


# -- reading revocations -------------------------------------------------------------------


def honoured(store: Store, oid: ObjectId, c: Commit) -> str | None:
    """None if revocation commit ``c`` is honoured here, else why it is not."""
    signature, signer = c.metadata.get("signature"), c.metadata.get("signer")
    if isinstance(signature, str) and isinstance(signer, str):
        meta = {k: v for k, v in c.metadata.items() if k != "signature"}
        unsigned = Commit(c.manifest, c.parents, c.author, c.time, c.message, meta)
        try:
            if trust.verify(unsigned.encode(), bytes.fromhex(signature), trust.trusted_keys(store)):
                return None
        except ValueError:
            return "its signature is malformed"
    origin = provenance.origin(store, oid) or ""
    if not origin.startswith("remote:"):
        return None  # made here, or written into this store by a token holder (a push)
    remote = origin[len("remote:"):]
    if trust.remote_trusted(store, remote):
        return None
    return f"it came from untrusted remote {trust.describe_untrusted(store, remote)[0]} and is not signed by a trusted key"


def load(store: Store) -> RevokedSet:
    """Every honoured revocation in :data:`REF`'s history (the oldest one per blob)."""
    tip = store.refs.get(REF)
    out = RevokedSet(tip)
    if tip is None:
        return out
    for oid, c in log(store, tip):
        rows = revoked_rows(c)
        if not rows:
            continue
        why = honoured(store, oid, c)
        if why is not None:
            out.ignored.append((oid, why))
            continue
        signer = c.metadata.get("signer") if "signature" in c.metadata else None
        reason = str(c.metadata.get("reason") or c.message)
        for r in rows:
            blob = ObjectId.parse(r["blob"])
            entry = entry_text(r)
            out.by_blob[blob] = Revoked(blob, entry, reason, c.author, c.time, oid, signer)  # older wins
    return out


def entry_text(row: dict[str, str]) -> str:
    if not row.get("kind"):
        return f"blob {row['blob'][:12]}"
    variant = f"#{row['variant']}" if row.get("variant") else ""
    return f"{row.get('env', '')[:8]}/{row['kind']}/{row.get('key', '')}{variant}"


class Watch:
    """A :class:`RevokedSet` kept current: :meth:`refresh` re-reads only the branch tip
    (one ref read) and reloads when it moved. Not thread-safe; callers hold their lock."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.revoked = RevokedSet()
        self._tip: ObjectId | None | bool = False  # False: never read

    def refresh(self) -> bool:
        """Reload if the revocations changed since the last call; True if they did."""
        tip = self.store.refs.get(REF)
        if tip == self._tip:
            return False
        self._tip = tip
        before = set(self.revoked.by_blob)
        self.revoked = load(self.store)
        return set(self.revoked.by_blob) != before

    def __contains__(self, blob: object) -> bool:
        return blob in self.revoked


def commits_since(store: Store, tip: ObjectId, known: ObjectId | None) -> list[tuple[ObjectId, Commit]]:
    """Commits reachable from ``tip`` and not from ``known`` (revocations are few)."""
    have = {o for o, _ in log(store, known)} if known is not None else set()
    return [(o, c) for o, c in log(store, tip) if o not in have]

