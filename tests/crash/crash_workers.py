"""Processes the crash and concurrency tests start (by exec or the "forkserver" context of
:func:`context`, never a plain fork: py-lmdb forbids using an environment across fork).

``writer`` writes snapshots forever (blobs, a manifest node, a commit, a compare-and-swap
of a ref, now and then a gc, every other one of them with a byte budget that evicts
blobs, after noting reads) until it is killed; it signals ``ready`` once its store is
open (run as a script, ``python crash_workers.py writer STORE SEED``, it prints ``ready``).
"""

from __future__ import annotations

import os
import random
import sys
import time
from multiprocessing.context import BaseContext
from multiprocessing.synchronize import Event
from typing import Any

from cas.budget import Budget
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import BudgetTooSmall, RefConflict
from cas.gc import gc
from cas.objects import Commit, Entry, EntryKey, Env, ManifestNode
from cas.store import CHUNK_SIZE, Store

BRANCH = "refs/heads/main"


def snapshot(store: Store, rnd: random.Random, parent: ObjectId | None, message: str) -> ObjectId:
    """Write a small snapshot bottom-up (blobs, env, node, commit); return the commit id."""
    sizes = [rnd.choice([100, 1000, 30_000, 200_000]) for _ in range(rnd.randint(1, 6))]
    if rnd.random() < 0.1:
        sizes.append(CHUNK_SIZE + rnd.randint(1, 1 << 20))  # a chunked blob now and then
    blobs = [rnd.randbytes(n) if rnd.random() < 0.5 else bytes([rnd.randint(0, 9)]) * n for n in sizes]
    ids = store.objects.write([(ObjType.BLOB, b) for b in blobs])
    env = store.objects.put_object(Env({"device": "cpu", "writer": str(os.getpid())}))
    rows = sorted(
        (EntryKey(env, "inductor", f"{message}-{i}"), Entry(oid, len(b)))
        for i, (oid, b) in enumerate(zip(ids, blobs, strict=True))
    )
    node = store.objects.put_object(ManifestNode(0, len(rows), entries=tuple(rows)))
    parents = (parent,) if parent else ()
    return store.objects.put_object(Commit(node, parents, "crash-writer", int(time.time()), message))


def context() -> BaseContext:
    """Processes forked from one server process that imported this module and opened no
    store: each starts in milliseconds, where a spawned one first imports cas for ~0.1 s of
    CPU (the crash test starts 50)."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def writer(path: str, seed: int, ready: Event | None = None) -> None:
    rnd = random.Random(seed)
    store = Store.init(path)
    if ready is None:
        print("ready", flush=True)  # run as a script (bench/bench_laws.py)
    else:
        ready.set()
    n = 0
    while True:
        n += 1
        branch = BRANCH if rnd.random() < 0.7 else f"refs/heads/side{rnd.randint(0, 3)}"
        tip = store.refs.get(branch)
        commit = snapshot(store, rnd, tip, f"{seed}-{n}")
        store.refs.set(branch, commit, expected=tip, message="crash writer")
        if n % 7 == 0:
            store.refs.set(f"refs/heads/side{rnd.randint(0, 3)}", None)  # leave garbage
        if n % 5 == 0:
            collect(store, n, commit)


def collect(store: Store, n: int, tip: ObjectId) -> None:
    """A plain gc, or (every other time) a budget gc of 8 MiB keeping 2 commits a branch,
    after noting reads of the newest commit; grace 0: one process, nothing races it."""
    if n % 10:
        gc(store, grace_seconds=0)
        return
    store.maintenance.note_reads([tip])
    store.maintenance.flush_reads()
    try:
        gc(store, grace_seconds=0, budget=Budget(8 << 20, keep_commits=2))
    except BudgetTooSmall:
        pass  # the kept snapshots alone exceed it now: nothing deleted, next time


def committer(path: str, worker: int, count: int, out: Any) -> None:
    """Append ``count`` commits to BRANCH, racing the other committers; report retries."""
    store = Store(path)
    root = store.objects.put_object(ManifestNode(0, 0))
    retries = 0
    for i in range(count):
        while True:
            tip = store.refs.get(BRANCH)
            c = Commit(root, (tip,) if tip else (), f"w{worker}", int(time.time()), f"{worker}-{i}")
            cid = store.objects.put_object(c)
            try:
                store.refs.set(BRANCH, cid, expected=tip)
                break
            except RefConflict:
                retries += 1
    store.close()
    out.put(retries)


def grower(path: str, megabytes: int, started: Event) -> None:
    """Write ``megabytes`` of incompressible blobs in batches, growing the map."""
    store = Store(path)
    started.wait()
    rnd = random.Random(7)
    for _ in range(megabytes // 8):
        store.objects.write([(ObjType.BLOB, rnd.randbytes(1 << 20)) for _ in range(8)])
    store.close()


def reader(path: str, ids: list[bytes], started: Event, done: Event, out: Any) -> None:
    """Read and verify known objects until ``done``; report (reads, errors)."""
    store = Store(path)
    started.set()
    reads, errors = 0, []
    oids = [ObjectId(i) for i in ids]
    while not done.is_set() or reads < 50:
        for oid in oids:
            try:
                got = store.objects.get(oid)
                if got is None or ObjectId.of(got) != oid:
                    errors.append(f"bad read of {oid.short()}")
            except Exception as exc:  # any error at all is a failure of the test
                errors.append(f"{type(exc).__name__}: {exc}")
            reads += 1
        store.info()  # begins read txns too, across the resizes
    store.close()
    out.put((reads, errors[:5]))




def fill(path: str, early_hex: str) -> None:
    """Write incompressible batches until the store refuses; print what happened as JSON."""
    import json

    from cas.errors import CasError

    store = Store(path)
    rnd = random.Random(3)
    written = 0
    try:
        for _ in range(1000):
            store.objects.write([(ObjType.BLOB, rnd.randbytes(256 << 10)) for _ in range(4)])
            written += 1
        result: dict[str, Any] = {"error": None}
    except CasError as exc:
        result = {"error": type(exc).__name__, "message": str(exc), "exit_code": exc.exit_code}
    early = store.objects.get(ObjectId.parse(early_hex))
    result.update(batches=written, early_ok=early is not None and ObjectId.of(early).hex == early_hex)
    print(json.dumps(result), flush=True)


def check(path: str) -> None:
    """Open the store afresh and print whether fsck is clean (for a parent process)."""
    from cas.fsck import fsck

    with Store(path) as store:
        report = fsck(store)
        print("clean" if report.ok else [str(f) for f in report.errors], flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "writer":
        writer(sys.argv[2], int(sys.argv[3]))
    elif sys.argv[1] == "fill":
        fill(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "check":
        check(sys.argv[2])
