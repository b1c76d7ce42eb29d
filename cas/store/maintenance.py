"""What gc asks of the store: write times (cas.store.wtlog), read times (cas.store.reads),
sweeping, evicting (a size-bounded gc) and deleting."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from cas.digest import ObjectId
from cas.store import reads, wtlog
from cas.store import records as rc
from cas.store.env import Env, Txn
from cas.store.records import Record


class Maintenance:
    """The gc side of the store, :attr:`cas.store.Store.maintenance` (sharing its Env)."""

    def __init__(self, env: Env, clock: Callable[[], float]) -> None:
        self._env = env
        self.clock = clock

    def object_times(self) -> dict[ObjectId, int]:
        """Every recorded write time (id -> epoch seconds), objects and staged alike."""
        raw = self._env.read(lambda txn: wtlog.times(txn, self._env.otime))
        return {ObjectId(k): when for k, when in raw.items()}

    def object_time(self, oid: ObjectId) -> int | None:
        """When ``oid`` was last written (epoch seconds), or None if never recorded."""
        return self._env.read(lambda txn: wtlog.time_of(txn, self._env.otime, oid.raw))

    def sweep(self, oids: Iterable[ObjectId], *, before: float, dry_run: bool = False) -> list[Record]:
        """Delete the given objects that were last written before ``before``, in one txn.

        Write times are re-read inside the write transaction, so an object re-written
        (freshened) since the caller decided it was garbage survives. An object with no
        recorded time is stamped now and kept: unknown age is never old. Returns the
        records of the objects deleted (or, with ``dry_run``, that would be).
        """
        ids = list(oids)
        env = self._env

        def go(txn: Txn) -> list[Record]:
            times = wtlog.times(txn, env.otime)
            gone = []
            unknown = []
            forget = set()
            for oid in ids:
                value = txn.get(oid.raw, db=env.objects)
                if value is None:
                    continue
                when = times.get(oid.raw)
                if when is None:
                    unknown.append(oid.raw)
                    continue
                if when >= before:
                    continue
                gone.append(rc.decode(oid, value))
                if not dry_run:
                    txn.delete(oid.raw, db=env.objects)
                    if txn.get(oid.raw, db=env.stage) is None:
                        forget.add(oid.raw)
            if not dry_run:
                wtlog.stamp(txn, env.otime, self.clock(), b"".join(unknown))
                wtlog.forget(txn, env.otime, forget)
            return gone

        return env.read(go) if dry_run else env.write(go)

    def prune_times(self) -> int:
        """Compact the write-time log; returns how many ids' times were dropped.

        Drops the times of ids neither stored nor staged (and superseded entries: an id
        keeps only its latest time), and folds per-object records of earlier versions
        into the log. One transaction, so a crash leaves the log as it was.
        """
        env = self._env

        def go(txn: Txn) -> int:
            def alive(raw: bytes) -> bool:
                return txn.get(raw, db=env.objects) is not None or txn.get(raw, db=env.stage) is not None

            gone = [raw for raw in reads.times(txn, env.atime) if txn.get(raw, db=env.objects) is None]
            reads.forget(txn, env.atime, gone)
            return wtlog.prune(txn, env.otime, alive)

        return env.write(go)

    def stamp_missing(self, oids: Iterable[ObjectId]) -> int:
        """Give objects with no recorded write time the time now (their age starts now)."""
        ids = list(oids)
        env = self._env

        def go(txn: Txn) -> int:
            times = wtlog.times(txn, env.otime)
            missing = [
                oid.raw
                for oid in ids
                if oid.raw not in times and txn.get(oid.raw, db=env.objects) is not None
            ]
            wtlog.stamp(txn, env.otime, self.clock(), b"".join(dict.fromkeys(missing)))
            return len(set(missing))

        return env.write(go) if ids else 0

    def delete(self, oids: Iterable[ObjectId]) -> int:
        """Remove objects (gc only). Returns how many were present."""
        ids = list(oids)
        env = self._env

        def go(txn: Txn) -> int:
            wtlog.forget(txn, env.otime, {o.raw for o in ids})
            return sum(1 for o in ids if txn.delete(o.raw, db=env.objects))

        return env.write(go)

    # -- read times and eviction (cas.budget) -----------------------------------------------

    def note_reads(self, oids: Iterable[ObjectId]) -> None:
        """Note that ``oids`` were read now; written in batches (cas.store.reads)."""
        if self._env.reads.note((o.raw for o in oids), self.clock()):
            self._env.flush_reads()

    def flush_reads(self) -> int:
        """Write the reads noted so far in this process (one transaction)."""
        return self._env.flush_reads()

    def read_times(self) -> dict[ObjectId, int]:
        """Every recorded read time (id -> epoch seconds); noted reads not yet flushed excluded."""
        raw = self._env.read(lambda txn: reads.times(txn, self._env.atime))
        return {ObjectId(k): when for k, when in raw.items()}

    def evicted_ids(self) -> set[ObjectId]:
        """Ids of blobs a size-bounded gc evicted (their manifests still name them)."""
        keys = self._env.read(lambda txn: [bytes(k) for k in txn.cursor(db=self._env.evicted).iternext(values=False)])
        return {ObjectId(k) for k in keys}

    def evict(self, units: Iterable[tuple[ObjectId, list[ObjectId]]], *, before: float) -> list[Record]:
        """Delete blobs (each with the chunks given) and mark them evicted, in one txn.

        As in :meth:`sweep`, a blob written again since ``before`` (freshened by a
        concurrent writer) is kept, with its chunks. Returns the records deleted.
        """
        todo = list(units)
        env = self._env

        def go(txn: Txn) -> list[Record]:
            young = wtlog.written_since(txn, env.otime, before, [blob.raw for blob, _ in todo])
            gone: list[Record] = []
            mark = reads.TIME.pack(int(self.clock()))
            for blob, chunks in todo:
                if blob.raw in young:
                    continue
                for oid in (blob, *chunks):
                    value = txn.get(oid.raw, db=env.objects)
                    if value is not None:
                        gone.append(rc.decode(oid, value))
                        txn.delete(oid.raw, db=env.objects)
                txn.put(blob.raw, mark, db=env.evicted)
            # Their write and read times go at the next prune_times (gc calls it next):
            # dropping them here would scan both logs once per batch.
            return gone

        return env.write(go)

    def forget_evicted(self, still_named: Callable[[ObjectId], bool]) -> int:
        """Drop eviction marks of blobs stored again or no longer named by a stored object."""
        env = self._env

        def go(txn: Txn) -> int:
            keys = [bytes(k) for k in txn.cursor(db=env.evicted).iternext(values=False)]
            stale = [
                k for k in keys
                if not still_named(ObjectId(k)) or txn.get(k, db=env.objects) is not None
            ]
            return reads.forget(txn, env.evicted, stale)

        return env.write(go)
