"""Read times: when each blob was last read, for a size-bounded gc's eviction order.

A read must not cost a write: reads are noted in memory (:class:`ReadBuffer`, one per
store path per process, shared by every handle) and written in batches, one write
transaction per batch of READ_BATCH distinct ids, at an explicit flush (a server's
budget keeper, every few seconds) and when the process closes its last handle. A process
killed before a flush loses its noted reads: they only order eviction, so losing some
makes gc evict a little less well, never wrongly.

The ``atime`` database maps a raw 32-byte id to a u32 LE epoch second (the latest read
noted). The functions here work inside a transaction the caller holds (cas.store.env).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable
from typing import Any

#: Distinct ids noted before a flush is due (a few hundred KiB of puts in one txn).
READ_BATCH = 4096

TIME = struct.Struct("<I")


class ReadBuffer:
    """Reads noted and not yet written: raw id -> latest epoch second."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[bytes, int] = {}

    def note(self, raws: Iterable[bytes], when: float) -> bool:
        """Note reads at ``when``; True when READ_BATCH ids wait (a flush is due)."""
        stamp = int(when)
        with self._lock:
            self._pending.update(dict.fromkeys(raws, stamp))
            return len(self._pending) >= READ_BATCH

    def take(self) -> dict[bytes, int]:
        """Everything noted so far (the buffer is empty afterwards)."""
        with self._lock:
            out, self._pending = self._pending, {}
        return out

    def __len__(self) -> int:
        return len(self._pending)


def write(txn: Any, atime: Any, pending: dict[bytes, int]) -> None:
    """Record ``pending`` (raw id -> epoch second) in ``txn``; a later time wins."""
    for raw, when in pending.items():
        old = txn.get(raw, db=atime)
        if old is None or TIME.unpack(bytes(old))[0] < when:
            txn.put(raw, TIME.pack(when), db=atime)


def times(txn: Any, atime: Any) -> dict[bytes, int]:
    """Every recorded read time (raw id -> epoch second)."""
    return {bytes(k): TIME.unpack(bytes(v))[0] for k, v in txn.cursor(db=atime)}


def forget(txn: Any, db: Any, raws: Iterable[bytes]) -> int:
    """Delete the keys ``raws`` from ``db`` (read times, eviction marks); returns how many."""
    return sum(1 for raw in raws if txn.delete(raw, db=db))
