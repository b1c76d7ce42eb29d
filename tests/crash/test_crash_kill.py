"""Invariant 5: a writer killed with SIGKILL at any instant leaves a store that opens,
passes fsck, and whose refs all point at complete commits."""

from __future__ import annotations

import random
import time
from pathlib import Path

import crash_workers as workers

from cas.fsck import fsck
from cas.objects import Commit
from cas.store import Store

KILLS = 50
CTX = workers.context()


def test_sigkill_at_random_moments_never_breaks_the_store(tmp_path: Path) -> None:
    path = tmp_path / "store"
    rnd = random.Random(1234)
    commits_seen = 0
    for i in range(KILLS):
        ready = CTX.Event()
        proc = CTX.Process(target=workers.writer, args=(str(path), i, ready))
        proc.start()
        try:
            assert ready.wait(60), f"writer {i} never opened the store (exit code {proc.exitcode})"
            time.sleep(rnd.uniform(0.0, 0.25))
            assert proc.is_alive(), f"writer died on its own (exit code {proc.exitcode})"
        finally:
            proc.kill()  # SIGKILL: no handler, no cleanup, no LMDB abort
            proc.join()
        with Store(path) as store:
            report = fsck(store)
            assert report.ok, f"after kill {i}: {[str(f) for f in report.errors]}"
            for name, target in store.refs.as_dict("").items():
                kind, data = store.objects.require(target)
                assert Commit.decode(data).manifest is not None, name
            tip = store.refs.get("refs/heads/main")
            commits_seen = max(commits_seen, _depth(store, tip))
    # the kills really interrupted work in progress, not idle processes
    assert commits_seen > KILLS // 2


def _depth(store: Store, tip: object) -> int:
    n = 0
    while tip is not None:
        n += 1
        commit = Commit.decode(store.objects.require(tip)[1])  # type: ignore[arg-type]
        tip = commit.parents[0] if commit.parents else None
    return n
