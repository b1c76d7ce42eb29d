"""Time figures that used to be assertions inside tests/, as same-run ratios.

tests/ keeps the structural laws (objects and bytes sent, requests, node reads); the times
that go with them live here, each against a baseline measured in the same run:

* push of 50 new entries onto a remote holding 100,000, against the same push onto an
  empty remote (was "took < 10 s" in tests/sync/test_transfer_figures.py). A ratio near
  1 says the push costs what the change costs, not what the remote holds.
* open + fsck of a store right after its writer was killed with SIGKILL, against open +
  fsck of the same store after a clean close (was the "50 kills in < 120 s" budget in
  tests/crash/test_crash_kill.py). A ratio near 1 says recovery costs nothing extra.

(The 10^6-entry manifest build and lookup figures are in bench_manifest.py.)
Run: .venv/bin/pytest bench/bench_laws.py --benchmark-only
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cas import history, manifest, sync
from cas.codec import ObjType
from cas.fsck import fsck
from cas.objects import Entry, EntryKey, Env
from cas.refs import load_commit
from cas.remote.local import LocalRemote
from cas.store import Store

ROOT = Path(__file__).resolve().parent.parent
BIG, K = 100_000, 50
MAIN = [("refs/heads/main", "refs/heads/main")]
ENV = Env({"device": "cpu", "bench": "laws"})


def _commit(store: Store, names: range, parents: list, prefix: str) -> object:
    env = store.objects.put_object(ENV)
    data = [b"%s artifact %d" % (prefix.encode(), i) for i in names]
    blobs = store.objects.write((ObjType.BLOB, d) for d in data)
    entries = {EntryKey(env, "inductor", f"{prefix}{i}"): Entry(b, len(d))
               for i, b, d in zip(names, blobs, data, strict=True)}
    root = (manifest.update(store, load_commit(store, parents[0]).manifest, entries) if parents
            else manifest.build(store, entries))
    tip = history.commit(store, root, parents, prefix)
    store.refs.set("refs/heads/main", tip, expected=parents[0] if parents else None)
    return tip


@pytest.fixture(scope="module")
def big_remote(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose main holds 100,000 entries (copied per round)."""
    path = tmp_path_factory.mktemp("big") / "store"
    with Store.init(path, durable=False) as s:
        _commit(s, range(BIG), [], "k")
    return path


def _push_rounds(tmp_path: Path, base: Path | None) -> Iterator[tuple[Store, LocalRemote]]:
    for i in itertools.count():
        local, remote = tmp_path / f"local{i}", tmp_path / f"remote{i}"
        if base is not None:
            shutil.copytree(base, local)
            shutil.copytree(base, remote)
        store = Store.init(local)
        tip = store.refs.get("refs/heads/main")
        _commit(store, range(K), [tip] if tip else [], "new")
        yield store, LocalRemote(Store.init(remote).path)


@pytest.mark.parametrize("onto", ["empty", "100k"])
def test_push_50_entries(benchmark, big_remote, tmp_path, onto: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = f"push {K} new entries"
    rounds = _push_rounds(tmp_path, big_remote if onto == "100k" else None)
    benchmark.pedantic(lambda store, remote: sync.push(store, remote, MAIN),
                       setup=lambda: (next(rounds), {}), rounds=5, iterations=1)


@pytest.fixture(scope="module")
def killed_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose writer (tests/crash/crash_workers.py) was SIGKILLed mid-work."""
    path = tmp_path_factory.mktemp("killed") / "store"
    worker = ROOT / "tests" / "crash" / "crash_workers.py"
    proc = subprocess.Popen([sys.executable, str(worker), "writer", str(path), "1"],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    while not (path / "data.mdb").exists() or (path / "data.mdb").stat().st_size < (8 << 20):
        time.sleep(0.05)  # let it write a few MiB
    proc.kill()
    proc.wait()
    return path


@pytest.mark.parametrize("after", ["clean close", "sigkill"])
def test_open_and_fsck(benchmark, killed_store, tmp_path, after: str) -> None:  # type: ignore[no-untyped-def]
    benchmark.group = "open + fsck"
    copies = itertools.count()

    def setup() -> tuple[tuple[Path], dict]:
        path = tmp_path / f"copy{next(copies)}"
        shutil.copytree(killed_store, path)
        if after == "clean close":
            Store(path).close()
        return (path,), {}

    def check(path: Path) -> None:
        with Store(path) as store:
            assert fsck(store).ok

    benchmark.pedantic(check, setup=setup, rounds=5, iterations=1)
