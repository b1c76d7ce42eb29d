"""Load: 32 concurrent clients against one loopback `cas serve`, for a bounded time.

Each client is a thread with its own store and its own HTTP connection. Until the
deadline it loops over three operations, picked at random:

* push: commit one new entry (a random 1-64 KiB blob) on its own branch and push it
  (`cas.sync.transfer.push`: missing, pack, ref compare-and-swap);
* fetch: fetch 1-8 objects it pushed before and check their bytes hash to their ids;
* race: compare-and-swap the one ref every client fights over (``refs/heads/race``) from
  the value it last read to one of its commits; losing (409) is a correct answer. No
  update may be lost: the server's reflog of the ref must be one chain holding every
  win that changed it, ending at the ref's final value.

It stops by itself and reports operations per second, p50/p99 latency per operation,
errors (anything but a won or lost race; goal 0), lost or corrupt objects (goal 0:
``cas fsck`` on the server's store, then every pushed commit and blob read back over
HTTP and hashed) and the server's peak resident memory (VmHWM).

Run: ``CAS_LOAD_SECONDS=30 CAS_LOAD_CLIENTS=32 .venv/bin/python bench/bench_load.py``
(prints JSON). Under pytest (``make bench``) it runs 10 s and asserts the goals.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bombs import peak_rss  # noqa: E402
from servers import Served  # noqa: E402

from cas import history  # noqa: E402
from cas.digest import ObjectId  # noqa: E402
from cas.errors import RefConflict  # noqa: E402
from cas.fsck import fsck  # noqa: E402
from cas.objects import Entry, EntryKey, Env  # noqa: E402
from cas.remote.http import HttpRemote  # noqa: E402
from cas.store import Store  # noqa: E402
from cas.sync import transfer  # noqa: E402

RACE = "refs/heads/race"


class Client(threading.Thread):
    def __init__(self, i: int, served: Served, workdir: Path, deadline: float) -> None:
        super().__init__(name=f"load-{i}")
        self.i, self.deadline = i, deadline
        self.store = Store.init(workdir / f"client-{i}")
        self.env = self.store.put_object(Env({"device": "cpu", "client": str(i)}))
        self.remote = HttpRemote(served.url, token=served.write_token, compress_level=None)
        self.rng = random.Random(i)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.pushed: list[ObjectId] = []  # commits and blobs the server acknowledged
        self.won: list[tuple[ObjectId | None, ObjectId]] = []  # (expected, new) of each win
        self.lost = 0
        self.n = 0

    def push(self) -> None:
        blob = self.store.put(os.urandom(self.rng.randint(1, 64) << 10))
        key = EntryKey(self.env, "inductor", f"c{self.i}-{self.n}")
        commit = history.commit_changes(self.store, "main", {key: Entry(blob, 0)}, f"load {self.n}")
        transfer.push(self.store, self.remote, [("refs/heads/main", f"refs/heads/c{self.i}")])
        self.pushed += [commit, blob]

    def fetch(self) -> None:
        want = self.rng.sample(self.pushed, min(len(self.pushed), self.rng.randint(1, 8)))
        got = self.remote.fetch(want)
        if sorted(o for o, _, _ in got) != sorted(want) or any(ObjectId.of(d) != o for o, _, d in got):
            self.errors.append("fetch: wrong or missing objects")

    def race(self) -> None:
        commits = self.pushed[::2]
        current = self.remote.list_refs("refs/heads/race").get(RACE)
        new = self.rng.choice(commits)
        try:
            self.remote.update_ref(RACE, new, current)
            self.won.append((current, new))
        except RefConflict:
            self.lost += 1

    def run(self) -> None:
        try:
            self.push()
            while time.monotonic() < self.deadline:
                op = self.rng.choice(("push", "fetch", "fetch", "race"))
                start = time.perf_counter()
                try:
                    getattr(self, op)()
                except Exception as exc:  # every unexpected failure counts, none stops the run
                    self.errors.append(f"{op}: {type(exc).__name__}: {exc}"[:200])
                self.latency[op].append(time.perf_counter() - start)
                self.n += 1
        finally:
            self.remote.close()
            self.store.close()


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, int(p * len(xs)))], 1) if xs else 0.0


def run(seconds: float = 10.0, clients: int = 32) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cas-load-") as tmp:
        work = Path(tmp)
        served = Served(work)
        try:
            workers = [Client(i, served, work, 0.0) for i in range(clients)]
            start = time.monotonic()
            for w in workers:
                w.deadline = start + seconds
                w.start()
            for w in workers:
                w.join()
            elapsed = time.monotonic() - start
            latency: dict[str, list[float]] = defaultdict(list)
            for w in workers:
                for op, xs in w.latency.items():
                    latency[op] += xs
            ops = sum(len(xs) for xs in latency.values())
            errors = [e for w in workers for e in w.errors]
            pushed = {o for w in workers for o in w.pushed}
            lost, corrupt = _check(served, pushed)
            wins = [t for w in workers for t in w.won]
            chain_ok = _chain(served, [w for w in wins if w[0] != w[1]])
            return {
                "clients": clients,
                "seconds": round(elapsed, 1),
                "operations": ops,
                "ops_per_s": round(ops / elapsed, 1),
                "latency_ms": {op: {"n": len(xs), "p50": _pct(xs, 0.5), "p99": _pct(xs, 0.99)}
                               for op, xs in sorted(latency.items())},
                "races": {"won": len(wins), "lost": sum(w.lost for w in workers),
                          "no_lost_update": chain_ok},
                "errors": len(errors),
                "error_samples": errors[:5],
                "objects_pushed": len(pushed),
                "lost_objects": lost,
                "corrupt_objects": corrupt,
                "server_peak_rss_mib": round(peak_rss(served.server.proc.pid) / (1 << 20), 1),
            }
        finally:
            served.stop()


def _chain(served: Served, changes: list[tuple[ObjectId | None, ObjectId]]) -> bool:
    """True if the race ref's reflog is one chain of exactly the winning changes."""
    with Store(served.store_path) as store:
        log = store.reflog(RACE)
        final = store.get_ref(RACE)
    linked = all(a.new == b.old for a, b in zip(log, log[1:], strict=False))
    def key(c: tuple[ObjectId | None, ObjectId | None]) -> str:
        return "".join(o.hex if o else "-" for o in c)

    same = sorted(map(key, ((e.old, e.new) for e in log))) == sorted(map(key, changes))
    return linked and same and (log[-1].new if log else None) == final


def _check(served: Served, pushed: set[ObjectId]) -> tuple[int, int]:
    """(lost, corrupt): fsck of the server's store, then every pushed object read back."""
    with Store(served.store_path) as store:
        report = fsck(store)
        corrupt = len(report.errors)
    remote = HttpRemote(served.url, token=served.read_token)
    try:
        got = {o: d for o, _, d in remote.fetch(sorted(pushed))}
    finally:
        remote.close()
    corrupt += sum(1 for o, d in got.items() if ObjectId.of(d) != o)
    return len(pushed - got.keys()), corrupt


def test_load_bench(benchmark: Any) -> None:
    """pytest entry (``make bench``): 10 s with 32 clients; the goals are asserted."""
    out: dict[str, Any] = {}
    benchmark.pedantic(lambda: out.update(run(10.0, 32)), rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    assert out["errors"] == 0, out["error_samples"]
    assert out["lost_objects"] == 0 and out["corrupt_objects"] == 0
    assert out["races"]["won"] >= 1 and out["races"]["no_lost_update"]


if __name__ == "__main__":
    result = run(float(os.environ.get("CAS_LOAD_SECONDS", "30")), int(os.environ.get("CAS_LOAD_CLIENTS", "32")))
    print(json.dumps(result, indent=2))
