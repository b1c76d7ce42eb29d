"""The store: one LMDB environment holding objects, refs, the reflog and format metadata.

This package is the only code that imports lmdb, and no LMDB transaction leaves it.
Everything that touches the disk goes through :class:`Store`, which holds a few parts,
each a small surface in the module named by its job (the way dulwich's Repo holds
``object_store`` and ``refs``); see docs/format.md ("On-disk layout") for the byte layout
and "The store's surface" for what each part offers.

* ``store.objects``: :mod:`cas.store.objects` (reads) and :mod:`cas.store.writes` (the one
  write path).
* ``store.refs``: :mod:`cas.store.refs`, refs (compare-and-swap) and the reflog.
* ``store.stage``: :mod:`cas.store.staging`, the quarantine of transfers.
* ``store.maintenance``: :mod:`cas.store.maintenance`, gc's side (write and read times).
* ``store.meta``: :mod:`cas.store.meta`, the format metadata.

The modules beneath them:

* :mod:`cas.store.env`: the shared LMDB environment, transactions, map growth, errors.
* :mod:`cas.store.records`: the record codec (pure: header, compression, chunks).
* :mod:`cas.store.wtlog`: the write-time log; :mod:`cas.store.reads`: read times.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from cas.digest import DIGEST_SIZE
from cas.errors import FormatVersionError
from cas.store.env import INITIAL_MAP_SIZE, MAX_MAP_SIZE, STORE_FORMAT, Env
from cas.store.maintenance import Maintenance
from cas.store.meta import Meta
from cas.store.objects import Objects
from cas.store.records import CHUNK_SIZE, CHUNK_THRESHOLD, Record
from cas.store.refs import ANY, ReflogEntry, Refs
from cas.store.staging import Staging
from cas.store.writes import STREAM_TXN_BYTES, Writes


class ObjectStore(Objects, Writes):
    """Objects by id: the reads of :mod:`cas.store.objects`, the writes of :mod:`cas.store.writes`."""


class Store:
    """A content-addressed object store with refs, in one LMDB environment.

    Its parts: :attr:`objects`, :attr:`refs`, :attr:`stage`, :attr:`maintenance`,
    :attr:`meta`; the store itself opens, closes, and reports LMDB facts.
    """

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
        self._env = Env(self.path, create=create, durable=durable, clock=clock)
        self.objects = ObjectStore(self._env, clock)
        self.refs = Refs(self._env, clock)
        self.stage = Staging(self._env, clock, self.objects)
        self.maintenance = Maintenance(self._env, clock)
        self.meta = Meta(self._env)
        raw = self.meta.get("format")
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

    def info(self) -> dict[str, int]:
        """LMDB facts: map size, pages used, entries per named database."""
        return self._env.info()

    def sync(self) -> None:
        self._env.sync()

    def generation(self) -> int:
        """A number that grows with every write committed to the store, by any process
        (LMDB's last transaction id, read from its shared meta page without a
        transaction): when it has not changed, nothing in the store has. Read it *before*
        what it guards, so that a commit in between shows as a change next time."""
        return self._env.generation()


__all__ = [
    "ANY",
    "CHUNK_SIZE",
    "CHUNK_THRESHOLD",
    "DIGEST_SIZE",
    "INITIAL_MAP_SIZE",
    "MAX_MAP_SIZE",
    "ObjectStore",
    "STORE_FORMAT",
    "STREAM_TXN_BYTES",
    "Record",
    "ReflogEntry",
    "Store",
]
