"""A small cache of decompressed objects, so that a hot compressed blob is not
decompressed again on every read (docs/benchmarks.md, "Store reads").

An entry maps an id to the stored record it was decoded from and the decoded bytes. It
is used only while the record read in the current transaction is byte-for-byte the
record cached: the store is still asked on every read, so a deleted object (gc, another
process) is a miss and a rewritten or damaged record is decoded afresh; the cache never
answers for what LMDB does not hold. Comparing the record (a memcmp of its compressed
bytes) costs a small fraction of decompressing it.

Rejected: storing small, poorly compressing blobs uncompressed instead. It made reads of
such blobs as fast as plain ones but kept up to several times the bytes on disk for
every blob, hot or not; the cache costs a bounded amount of memory and only for blobs
that are read (the figures of both are in docs/benchmarks.md).

One cache per store path per process, shared by its handles and threads (a lock guards
it), bounded in bytes; least recently used entries go first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

#: Bytes of decoded content (plus their records) one cache keeps at most.
CACHE_BYTES = 32 << 20
#: Objects above this decoded size are never cached (one would crowd out the rest).
ENTRY_MAX = 1 << 20


class BlobCache:
    """Decoded bytes of recently read compressed records, keyed by raw id."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, tuple[bytes, bytes]] = OrderedDict()
        self._bytes = 0

    def get(self, raw: bytes, record: bytes | memoryview) -> bytes | None:
        """The decoded bytes cached for ``raw``, if cached from exactly ``record``."""
        with self._lock:
            got = self._entries.get(raw)
            if got is None:
                return None
            if got[0] != record:
                self._drop(raw)
                return None
            self._entries.move_to_end(raw)
            return got[1]

    def put(self, raw: bytes, record: bytes | memoryview, data: bytes) -> None:
        """Cache ``data``, decoded from ``record``, under ``raw`` (a no-op when too big)."""
        size = len(record) + len(data)
        if len(data) > ENTRY_MAX or size > self._limit:
            return
        kept = bytes(record)
        with self._lock:
            self._drop(raw)
            self._entries[raw] = (kept, data)
            self._bytes += size
            while self._bytes > self._limit:
                self._drop(next(iter(self._entries)))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def _drop(self, raw: bytes) -> None:
        got = self._entries.pop(raw, None)
        if got is not None:
            self._bytes -= len(got[0]) + len(got[1])
