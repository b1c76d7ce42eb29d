"""What gc asks of the store: write times (cas.store.wtlog), sweeping, deleting."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from cas.digest import ObjectId
from cas.store import records as rc
from cas.store import wtlog
from cas.store.env import Env, Txn
from cas.store.records import Record


class Maintenance:
    """The gc side of :class:`cas.store.Store` (a part of it, sharing its Env)."""

    _env: Env
    clock: Callable[[], float]

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
