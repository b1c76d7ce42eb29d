"""The one check of an entry's blob before its bytes go to torch or to a file, and the one
reaction to a bad one.

Every path that hands stored bytes on (hydrate, the live backend, Mega-Cache export,
autotune records) reads through :func:`read` (or checks a streamed blob with
:func:`check`): the bytes must be there, hash to the entry's blob id
(:func:`cas.digest.verify_id`) and have the entry's size. A blob that fails raises
:class:`~cas.errors.CorruptObject` and is counted (:func:`refused`); paths that go on
without it (:func:`read_or_skip`) report it once per process, as one
:class:`~cas.torch.warn.CasWarning` ("never worse than no cache"), and count it in their
own result. The hash is taken here rather than by ``store.objects.get(verify=True)`` so that a
blob is hashed once, whatever the store does below.
"""

from __future__ import annotations

import threading

from cas.digest import ObjectId, verify_id
from cas.errors import CorruptObject
from cas.objects import Entry, EntryKey
from cas.store import Store
from cas.torch.warn import warn_once

__all__ = ["check", "read", "read_or_skip", "refused", "report"]

_lock = threading.Lock()
_refused = 0


def refused() -> int:
    """How many blobs this process refused (missing, corrupt or of the wrong size)."""
    return _refused


def _refuse(exc: CorruptObject) -> CorruptObject:
    global _refused
    with _lock:
        _refused += 1
    return exc


def check(ek: EntryKey, entry: Entry, actual: ObjectId, size: int) -> None:
    """Raise (and count) :class:`CorruptObject` unless bytes of digest ``actual`` and
    ``size`` bytes are the blob of ``entry``."""
    try:
        verify_id(entry.blob, actual, what=f"blob of {ek}", hint="run `cas fsck`")
    except CorruptObject as exc:
        raise _refuse(exc) from None
    if size != entry.size:
        raise _refuse(CorruptObject(f"blob of {ek} {entry.blob.short()} is corrupt: {size} bytes, "
                                    f"its entry says {entry.size}", oid=entry.blob, hint="run `cas fsck`"))


def read(store: Store, ek: EntryKey, entry: Entry) -> bytes:
    """The bytes of ``entry``'s blob, checked (:func:`check`); raises (and counts)
    :class:`CorruptObject` when the store lacks it or it is corrupt."""
    data = store.objects.get(entry.blob)
    if data is None:
        raise _refuse(CorruptObject(f"blob of {ek} {entry.blob.short()} is missing from the store",
                                    oid=entry.blob, hint="run `cas fsck`"))
    check(ek, entry, ObjectId.of(data), len(data))
    return data


def report(exc: CorruptObject) -> None:
    """Say once per process that a blob was refused and what goes on without it."""
    warn_once("bad-blob", f"{exc.message}; it is skipped, and torch compiles what it held (run `cas fsck`)")


def read_or_skip(store: Store, ek: EntryKey, entry: Entry) -> bytes | None:
    """:func:`read`, or None for a refused blob (reported once per process, counted)."""
    try:
        return read(store, ek, entry)
    except CorruptObject as exc:
        report(exc)
        return None
