"""A size-bounded store behind `cas serve`: HTTP fetches and Redis GETs count as reads,
the saved budget is applied as the store is written, and a budget gc at scale (10^5
entries, half the store) runs beside concurrent Redis writes and leaves fsck clean and
every tagged entry readable."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from servers import CasServer

from cas import budget as budgets
from cas import history, manifest
from cas.budget import Budget
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.fsck import fsck
from cas.gc import gc
from cas.objects import Entry, EntryKey
from cas.refs import create_tag, load_commit, resolve
from cas.server.auth import Scope, add_token
from cas.server.web import COOKIE
from cas.stats import stats
from cas.store import Store
from server.rediskit import ENV_A, FX_KEY, Door, wait_until, wire

DAY = 86400


def old_history(path: Path, commits: int, per_commit: int, size: int) -> tuple[list[list[ObjectId]], str]:
    """A store written a month ago: ``main`` with ``commits`` commits of ``per_commit``
    entries of env A (same keys, new bytes each time), the first tagged ``release/1``, the
    last also holding the door's FX key. Returns each commit's blobs and a write token."""
    month_ago = time.time() - 30 * DAY
    out: list[list[ObjectId]] = []
    with Store.init(path, durable=False, clock=lambda: month_ago) as s:
        token = add_token("w", Scope.WRITE, store=s)
        s.objects.put_object(ENV_A)
        tip: ObjectId | None = None
        for i in range(commits):
            blobs = s.objects.write((ObjType.BLOB, os.urandom(16) + bytes(size - 16)) for _ in range(per_commit))
            entries = {EntryKey(ENV_A.id, "inductor", f"g{j}"): Entry(b, size) for j, b in enumerate(blobs)}
            if i == commits - 1:
                fx = s.objects.put(b"graph for A")
                entries[EntryKey(ENV_A.id, "inductor", "fgraphkey")] = Entry(fx, 11)
            tip = history.commit(s, manifest.build(s, entries), [tip] if tip else [], f"c{i}", when=i)
            s.refs.set("refs/heads/main", tip, expected=s.refs.get("refs/heads/main"))
            if i == 0:
                create_tag(s, "release/1", tip, message="pin")
            out.append(blobs)
    return out, token


def serve(tmp_path: Path, *args: str) -> Door:
    path = tmp_path / "store"
    server = CasServer(path, tmp_path, "--redis-port", "0", "--redis-env", ENV_A.id.hex[:12],
                       "--redis-flush-every", "0.2", *args)
    assert server.redis_port is not None
    return Door(server, server.redis_port, path, "", "")


def until(what: str, cond: Callable[[], bool]) -> None:
    """Wait for ``cond`` (a gc, a commit): rediskit.wait_until's barrier."""
    wait_until(lambda: cond() or None, f"showed {what}")


def test_served_store_counts_reads_and_keeps_to_its_saved_budget(tmp_path: Path) -> None:
    path = tmp_path / "store"
    blobs, token = old_history(path, commits=5, per_commit=10, size=1000)  # c1-c3 may go
    with Store(path) as s:
        size = stats(s).stored_bytes
        budget = size - 15 * 1000
        budgets.save(s, Budget(budget, keep_commits=1, grace_seconds=3600))
    with serve(tmp_path, "--gc-every", "0.2") as door:
        body = b"".join(o.raw for o in blobs[1])  # c1's entries are still fetched by someone
        got = httpx.post(f"{door.server.url}/v1/fetch", content=body, headers={"Authorization": f"Bearer {token}"})
        assert got.status_code == 200
        client = door.client(token)
        assert client.get(FX_KEY) is not None
        client.set("pt2:fx-graph-v1::newgraph:c1", wire(b"new graph"))  # a write: the keeper checks

        def evicted() -> bool:
            with Store(path) as s:
                return len(s.maintenance.evicted_ids()) >= 15

        until("a budget gc", evicted)
        page = httpx.get(f"{door.server.url}/ui/", cookies={COOKIE: token}).text
        assert "Size budget" in page and "last budget gc evicted" in page
    with Store(path) as s:
        assert stats(s).stored_bytes <= budget
        reads = s.maintenance.read_times()
        assert all(o in reads for o in blobs[1])  # the HTTP fetch counted
        fx = [e.blob for k, e in manifest.entries(s, load_commit(s, resolve(s, "main")).manifest)
              if k.key == "fgraphkey"]
        assert fx and fx[0] in reads  # the Redis GET counted
        assert sum(s.objects.has(o) for o in blobs[1]) == 10  # read recently: kept
        assert sum(s.objects.has(o) for o in blobs[0]) == 10  # tagged: kept
        assert sum(s.objects.has(o) for o in blobs[2] + blobs[3]) <= 5  # never read: evicted first
        assert fsck(s).ok


def _write_until(door: Door, token: str, stop: threading.Event, written: list[str]) -> None:
    """SET new keys, about 50 a second (paced, so that the client does not take the CPU
    the gc needs), until ``stop`` and at least 50 in all."""
    client = door.client(token)
    i = 0
    while not stop.wait(0.02) or i < 50:
        key = f"pt2:fx-graph-v1::live{i}:c1"
        client.set(key, wire(f"live graph {i}".encode()))
        written.append(key)
        i += 1


def test_budget_gc_at_scale_beside_concurrent_redis_writes(tmp_path: Path) -> None:
    path = tmp_path / "store"
    blobs, token = old_history(path, commits=10, per_commit=10_000, size=400)  # 10^5 entries
    stop, written = threading.Event(), list[str]()
    with serve(tmp_path, "--redis-flush-every", "1") as door:
        writer = threading.Thread(target=_write_until, args=(door, token, stop, written))
        writer.start()
        until("the first Redis writes", lambda: len(written) >= 50)
        with Store(path) as s:
            half = stats(s).stored_bytes // 2
            report = gc(s, grace_seconds=3600, budget=Budget(half, keep_commits=2))
        stop.set()
        writer.join()
        until("the last Redis commit", lambda: _holds(path, written[-1]))
    assert report.evicted > 50_000 and report.size_after is not None and report.size_after <= half
    with Store(path) as s:
        check = fsck(s)
        assert check.ok, check.errors[:3]
        assert check.evicted == report.evicted
        tagged = load_commit(s, resolve(s, "release/1")).manifest
        n = 0
        for _, entry in manifest.entries(s, tagged):  # every tagged entry still reads whole
            data = s.objects.get(entry.blob)
            assert data is not None and ObjectId.of(data) == entry.blob
            n += 1
        assert n == 10_000
        assert all(s.objects.has(o) for o in blobs[-1])  # the last commit before the writes: kept


def _holds(path: Path, key: str) -> bool:
    name = key.split("::")[1].rsplit(":", 1)[0]
    with Store(path) as s:
        root = load_commit(s, resolve(s, "main")).manifest
        return manifest.lookup(s, root, EntryKey(ENV_A.id, "inductor", name)) is not None

