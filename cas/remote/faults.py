"""Test instruments that wrap any Remote: fault injection and request counting.

They are fakes only for faults (tests use real parts and fake nothing else): the remote
underneath is real. Sync code does not know it is wrapped, so tests can cut a transfer
after N packs, corrupt what comes back, or count requests, objects and bytes on any
transport.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from cas import pack
from cas.digest import ObjectId
from cas.errors import TransientRemoteError
from cas.remote.base import Expect, Progress, Remote, WireObject


class FaultyRemote:
    """Drop the "connection" after some packs or fetches, or corrupt fetched bytes.

    ``drop_after_packs=N`` lets N packs through, then fails the next one with a
    TransientRemoteError, ``times`` times in all (then behaves). ``drop_after_fetches``
    does the same for fetch calls. ``corrupt_fetch`` flips a byte of every fetched
    object, to prove the receiver verifies.
    """

    def __init__(
        self,
        inner: Remote,
        *,
        drop_after_packs: int | None = None,
        drop_after_fetches: int | None = None,
        times: int = 1,
        corrupt_fetch: bool = False,
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.drop_after_packs = drop_after_packs
        self.drop_after_fetches = drop_after_fetches
        self.times = times
        self.corrupt_fetch = corrupt_fetch
        self.packs = 0
        self.fetches = 0
        self.drops = 0

    def _drop(self, what: str) -> None:
        self.drops += 1
        raise TransientRemoteError(f"connection to {self.url} dropped ({what}, injected)")

    def list_refs(self, prefix: str = "refs/") -> dict[str, ObjectId]:
        return self.inner.list_refs(prefix)

    def missing(self, oids: Sequence[ObjectId]) -> list[ObjectId]:
        return self.inner.missing(oids)

    def send_pack(self, objects: Iterable[WireObject], progress: Progress | None = None) -> int:
        sent = 0
        for batch in pack.batches(objects):
            limit = self.drop_after_packs
            if limit is not None and self.packs >= limit and self.drops < self.times:
                self._drop(f"after {self.packs} packs")
            sent += self.inner.send_pack(batch, progress)
            self.packs += 1
        return sent

    def send_pack_bytes(self, data: bytes) -> int:
        return self.inner.send_pack_bytes(data)  # type: ignore[attr-defined,no-any-return]

    def fetch(
        self, oids: Sequence[ObjectId], progress: Progress | None = None, expect: Expect | None = None
    ) -> list[WireObject]:
        limit = self.drop_after_fetches
        if limit is not None and self.fetches >= limit and self.drops < self.times:
            self._drop(f"after {self.fetches} fetches")
        self.fetches += 1
        got = self.inner.fetch(oids, progress, expect)
        if self.corrupt_fetch:
            got = [(oid, t, _flip(data)) for oid, t, data in got]
        return got

    def update_ref(self, name: str, new: ObjectId | None, expected: ObjectId | None) -> None:
        self.inner.update_ref(name, new, expected)

    def close(self) -> None:
        self.inner.close()


class CountingRemote:
    """Count requests (one per call), and objects and raw bytes in each direction."""

    def __init__(self, inner: Remote) -> None:
        self.inner = inner
        self.url = inner.url
        self.calls: Counter[str] = Counter()
        self.sent_objects = 0
        self.sent_bytes = 0
        self.sent_ids: list[ObjectId] = []
        self.fetched_objects = 0
        self.fetched_bytes = 0

    @property
    def requests(self) -> int:
        return sum(self.calls.values())

    def list_refs(self, prefix: str = "refs/") -> dict[str, ObjectId]:
        self.calls["list_refs"] += 1
        return self.inner.list_refs(prefix)

    def missing(self, oids: Sequence[ObjectId]) -> list[ObjectId]:
        self.calls["missing"] += 1
        return self.inner.missing(oids)

    def send_pack(self, objects: Iterable[WireObject], progress: Progress | None = None) -> int:
        self.calls["send_pack"] += 1
        todo = list(objects)
        self.sent_objects += len(todo)
        self.sent_bytes += sum(len(o[2]) for o in todo)
        self.sent_ids += [o[0] for o in todo]
        return self.inner.send_pack(todo, progress)

    def send_pack_bytes(self, data: bytes) -> int:
        self.calls["send_pack"] += 1
        return self.inner.send_pack_bytes(data)  # type: ignore[attr-defined,no-any-return]

    def fetch(
        self, oids: Sequence[ObjectId], progress: Progress | None = None, expect: Expect | None = None
    ) -> list[WireObject]:
        self.calls["fetch"] += 1
        got = self.inner.fetch(oids, progress, expect)
        self.fetched_objects += len(got)
        self.fetched_bytes += sum(len(o[2]) for o in got)
        return got

    def update_ref(self, name: str, new: ObjectId | None, expected: ObjectId | None) -> None:
        self.calls["update_ref"] += 1
        self.inner.update_ref(name, new, expected)

    def close(self) -> None:
        self.inner.close()


def _flip(data: bytes) -> bytes:
    if not data:
        return b"\x00"
    return bytes([data[0] ^ 0xFF]) + data[1:]
