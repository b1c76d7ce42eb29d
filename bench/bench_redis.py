"""The Redis door against a real ``redis-server``, measured in the same run.

8 or 64 client processes (the ``redis`` package, one connection each, one request at a
time: how torch's remote cache talks) GET or SET torch-shaped values
(``pt2:fx-graph-v1::…`` keys, ``{"data": base64}`` JSON) of 1 KiB and 100 KiB, against:

* **cas**: ``cas serve --redis-port`` on an LMDB store, writes committed in batches with
  fsync by the door's commit process (durable, with history and provenance);
* **redis**: ``redis-server --save '' --appendonly no`` (a plain cache, as teams run it
  for torch: nothing survives a restart).

Rounds alternate between the two servers so machine load hits both alike; the fastest
round of each is kept and ``ratio_of_redis_throughput`` (cas ops/s ÷ redis ops/s) goes in
``benchmark.extra_info``, beside ``cpu_us_per_op``: CPU (user + system) per request over
all rounds of the clients (their own count, from start to end), the serving process and
the door's commit process (from /proc), and of redis-server's clients and server. On a
machine whose cores the clients saturate, the throughput ratio tends to the ratio of those
sums, which is far steadier than throughput (where the serving process's goes, tree
against tree: ``bench/redis_cpu.py``). The goal is ≥ 0.7× (issue 20); the assertion allows
for a shared machine.
``CAS_BENCH_LOOP=asyncio`` runs ``cas serve --loop asyncio`` (default: ``auto``, uvloop).
Without ``redis-server`` (``tests/setup_system.sh`` installs it as root) the suite skips
with a message saying so.

Run: ``.venv/bin/pytest bench/bench_redis.py --benchmark-only
--benchmark-columns=min,median,max,rounds`` (results: docs/benchmarks.md).
"""

from __future__ import annotations

import base64
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from servers import CasServer, free_port  # noqa: E402

from cas.objects import Env  # noqa: E402
from cas.store import Store  # noqa: E402

CLIENTS = (8, 64)
GOAL = 0.7
#: Allowance for noise on a shared machine: assert goal * MARGIN.
MARGIN = 0.6
#: Rows whose goal is not met (docs/benchmarks.md, "uvloop as the default loop, and where
#: a SET's CPU goes": a SET's commit and serving CPU against redis-server's memcpy). Their
#: ratio of CPU per request (same run) is held to what was measured there, less noise,
#: so a regression still fails; below the goal they are expected failures.
UNMET_CPU_FLOOR = {("set", 1 << 10, 8): 0.42, ("set", 100 << 10, 8): 0.25, ("set", 100 << 10, 64): 0.25}
ROUNDS = 5
#: ``cas serve --loop``: the event loop of the door under test.
LOOP = os.environ.get("CAS_BENCH_LOOP", "auto")
KEYS = 64
OPS = {1 << 10: 3200, 100 << 10: 1920}  # all clients together, per round (64 clients: 30 each at 100 KiB)


def value(size: int, i: int) -> bytes:
    """A torch FX cache value of about ``size`` bytes on the wire."""
    raw = os.urandom(size * 3 // 4 - 40)
    return json.dumps({"data": base64.b64encode(raw).decode(), "time_taken_ms": i}).encode()


def key(size: int, i: int) -> str:
    return f"pt2:fx-graph-v1::f{size}x{i:04d}:c1"


def _client(port: int, op: str, size: int, n: int, seed: int, start: Any, out: Any) -> None:
    c = redis.Redis(host="127.0.0.1", port=port, protocol=2)
    c.ping()
    payload = [value(size, i) for i in range(4)]
    start.wait()
    cpu = time.process_time()
    for j in range(n):
        k = key(size, (seed * 7 + j) % KEYS)
        if op == "get":
            assert c.get(k) is not None
        else:
            c.set(key(size, KEYS + seed * n + j), payload[j % 4])
    out.put(time.process_time() - cpu)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Round:
    """One round of requests from all the clients."""

    #: Requests per second, from a common start to the last client's end.
    ops_per_s: float
    #: CPU (user + system) the clients spent per request meanwhile, in µs.
    client_us: float
    requests: int


def throughput(port: int, op: str, size: int, clients: int, ops: int | None = None) -> Round:
    """A round of ``clients`` processes (``ops`` requests in all, OPS[size] by default)."""
    ctx = mp.get_context("fork")
    start, out = ctx.Barrier(clients + 1), ctx.Queue()
    n = (ops or OPS[size]) // clients
    procs = [ctx.Process(target=_client, args=(port, op, size, n, i, start, out)) for i in range(clients)]
    for p in procs:
        p.start()
    start.wait()
    t = time.perf_counter()
    cpu = sum(out.get(timeout=300) for _ in procs)
    elapsed = time.perf_counter() - t
    for p in procs:
        p.join()
        assert p.exitcode == 0
    return Round(clients * n / elapsed, cpu / (clients * n) * 1e6, clients * n)


def children(pid: int) -> list[int]:
    """The child processes of ``pid``, whichever of its threads started them (the door's
    commit process is started by its commit thread)."""
    found: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            found += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        except OSError:
            pass
    return found


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed (run tests/setup_system.sh as root): no baseline")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, int, int]]:
    work = tmp_path_factory.mktemp("redis-bench")
    baseline = RedisServer(work)
    env = Env({"bench": "redis-door"})
    with Store.init(work / "store") as s:
        s.objects.put_object(env)
    cas = CasServer(work / "store", work, "--no-auth", "--redis-port", "0", "--redis-env", env.id.hex,
                    "--redis-flush-every", "1", "--loop", LOOP)
    port = cas.redis_port
    try:
        for p in (port, baseline.port):
            c = redis.Redis(port=p)
            for size in OPS:
                for i in range(KEYS):
                    c.set(key(size, i), value(size, i))
        time.sleep(2.5)  # the door's batch lands on main; GETs then read the branch
        yield port, baseline.port, cas.proc.pid, baseline.proc.pid
    finally:
        cas.stop()
        baseline.stop()


@pytest.mark.parametrize("clients", CLIENTS, ids=[f"{c}clients" for c in CLIENTS])
@pytest.mark.parametrize("size", list(OPS), ids=["1KiB", "100KiB"])
@pytest.mark.parametrize("op", ["get", "set"])
def test_redis_door_vs_redis_server(
    benchmark: Any, servers: tuple[int, int, int, int], op: str, size: int, clients: int
) -> None:
    ours, theirs, pid, redis_pid = servers
    cas_best, redis_best = 0.0, 0.0
    # CPU µs per request over all rounds: cas's clients, serving and commit processes;
    # redis-server's clients and server.
    cpu = {"cas clients": 0.0, "serving": 0.0, "commit": 0.0, "redis clients": 0.0, "redis-server": 0.0}
    n = {True: 0, False: 0}

    def rounds() -> None:
        nonlocal cas_best, redis_best
        for r in range(ROUNDS):
            order = [(ours, True), (theirs, False)] if r % 2 == 0 else [(theirs, False), (ours, True)]
            for port, is_cas in order:
                pids = [pid, *children(pid)] if is_cas else [redis_pid]
                before = [cpu_seconds(p) for p in pids]
                got = throughput(port, op, size, clients)
                used = [cpu_seconds(p) - b for p, b in zip(pids, before, strict=True)]
                n[is_cas] += got.requests
                if is_cas:
                    cpu["cas clients"] += got.client_us * got.requests
                    cpu["serving"] += used[0] * 1e6
                    cpu["commit"] += sum(used[1:]) * 1e6
                    cas_best = max(cas_best, got.ops_per_s)
                else:
                    cpu["redis clients"] += got.client_us * got.requests
                    cpu["redis-server"] += used[0] * 1e6
                    redis_best = max(redis_best, got.ops_per_s)

    benchmark.pedantic(rounds, rounds=1, iterations=1)
    for name in cpu:
        cpu[name] /= n[not name.startswith("redis")]
    ratio = cas_best / redis_best
    ours_cpu = cpu["cas clients"] + cpu["serving"] + cpu["commit"]
    theirs_cpu = cpu["redis clients"] + cpu["redis-server"]
    benchmark.extra_info.update(
        {"cas_ops_per_s": round(cas_best), "redis_ops_per_s": round(redis_best),
         "ratio_of_redis_throughput": round(ratio, 2), "clients": clients,
         "cas_serving_cpu_us_per_op": round(cpu["serving"]), "loop": LOOP,
         "cpu_us_per_op": {k: round(v, 1) for k, v in cpu.items()}}
    )
    print(f"\n{op} {size} B, {clients} clients, --loop {LOOP}: cas {cas_best:.0f}/s, redis-server {redis_best:.0f}/s, "
          f"ratio {ratio:.2f}; CPU us per request: cas clients {cpu['cas clients']:.0f} + serving "
          f"{cpu['serving']:.0f} + commit {cpu['commit']:.0f} = {ours_cpu:.0f}, redis clients "
          f"{cpu['redis clients']:.0f} + redis-server {cpu['redis-server']:.0f} = {theirs_cpu:.0f} "
          f"(CPU ratio {theirs_cpu / ours_cpu:.2f})")
    floor = UNMET_CPU_FLOOR.get((op, size, clients))
    if floor is None:
        assert ratio >= GOAL * MARGIN, f"{op} {size} B: {ratio:.2f}x of redis-server (goal {GOAL}x)"
        return
    cpu_ratio = theirs_cpu / ours_cpu
    assert cpu_ratio >= floor, f"{op} {size} B: CPU ratio {cpu_ratio:.2f} to redis-server, below {floor} measured"
    if ratio < GOAL:
        pytest.xfail(f"{op} {size} B x {clients}: {ratio:.2f}x of redis-server (CPU ratio {cpu_ratio:.2f}), goal {GOAL}x")
