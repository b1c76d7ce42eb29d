"""A remote over another store on this machine (a path), e.g. a shared disk or a test.

Uploads go through the pack stream like every other transport: each batch is encoded,
decoded (which hashes every object) and stored in one transaction, so the path remote
exercises the same verify-then-store boundary as HTTP and S3 and counts real wire bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from cas import ingest, pack
from cas.digest import ObjectId
from cas.errors import ObjectNotFound, RemoteError, StoreNotFound
from cas.refs import check_name
from cas.remote.base import Expect, Progress, WireObject
from cas.store import Store

#: Objects per get_many when serving a fetch (bounds memory per read transaction).
_FETCH_GROUP = 512


class LocalRemote:
    """A :class:`~cas.remote.base.Remote` backed by a store at a local path."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = False) -> None:
        self.url = str(path)
        self._commits = ingest.Commits()  # packs sent from several threads
        try:
            self._store = Store(path, create=create)
        except StoreNotFound as exc:
            raise RemoteError(
                f"no cas store at {path}",
                hint="create it with `cas init PATH`, or check the remote's url",
                url=self.url,
            ) from exc

    @property
    def store(self) -> Store:
        """The store behind this remote (tests inspect it)."""
        return self._store

    def list_refs(self, prefix: str = "refs/") -> dict[str, ObjectId]:
        return self._store.refs.as_dict(prefix)

    def missing(self, oids: Sequence[ObjectId]) -> list[ObjectId]:
        return self._store.objects.missing(oids)

    def send_pack(self, objects: Iterable[WireObject], progress: Progress | None = None) -> int:
        sent = count = 0
        for batch in pack.batches(objects):
            sent += self.send_pack_bytes(pack.encode_bytes(batch))
            count += len(batch)
            if progress:
                progress(count, sent)
        return sent

    def send_pack_bytes(self, data: bytes) -> int:
        """Verify one whole pack and store it, or store nothing: :func:`cas.ingest.receive`,
        the same checks, bounded memory and group commit as `cas serve`."""
        ingest.receive(self._store, data, self._commits)
        return len(data)

    def fetch(
        self, oids: Sequence[ObjectId], progress: Progress | None = None, expect: Expect | None = None
    ) -> list[WireObject]:
        out: list[WireObject] = []
        size = 0
        for i in range(0, len(oids), _FETCH_GROUP):
            group = oids[i : i + _FETCH_GROUP]
            if expect:  # types and sizes from the record headers, before any content
                for oid, rec in self._store.objects.records(o for o in group if o in expect).items():
                    pack.check_expected(oid, rec.type, rec.raw_size, expect[oid], self.url)
            got = self._store.objects.get_many(group)
            for oid, (otype, body) in got.items():
                out.append((oid, otype, body))
                size += len(body)
            if progress:
                progress(len(out), size)
        return out

    def update_ref(self, name: str, new: ObjectId | None, expected: ObjectId | None) -> None:
        check_name(name)
        if new is not None and not self._store.objects.has(new):
            raise ObjectNotFound(
                f"cannot point {name} at {new.short()}: the remote does not hold it",
                hint="send the objects before moving the ref",
                oid=new,
            )
        self._store.refs.set(name, new, expected=expected, who="remote", message="push")

    def close(self) -> None:
        self._store.close()

    def __repr__(self) -> str:
        return f"LocalRemote({self.url!r})"


