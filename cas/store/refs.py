"""Refs and the reflog. Ref updates are compare-and-swap inside a write txn; LMDB
serializes writers across processes, so the read-compare-write is atomic."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from cas import codec
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import BadRefTarget, ObjectNotFound, RefConflict
from cas.store.env import Env, Txn
from cas.store.records import TYPE_OF

ANY = object()  # expected value for a ref update that does not compare

#: Record type codes a ref may point at (docs/format.md, invariant 1).
_REF_TARGETS = frozenset({int(ObjType.COMMIT), int(ObjType.TAG)})
_SEQ = struct.Struct(">Q")


@dataclass(frozen=True)
class ReflogEntry:
    ref: str
    old: ObjectId | None
    new: ObjectId | None
    time: float
    who: str
    message: str


class Refs:
    """The refs and reflog of the store, :attr:`cas.store.Store.refs` (sharing its Env)."""

    def __init__(self, env: Env, clock: Callable[[], float]) -> None:
        self._env = env
        self.clock = clock

    def get(self, name: str) -> ObjectId | None:
        value = self._env.read(lambda txn: txn.get(name.encode(), db=self._env.refs))
        return None if value is None else ObjectId(bytes(value))

    def raw(self, names: tuple[str, ...]) -> tuple[bytes | None, ...]:
        """The raw values of refs ``names`` (None: absent), read in one transaction: a
        cheap check of whether any of them moved (the Redis door does one per GET)."""
        db = self._env.refs
        # Without buffers, LMDB's values are bytes already.
        return self._env.read(lambda txn: tuple([cast(bytes | None, txn.get(n.encode(), db=db)) for n in names]))

    def as_dict(self, prefix: str = "refs/") -> dict[str, ObjectId]:
        start = prefix.encode()

        def go(txn: Txn) -> dict[str, ObjectId]:
            out: dict[str, ObjectId] = {}
            cur = txn.cursor(db=self._env.refs)
            if not cur.set_range(start):
                return out
            for key, value in cur:
                if not bytes(key).startswith(start):
                    break
                out[bytes(key).decode()] = ObjectId(bytes(value))
            return out

        return self._env.read(go)

    def set(
        self,
        name: str,
        new: ObjectId | None,
        *,
        expected: ObjectId | None | object = ANY,
        who: str = "",
        message: str = "",
    ) -> ObjectId | None:
        """Compare-and-swap ``name`` from ``expected`` to ``new`` (None deletes).

        ``expected=None`` means "must not exist"; ``ANY`` skips the comparison. The target
        must already be stored (closure). Logs the change in the reflog. Returns the old
        value.
        """
        key = name.encode()
        now = self.clock()
        refs = self._env.refs

        def go(txn: Txn) -> ObjectId | None:
            raw = txn.get(key, db=refs)
            old = None if raw is None else ObjectId(bytes(raw))
            if expected is not ANY and old != expected:
                raise RefConflict(
                    f"ref {name} changed: expected {_show(expected)}, found {_show(old)}",
                    hint="someone else updated it; fetch or pull, then retry",
                    ref=name,
                    expected=expected,
                    actual=old,
                )
            if new is not None:
                self._check_ref_target(txn, name, new)
            if old == new:
                return old
            if new is None:
                txn.delete(key, db=refs)
            else:
                txn.put(key, new.raw, db=refs)
            self._log(txn, name, old, new, now, who, message)
            return old

        return self._env.write(go)

    def _check_ref_target(self, txn: Txn, name: str, new: ObjectId) -> None:
        """A ref names a stored commit or tag, nothing else (docs/format.md, invariant 1)."""
        target = txn.get(new.raw, db=self._env.objects)
        if target is None:
            raise ObjectNotFound(f"cannot point {name} at {new.short()}: object not in store", oid=new)
        code = int(target[0])
        if code not in _REF_TARGETS:
            label = TYPE_OF[code].label if code in TYPE_OF else "unknown object"
            raise BadRefTarget(f"cannot point {name} at {new.short()}: a {label}, not a commit or tag", oid=new)

    def _log(
        self,
        txn: Txn,
        name: str,
        old: ObjectId | None,
        new: ObjectId | None,
        when: float,
        who: str,
        message: str,
    ) -> None:
        prefix = name.encode() + b"\x00"
        cur = txn.cursor(db=self._env.reflog)
        seq = 0
        if cur.set_range(prefix + b"\xff" * 8):
            if cur.prev() and bytes(cur.key()).startswith(prefix):
                seq = _SEQ.unpack(bytes(cur.key())[len(prefix) :])[0] + 1
        elif cur.last() and bytes(cur.key()).startswith(prefix):
            seq = _SEQ.unpack(bytes(cur.key())[len(prefix) :])[0] + 1
        value = codec.pack([old.raw if old else None, new.raw if new else None, when, who, message])
        txn.put(prefix + _SEQ.pack(seq), value, db=self._env.reflog)

    def log(self, name: str | None = None) -> list[ReflogEntry]:
        """Reflog entries, oldest first, for one ref or for all refs."""
        prefix = name.encode() + b"\x00" if name else b""

        def go(txn: Txn) -> list[ReflogEntry]:
            out: list[ReflogEntry] = []
            cur = txn.cursor(db=self._env.reflog)
            if not cur.set_range(prefix):
                return out
            for key, value in cur:
                key = bytes(key)
                if not key.startswith(prefix):
                    break
                old, new, when, who, msg = codec.unpack(value)
                out.append(
                    ReflogEntry(
                        key[:-9].decode(),
                        ObjectId(old) if old else None,
                        ObjectId(new) if new else None,
                        when,
                        who,
                        msg,
                    )
                )
            return out

        return self._env.read(go)

    def expire_log(self, before: float) -> int:
        """Drop reflog entries older than ``before`` (epoch seconds). Returns the count."""

        def go(txn: Txn) -> int:
            cur = txn.cursor(db=self._env.reflog)
            doomed = [bytes(k) for k, v in cur if codec.unpack(v)[2] < before]
            for k in doomed:
                txn.delete(k, db=self._env.reflog)
            return len(doomed)

        return self._env.write(go)


def _show(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, ObjectId):
        return value.short()
    return "any"
