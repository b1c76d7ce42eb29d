"""Sync over the real transports: `cas serve` (HTTP) and SeaweedFS (S3) on 127.0.0.1.

Requests are counted by the server side (HTTP access log) or by botocore's own send
hook (S3), not by our wrappers, so "at most 2 requests" means requests on the wire.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cas import sync
from cas.errors import RefConflict, TransientRemoteError
from cas.remote.faults import CountingRemote, FaultyRemote
from cas.store import Store

from .conftest import Endpoint
from .helpers import add, assert_complete, entries_of, new_store

MAIN = [("refs/heads/main", "refs/heads/main")]


def test_push_clone_pull_and_nothing_new_is_two_requests(endpoint: Endpoint, tmp_path: Path) -> None:
    a, b = new_store(tmp_path / "a"), new_store(tmp_path / "b")
    ra, rb = endpoint.open(), endpoint.open()
    add(a, "one", 20, size=3000)
    sync.push(a, ra, MAIN, remote_name="origin")
    sync.clone(b, rb)
    tip = add(a, "two", 5, size=3000)
    sync.push(a, ra, MAIN, remote_name="origin")
    _, done = sync.pull(b, rb, branch="main", remote_name="origin")
    assert done.kind == "fast-forward" and done.new == tip
    assert entries_of(b, "main") == entries_of(a, "main")
    assert_complete(b)

    before = endpoint.requests()
    res = sync.push(a, ra, MAIN, remote_name="origin")
    assert res.updates[0].status == "up-to-date"
    assert 1 <= endpoint.requests() - before <= 2  # counted on the wire: list_refs
    before = endpoint.requests()
    _, done = sync.pull(b, rb, branch="main", remote_name="origin")
    assert done.kind == "up-to-date"
    assert 1 <= endpoint.requests() - before <= 2
    for r in (ra, rb):
        r.close()
    for s in (a, b):
        s.close()


def test_only_the_new_objects_travel(endpoint: Endpoint, tmp_path: Path) -> None:
    a = new_store(tmp_path / "a")
    remote = endpoint.open()
    add(a, "base", 2000, size=200)
    sync.push(a, remote, MAIN)
    before_ids = {r.oid for r in a.objects.iter_records()}
    add(a, "new", 10, size=5000, random_bytes=True)
    new = {r.oid for r in a.objects.iter_records()} - before_ids
    new_bytes = sum(len(a.objects.get(o) or b"") for o in new)
    counting = CountingRemote(remote)
    start = endpoint.requests()
    sync.push(a, counting, MAIN)
    assert set(counting.sent_ids) == new
    assert counting.sent_bytes <= 1.2 * new_bytes + 64 * 1024
    # list_refs, missing, one pack, the ref update (S3: a pack is data + index objects).
    assert 3 <= endpoint.requests() - start <= 8
    remote.close()
    a.close()


def test_concurrent_pushers_one_lands_the_other_must_pull(endpoint: Endpoint, tmp_path: Path) -> None:
    base = new_store(tmp_path / "base")
    add(base, "base")
    first = endpoint.open()
    sync.push(base, first, MAIN)
    stores: list[Store] = []
    for name in ("p1", "p2"):
        s = new_store(tmp_path / name)
        sync.clone(s, first)
        add(s, name, 3)
        stores.append(s)
    gate = threading.Barrier(2)

    class Racing(CountingRemote):
        def update_ref(self, name, new, expected):  # type: ignore[no-untyped-def]
            gate.wait(timeout=30)
            super().update_ref(name, new, expected)

    outcome: dict[int, object] = {}

    def run(i: int) -> None:
        r = endpoint.open()
        try:
            outcome[i] = sync.push(stores[i], Racing(r), MAIN)
        except RefConflict as exc:
            outcome[i] = exc
        finally:
            r.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lost = [i for i, o in outcome.items() if isinstance(o, RefConflict)]
    assert len(lost) == 1, outcome
    winner = stores[1 - lost[0]]
    assert first.list_refs()["refs/heads/main"] == winner.refs.get("refs/heads/main")
    loser = stores[lost[0]]
    _, done = sync.pull(loser, first, branch="main")
    assert done.kind == "merge"
    sync.push(loser, first, MAIN)
    check = new_store(tmp_path / "check")
    sync.clone(check, first)
    names = {k.key for k in entries_of(check, "main")}
    assert {"base-0", "p1-0", "p2-0"} <= names
    first.close()
    for s in (base, *stores, check):
        s.close()


def test_cut_push_resumes_without_resending(endpoint: Endpoint, tmp_path: Path) -> None:
    a = new_store(tmp_path / "a")
    add(a, "big", 20, size=1 << 20, random_bytes=True)  # ~3 packs
    remote = endpoint.open()
    with pytest.raises(TransientRemoteError):
        sync.push(a, FaultyRemote(remote, drop_after_packs=1), MAIN)
    local_ids = [r.oid for r in a.objects.iter_records()]
    arrived = set(local_ids) - set(remote.missing(local_ids))
    assert arrived and "refs/heads/main" not in remote.list_refs()
    counting = CountingRemote(remote)
    sync.push(a, counting, MAIN)
    assert not arrived & set(counting.sent_ids)
    b = new_store(tmp_path / "b")
    sync.pull(b, remote, branch="main")
    assert entries_of(b, "main") == entries_of(a, "main")
    assert_complete(b)
    remote.close()
    for s in (a, b):
        s.close()
