"""The store: one LMDB environment holding objects, refs, the reflog and format metadata.

This package is the only code that imports lmdb, and no LMDB transaction leaves it.
Everything that touches the disk goes through :class:`Store`, whose parts live in the
modules named by their jobs; see docs/format.md ("On-disk layout") for the byte layout.

* :mod:`cas.store.env`: the shared LMDB environment, transactions, map growth, errors.
* :mod:`cas.store.records`: the record codec (pure: header, compression, chunks).
* :mod:`cas.store.objects`: reads; :mod:`cas.store.writes`: the one write path.
* :mod:`cas.store.refs`: refs (compare-and-swap) and the reflog.
* :mod:`cas.store.staging`: the quarantine of transfers.
* :mod:`cas.store.wtlog`: the write-time log; :mod:`cas.store.maintenance`: gc's side.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from cas.digest import DIGEST_SIZE
from cas.errors import FormatVersionError
from cas.store.env import INITIAL_MAP_SIZE, MAX_MAP_SIZE, STORE_FORMAT, Env, Txn
from cas.store.maintenance import Maintenance
from cas.store.records import CHUNK_SIZE, CHUNK_THRESHOLD, Record
from cas.store.refs import ANY, ReflogEntry, Refs
from cas.store.staging import Staging
from cas.store.writes import STREAM_TXN_BYTES, Writes


class Store(Staging, Writes, Refs, Maintenance):
    """A content-addressed object store with refs, in one LMDB environment."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = False,
        durable: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open the store at ``path`` (``create``: make it if absent).

        ``clock`` gives the epoch seconds stamped on writes, ref updates and the reflog
        (gc's grace periods are measured against it); tests pass a fake one.

        ``durable=False`` skips the fsync of each commit (LMDB ``sync=False``): a crash of
        the *machine* may lose the last commits, a crash of the process loses nothing.
        For throwaway stores and benchmarks; it applies to the process's first open of
        a path (the environment is shared by later opens).
        """
        self.path = Path(path)
        self.clock = clock
        self._big_reads = False
        self._env = Env(self.path, create=create, durable=durable, clock=clock)
        self._handle, self._objects_db = self._env.handle, self._env.objects
        raw = self.get_meta("format")
        if raw is None or raw != str(STORE_FORMAT):
            self.close()
            raise FormatVersionError(
                f"store format {raw!r} at {self.path} is not supported (this cas reads {STORE_FORMAT})",
                hint="upgrade cas",
            )

    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str],
        *,
        durable: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> Store:
        """Create a store at ``path`` (or open the one already there)."""
        return cls(path, create=True, durable=durable, clock=clock)

    def close(self) -> None:
        self._env.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    def get_meta(self, key: str) -> str | None:
        value = self._env.read(lambda txn: txn.get(key.encode(), db=self._env.meta))
        return None if value is None else bytes(value).decode()

    def set_meta(self, key: str, value: str | None) -> None:
        def go(txn: Txn) -> None:
            if value is None:
                txn.delete(key.encode(), db=self._env.meta)
            else:
                txn.put(key.encode(), value.encode(), db=self._env.meta)

        self._env.write(go)

    def info(self) -> dict[str, int]:
        """LMDB facts: map size, pages used, entries per named database."""
        return self._env.info()

    def sync(self) -> None:
        self._env.sync()


__all__ = [
    "ANY",
    "CHUNK_SIZE",
    "CHUNK_THRESHOLD",
    "DIGEST_SIZE",
    "INITIAL_MAP_SIZE",
    "MAX_MAP_SIZE",
    "STORE_FORMAT",
    "STREAM_TXN_BYTES",
    "Record",
    "ReflogEntry",
    "Store",
]
