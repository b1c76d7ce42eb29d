"""The write-time log: when each id was last written, for gc's grace period.

``otime`` records when each id was last written, to the objects db or to the stage: a
log with records per write transaction. It is gc's notion of "young": like git's
mtimes, it protects objects a concurrent writer just stored from a sweep that did not
see the ref that will name them. An id's time is the latest record that names it;
:func:`prune` drops superseded and dead entries.

Records hold the ids written by a write transaction, 32 bytes each, concatenated, keyed
by LOG_KEY (u32 BE epoch seconds, u64 BE LMDB txn id, u32 BE part: sorted by time).
Parts hold at most LOG_PART bytes, so that a record fits in a leaf page (an overflow
record needs contiguous free pages, which often means growing the file: a slower
fsync). Records keyed by a 32-byte id with a u32 LE time (_TIME) are the per-object
form of earlier versions; both are read, and :func:`prune` folds the old form into the
log. The functions here work inside a transaction the caller holds (cas.store.env).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from cas.digest import DIGEST_SIZE
from cas.store.env import Txn

_TIME = struct.Struct("<I")
LOG_KEY = struct.Struct(">IQI")
LOG_PART = 60 * DIGEST_SIZE
_PART = struct.Struct(">I")

#: A named database of the environment (an lmdb ``_Database``).
Db = Any


def stamp(txn: Txn, otime: Db, when: float, ids: bytes) -> None:
    """Log ``ids`` (raw ids, concatenated) as written at ``when``, in ``txn``.

    A second stamp in one txn goes on after the txn's last part.
    """
    if not ids:
        return
    prefix = LOG_KEY.pack(int(when), txn.id(), 0)[:-4]
    part = 0
    if txn.get(prefix + bytes(4), db=otime) is not None:
        cur = txn.cursor(db=otime)
        cur.set_range(prefix)
        for key in cur.iternext(keys=True, values=False):
            if not bytes(key).startswith(prefix):
                break
            part = LOG_KEY.unpack(bytes(key))[2] + 1
    put = txn.put
    for i in range(0, len(ids), LOG_PART):
        put(prefix + _PART.pack(part), ids[i : i + LOG_PART], db=otime)
        part += 1


def times(txn: Txn, otime: Db) -> dict[bytes, int]:
    """Every recorded write time (raw id -> latest epoch seconds)."""
    log: dict[bytes, int] = {}
    legacy: dict[bytes, int] = {}
    for key, value in txn.cursor(db=otime):
        if len(key) == DIGEST_SIZE:
            legacy[bytes(key)] = _TIME.unpack(bytes(value))[0]
            continue
        when = LOG_KEY.unpack(bytes(key))[0]
        # records come oldest first, so a later one overrides
        log.update(dict.fromkeys(split_ids(bytes(value)), when))
    for raw, when in legacy.items():
        if log.get(raw, -1) < when:
            log[raw] = when
    return log


def written_since(txn: Txn, otime: Db, when: float, raws: list[bytes]) -> set[bytes]:
    """Those of ``raws`` written at or after ``when``: reads only the log records that
    young (the log is sorted by time), plus the per-object records of earlier versions."""
    wanted = set(raws)
    young = {raw for raw in raws if (old := txn.get(raw, db=otime)) is not None
             and _TIME.unpack(bytes(old))[0] >= when}
    cur = txn.cursor(db=otime)
    if not cur.set_range(_PART.pack(max(0, int(when)))):
        return young
    for key, value in cur:
        if len(key) != DIGEST_SIZE and LOG_KEY.unpack(bytes(key))[0] >= when:
            young.update(raw for raw in split_ids(bytes(value)) if raw in wanted)
    return young


def time_of(txn: Txn, otime: Db, raw: bytes) -> int | None:
    """When the id ``raw`` was last written (epoch seconds), or None if never recorded."""
    old = txn.get(raw, db=otime)
    found = None if old is None else int(_TIME.unpack(bytes(old))[0])
    cur = txn.cursor(db=otime)
    if not cur.last():
        return found
    for key, value in cur.iterprev():  # newest first: the first hit is the latest
        if len(key) != DIGEST_SIZE and _holds(bytes(value), raw):
            when = int(LOG_KEY.unpack(bytes(key))[0])
            return when if found is None else max(when, found)
    return found


def forget(txn: Txn, otime: Db, doomed: set[bytes]) -> None:
    """Drop every write time of the ids in ``doomed``."""
    if not doomed:
        return
    changes: list[tuple[bytes, bytes]] = []
    for key, value in txn.cursor(db=otime):
        key = bytes(key)
        if len(key) == DIGEST_SIZE:
            if key in doomed:
                changes.append((key, b""))
            continue
        ids = split_ids(bytes(value))
        keep = [raw for raw in ids if raw not in doomed]
        if len(keep) != len(ids):
            changes.append((key, b"".join(keep)))
    for key, value in changes:
        if value:
            txn.put(key, value, db=otime)
        else:
            txn.delete(key, db=otime)


def prune(txn: Txn, otime: Db, alive: Callable[[bytes], bool]) -> int:
    """Compact the log; returns how many ids' times were dropped.

    Drops the times of ids for which ``alive`` is false (and superseded entries: an id
    keeps only its latest time), and folds per-object records of earlier versions into
    the log.
    """
    records: dict[bytes, list[bytes]] = {}
    latest: dict[bytes, bytes] = {}
    legacy: list[bytes] = []
    folded: set[bytes] = set()
    for key, value in txn.cursor(db=otime):
        key = bytes(key)
        if len(key) == DIGEST_SIZE:
            legacy.append(key)
            lkey = LOG_KEY.pack(_TIME.unpack(bytes(value))[0], 0, 0)
            folded.add(lkey)
            records.setdefault(lkey, []).append(key)
        else:
            records.setdefault(key, []).extend(split_ids(bytes(value)))
    for key in sorted(records):  # oldest first: a later record overrides
        latest.update(dict.fromkeys(records[key], key))
    dead = {raw for raw in latest if not alive(raw)}
    for key in legacy:
        txn.delete(key, db=otime)
    for key, ids in records.items():
        keep = b"".join(raw for raw in dict.fromkeys(ids) if latest[raw] == key and raw not in dead)
        if len(keep) == len(ids) * DIGEST_SIZE and key not in folded:
            continue  # unchanged
        if keep:
            txn.put(key, keep, db=otime)
        else:
            txn.delete(key, db=otime)
    return len(dead)


def split_ids(value: bytes) -> list[bytes]:
    """The 32-byte ids of a log record."""
    return [value[i : i + DIGEST_SIZE] for i in range(0, len(value), DIGEST_SIZE)]


def _holds(value: bytes, raw: bytes) -> bool:
    """True if the log record ``value`` names the id ``raw`` (at an id boundary)."""
    i = value.find(raw)
    while i >= 0:
        if i % DIGEST_SIZE == 0:
            return True
        i = value.find(raw, i + 1)
    return False
