"""Invariant 4 across processes: racing committers lose no commit; readers keep working
while another process grows the map far past its initial size."""

from __future__ import annotations

import os
from pathlib import Path

import crash_workers as workers

from cas.codec import ObjType
from cas.fsck import fsck
from cas.objects import Commit
from cas.store import INITIAL_MAP_SIZE, Store

CTX = workers.context()  # never a plain fork: py-lmdb envs must not cross a fork


def test_eight_racing_committers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "store"
    Store.init(path).close()
    procs, per = 8, 12
    out = CTX.Queue()
    ps = [CTX.Process(target=workers.committer, args=(str(path), w, per, out)) for w in range(procs)]
    for p in ps:
        p.start()
    for _ in ps:
        out.get(timeout=120)
    for p in ps:
        p.join(timeout=30)
        assert p.exitcode == 0
    with Store(path) as store:
        messages = []
        tip = store.refs.get(workers.BRANCH)
        while tip is not None:
            c = Commit.decode(store.objects.require(tip)[1])
            messages.append(c.message)
            assert len(c.parents) <= 1  # a straight line: every update was a fast-forward
            tip = c.parents[0] if c.parents else None
        assert sorted(messages) == sorted(f"{w}-{i}" for w in range(procs) for i in range(per))
        # each worker's own commits are in its order
        for w in range(procs):
            mine = [m for m in reversed(messages) if m.startswith(f"{w}-")]
            assert mine == [f"{w}-{i}" for i in range(per)]
        # every successful update is in the reflog, once
        assert len(store.refs.log(workers.BRANCH)) == procs * per
        assert fsck(store).ok


def test_readers_survive_map_growth_in_another_process(tmp_path: Path) -> None:
    path = tmp_path / "store"
    with Store.init(path) as store:
        ids = store.objects.write([(ObjType.BLOB, os.urandom(n)) for n in (10, 5000, 200_000, 1 << 20)])
        assert store.info()["map_size"] == INITIAL_MAP_SIZE
    megabytes = 3 * (INITIAL_MAP_SIZE >> 20)
    started, done = CTX.Event(), CTX.Event()
    out = CTX.Queue()
    raw = [i.raw for i in ids]
    readers = [CTX.Process(target=workers.reader, args=(str(path), raw, started, done, out)) for _ in range(3)]
    for r in readers:
        r.start()
    grower = CTX.Process(target=workers.grower, args=(str(path), megabytes, started))
    grower.start()
    grower.join(timeout=300)
    done.set()
    results = [out.get(timeout=60) for _ in readers]
    for r in readers:
        r.join(timeout=30)
    assert grower.exitcode == 0
    for reads, errors in results:
        assert errors == [] and reads >= 50
    with Store(path) as store:
        info = store.info()
        # (a fresh open maps just what the file holds, so check the data, not the map)
        assert info["used_bytes"] > 3 * INITIAL_MAP_SIZE - (4 << 20)
        assert info["objects"] == len(ids) + megabytes
        assert all(store.objects.get(i, verify=True) is not None for i in ids)
