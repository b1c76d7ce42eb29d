"""Load: 32 HTTP clients and 32 Redis clients against one loopback `cas serve` (both
doors, one event loop), for a bounded time.

Each client is a thread with its own store and its own HTTP connection. Until the
deadline it loops over three operations, picked at random:

* push: commit one new entry (a random 1-64 KiB blob) on its own branch and push it
  (`cas.sync.transfer.push`: missing, pack, ref compare-and-swap);
* fetch: fetch 1-8 objects it pushed before and check their bytes hash to their ids;
* race: compare-and-swap the one ref every client fights over (``refs/heads/race``) from
  the value it last read to one of its commits; losing (409) is a correct answer. No
  update may be lost: the server's reflog of the ref must be one chain holding every
  win that changed it, ending at the ref's final value.

Beside them, each Redis client (redis-py, a write token, as torch's client connects)
loops over: SET a Triton key with a random 1-64 KiB value; GET one of its keys back and
check the bytes; MGET 1-8 of them. A prober asks ``/v1/health`` every 50 ms throughout:
its latency is what a load balancer sees while both doors are busy.

It stops by itself and reports operations per second, p50/p99 latency per operation (and
per Redis command), health latency (p50/p99/max, and failures), errors (anything but a
won or lost race; goal 0), the server's CPU seconds, lost or corrupt objects (goal 0: ``cas fsck`` on the server's
store, then every pushed commit and blob read back over HTTP and hashed) and the
server's peak resident memory (VmHWM).

Run: ``CAS_LOAD_SECONDS=30 CAS_LOAD_CLIENTS=32 CAS_LOAD_REDIS_CLIENTS=32 .venv/bin/python
bench/bench_load.py`` (prints JSON). Under pytest (``make bench``) it runs 10 s and
asserts the goals.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import redis

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
#: The env the Redis door serves (the server's store holds it before it starts).
REDIS_ENV = Env({"device": "cpu", "client": "redis-load"})


def drive(client: Any, ops: tuple[str, ...]) -> None:
    """Run random ``ops`` (method names of ``client``) until its deadline, timing each;
    every unexpected failure counts in ``client.errors``, none stops the run."""
    while time.monotonic() < client.deadline:
        op = client.rng.choice(ops)
        start = time.perf_counter()
        try:
            getattr(client, op)()
        except Exception as exc:
            client.errors.append(f"{op}: {type(exc).__name__}: {exc}"[:200])
        client.latency[op].append(time.perf_counter() - start)
        client.n += 1


class Client(threading.Thread):
    def __init__(self, i: int, served: Served, workdir: Path, deadline: float) -> None:
        super().__init__(name=f"load-{i}")
        self.i, self.deadline = i, deadline
        self.store = Store.init(workdir / f"client-{i}")
        self.env = self.store.objects.put_object(Env({"device": "cpu", "client": str(i)}))
        self.remote = HttpRemote(served.url, token=served.write_token, compress_level=None)
        self.rng = random.Random(i)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.pushed: list[ObjectId] = []  # commits and blobs the server acknowledged
        self.won: list[tuple[ObjectId | None, ObjectId]] = []  # (expected, new) of each win
        self.lost = 0
        self.n = 0

    def push(self) -> None:
        blob = self.store.objects.put(os.urandom(self.rng.randint(1, 64) << 10))
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
            drive(self, ("push", "fetch", "fetch", "race"))
        finally:
            self.remote.close()
            self.store.close()


class RedisClient(threading.Thread):
    """A Redis client of the door, as torch's and Triton's connect (redis-py, pooled)."""

    def __init__(self, i: int, port: int, token: str, deadline: float) -> None:
        super().__init__(name=f"redis-{i}")
        self.i, self.deadline = i, deadline
        self.client = redis.Redis(host="127.0.0.1", port=port, password=token, protocol=3)
        self.rng = random.Random(1000 + i)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []
        self.n = 0  # commands sent
        self.values: dict[str, bytes] = {}

    def set(self) -> None:
        key = f"triton:load{self.i}:{len(self.values)}.bin"
        value = os.urandom(self.rng.randint(1, 64) << 10)
        self.client.set(key, value)
        self.values[key] = value

    def get(self) -> None:
        key = self.rng.choice(list(self.values))
        if self.client.get(key) != self.values[key]:
            self.errors.append(f"get: wrong bytes for {key}")

    def mget(self) -> None:
        keys = self.rng.sample(list(self.values), min(len(self.values), self.rng.randint(1, 8)))
        if self.client.mget(keys) != [self.values[k] for k in keys]:
            self.errors.append("mget: wrong bytes")

    def run(self) -> None:
        try:
            self.set()
            drive(self, ("set", "get", "get", "mget"))
        finally:
            self.client.close()


class Trickler(threading.Thread):
    """A read-token connection that sends MGETs of 2,000 keys (50 KB) in 64-byte pieces,
    one every 5 ms: the slow-client shape that cost a door re-parsing each unfinished
    command from its start seconds of event loop (``CAS_LOAD_TRICKLERS``, default 0)."""

    def __init__(self, port: int, token: str, deadline: float) -> None:
        super().__init__(name="trickler")
        self.port, self.token, self.deadline = port, token, deadline
        self.commands = 0

    def run(self) -> None:
        keys = [b"triton:none:%05d" % i for i in range(2000)]
        command = b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1) + b"".join(b"$%d\r\n%s\r\n" % (len(k), k) for k in keys)
        answer = b"*%d\r\n" % len(keys) + b"$-1\r\n" * len(keys)  # all missing
        with socket.create_connection(("127.0.0.1", self.port), timeout=60) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one packet a piece
            sock.sendall(b"AUTH %s\r\n" % self.token.encode())
            sock.recv(64)
            while time.monotonic() < self.deadline:
                for i in range(0, len(command), 64):
                    sock.sendall(command[i:i + 64])
                    time.sleep(0.005)
                got = 0
                while got < len(answer):
                    got += len(sock.recv(65536))
                self.commands += 1


class HealthProbe(threading.Thread):
    """Asks ``/v1/health`` every 50 ms until the deadline; records latency and failures."""

    def __init__(self, url: str, deadline: float) -> None:
        super().__init__(name="health")
        self.url, self.deadline = url, deadline
        self.latency: list[float] = []
        self.failures = 0

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while time.monotonic() < self.deadline:
                start = time.perf_counter()
                try:
                    ok = client.get(self.url + "/v1/health").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.latency.append(time.perf_counter() - start)
                self.failures += not ok
                time.sleep(0.05)


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, int(p * len(xs)))], 1) if xs else 0.0


def _serve(work: Path) -> Served:
    """A server with both doors; the Redis door serves REDIS_ENV and commits every second."""
    return Served(work, "--redis-port", "0", "--redis-env", REDIS_ENV.id.hex, "--redis-flush-every", "1",
                  prepare=lambda store: store.objects.put_object(REDIS_ENV))


def _latency(threads: list[Any]) -> dict[str, dict[str, float]]:
    latency: dict[str, list[float]] = defaultdict(list)
    for w in threads:
        for op, xs in w.latency.items():
            latency[op] += xs
    return {op: {"n": len(xs), "p50": _pct(xs, 0.5), "p99": _pct(xs, 0.99)} for op, xs in sorted(latency.items())}


def run(seconds: float = 10.0, clients: int = 32, redis_clients: int = 32, tricklers: int = 0) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="cas-load-") as tmp:
        work = Path(tmp)
        served = _serve(work)
        try:
            workers = [Client(i, served, work, 0.0) for i in range(clients)]
            start = time.monotonic()
            assert served.server.redis_port is not None
            rworkers = [RedisClient(i, served.server.redis_port, served.write_token, start + seconds)
                        for i in range(redis_clients)]
            slow = [Trickler(served.server.redis_port, served.read_token, start + seconds) for _ in range(tricklers)]
            probe = HealthProbe(served.url, start + seconds)
            for w in workers:
                w.deadline = start + seconds
            cpu = _cpu_seconds(served.server.proc.pid)
            for t in [*workers, *rworkers, *slow, probe]:
                t.start()
            for t in [*workers, *rworkers, *slow, probe]:
                t.join()
            elapsed = time.monotonic() - start
            ops = sum(len(xs) for w in workers for xs in w.latency.values())
            errors = [e for w in workers for e in w.errors]
            redis_errors = [e for w in rworkers for e in w.errors]
            redis_ops = sum(len(xs) for w in rworkers for xs in w.latency.values())
            pushed = {o for w in workers for o in w.pushed}
            lost, corrupt = _check(served, pushed)
            wins = [t for w in workers for t in w.won]
            chain_ok = _chain(served, [w for w in wins if w[0] != w[1]])
            result = {
                "clients": clients,
                "seconds": round(elapsed, 1),
                "operations": ops,
                "ops_per_s": round(ops / elapsed, 1),
                "latency_ms": _latency(workers),
                "races": {"won": len(wins), "lost": sum(w.lost for w in workers),
                          "no_lost_update": chain_ok},
                "redis": {"clients": redis_clients, "operations": redis_ops,
                          "ops_per_s": round(redis_ops / elapsed, 1), "latency_ms": _latency(rworkers),
                          "errors": len(redis_errors), "error_samples": redis_errors[:5],
                          "tricklers": tricklers, "trickled_commands": sum(t.commands for t in slow)},
                "health_ms": {"n": len(probe.latency), "p50": _pct(probe.latency, 0.5),
                              "p99": _pct(probe.latency, 0.99), "max": _pct(probe.latency, 1.0),
                              "failures": probe.failures},
                "errors": len(errors),
                "error_samples": errors[:5],
                "objects_pushed": len(pushed),
                "lost_objects": lost,
                "corrupt_objects": corrupt,
                "server_peak_rss_mib": round(peak_rss(served.server.proc.pid) / (1 << 20), 1),
                "server_cpu_s": round(_cpu_seconds(served.server.proc.pid) - cpu, 1),
            }
        finally:
            served.stop()
        result["corrupt_objects"] += _fsck(served)
        return result


def _chain(served: Served, changes: list[tuple[ObjectId | None, ObjectId]]) -> bool:
    """True if the race ref's reflog is one chain of exactly the winning changes."""
    with Store(served.store_path) as store:
        log = store.refs.log(RACE)
        final = store.refs.get(RACE)
    linked = all(a.new == b.old for a, b in zip(log, log[1:], strict=False))
    def key(c: tuple[ObjectId | None, ObjectId | None]) -> str:
        return "".join(o.hex if o else "-" for o in c)

    same = sorted(map(key, ((e.old, e.new) for e in log))) == sorted(map(key, changes))
    return linked and same and (log[-1].new if log else None) == final


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used (Linux /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _fsck(served: Served) -> int:
    """Errors fsck finds in the server's store, once it has stopped (the Redis door commits
    its last batch at shutdown: a check while it still commits would race with it)."""
    with Store(served.store_path) as store:
        return len(fsck(store).errors)


def _check(served: Served, pushed: set[ObjectId]) -> tuple[int, int]:
    """(lost, corrupt): every pushed object read back over HTTP and hashed."""
    corrupt = 0
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
    assert out["redis"]["errors"] == 0, out["redis"]["error_samples"]
    assert out["health_ms"]["failures"] == 0 and out["health_ms"]["n"] >= 1


if __name__ == "__main__":
    result = run(float(os.environ.get("CAS_LOAD_SECONDS", "30")), int(os.environ.get("CAS_LOAD_CLIENTS", "32")),
                 int(os.environ.get("CAS_LOAD_REDIS_CLIENTS", "32")), int(os.environ.get("CAS_LOAD_TRICKLERS", "0")))
    print(json.dumps(result, indent=2))
