"""Staging: the quarantine of transfers.

A pull walks a remote top-down (commit, then manifest nodes) but closure wants objects
stored bottom-up. Fetched structured objects wait here, verified, until everything they
reference is present; then ``promote`` moves them into ``objects`` in one transaction.
Staged objects survive a dropped connection, so a resumed transfer does not fetch them
again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from cas.codec import ObjType
from cas.digest import ObjectId
from cas.store import records as rc
from cas.store import wtlog
from cas.store.env import Env, Txn
from cas.store.objects import Objects
from cas.store.records import Record


class Staging:
    """The stage of the store, :attr:`cas.store.Store.stage` (sharing its Env)."""

    def __init__(self, env: Env, clock: Callable[[], float], objects: Objects) -> None:
        self._env = env
        self.clock = clock
        self._objects = objects  # its record decoding (chunks, compression)

    def put(self, items: Iterable[tuple[ObjectId, ObjType, bytes]]) -> None:
        records = [(oid, rc.encode(otype, data)) for oid, otype, data in items]
        env = self._env

        def go(txn: Txn) -> None:
            for oid, rec in records:
                txn.put(oid.raw, rec, db=env.stage)
            wtlog.stamp(txn, env.otime, self.clock(), b"".join(oid.raw for oid, _ in records))

        env.write(go)

    def get(self, oid: ObjectId) -> tuple[ObjType, bytes] | None:
        def go(txn: Txn) -> tuple[ObjType, bytes] | None:
            value = txn.get(oid.raw, db=self._env.stage)
            if value is None:
                return None
            return rc.decode(oid, value).type, self._objects._payload(txn, oid, value)

        return self._env.read(go)

    def promote(self, oids: Iterable[ObjectId]) -> int:
        """Move staged objects into the store, in the given (closure) order."""
        ids = list(oids)
        env = self._env

        def go(txn: Txn) -> int:
            moved = 0
            stamped = []
            for oid in ids:
                value = txn.get(oid.raw, db=env.stage)
                if value is None:
                    continue
                stamped.append(oid.raw)
                if txn.get(oid.raw, db=env.objects) is None:
                    txn.put(oid.raw, bytes(value), db=env.objects)
                    moved += 1
                txn.delete(oid.raw, db=env.stage)
            wtlog.stamp(txn, env.otime, self.clock(), b"".join(stamped))
            return moved

        return env.write(go)

    def clear(self) -> int:
        env = self._env

        def go(txn: Txn) -> int:
            n = txn.stat(env.stage)["entries"]
            keys = txn.cursor(db=env.stage).iternext(keys=True, values=False)
            # a write time goes with what it dates
            wtlog.forget(txn, env.otime, {bytes(k) for k in keys if txn.get(k, db=env.objects) is None})
            txn.drop(env.stage, delete=False)
            return int(n)

        return env.write(go)

    def entries(self) -> Iterator[tuple[Record, int | None]]:
        """Every staged object's record with its write time (a snapshot)."""
        env = self._env

        def go(txn: Txn) -> list[tuple[Record, int | None]]:
            times = wtlog.times(txn, env.otime)
            out = []
            for key, value in txn.cursor(db=env.stage):
                oid = ObjectId(bytes(key))
                out.append((rc.decode(oid, value), times.get(oid.raw)))
            return out

        yield from env.read(go)

    def expire(self, before: float) -> int:
        """Drop staged objects written before ``before`` (or of unknown age)."""
        env = self._env

        def go(txn: Txn) -> int:
            times = wtlog.times(txn, env.otime)
            doomed = []
            for key in txn.cursor(db=env.stage).iternext(keys=True, values=False):
                key = bytes(key)
                when = times.get(key)
                if when is None or when < before:
                    doomed.append(key)
            for key in doomed:
                txn.delete(key, db=env.stage)
            wtlog.forget(txn, env.otime, {k for k in doomed if txn.get(k, db=env.objects) is None})
            return len(doomed)

        return env.write(go)
