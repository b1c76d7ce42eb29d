"""CPU of the Redis door's serving process per request: where it goes (issue 20, point 1).

Throughput on a shared 2-core machine swings with the load; the CPU the serving process
spends per request does not, and it is what sets the door's ratio to redis-server there
(throughput ≈ cores ÷ (client CPU + server CPU) per request). This script measures it:

* ``sockets`` (default): ``cas serve --redis-port`` of each ``--tree`` (a checkout; the
  default is this one) in a subprocess, and ``clients`` processes of the ``redis``
  package GETting or SETting torch-shaped values (bench_redis's clients), rounds
  alternating between the trees; prints, per tree, µs CPU (utime + stime from
  /proc/PID/stat) of the serving process per request, of its commit process per request
  apart (a round of SETs is read once its commit is done: ``SETTLE``), and the best
  ops/s. ``--py-spy FILE`` records the first tree's serving process meanwhile
  (py-spy is not a project dependency: ``pip install py-spy`` into the venv).
* ``--echo``: the same clients against an asyncio server that answers every packet with
  a canned reply and does nothing else: the floor that asyncio's per-event cost sets.
  ``--door-alone``: this tree's door on a bare asyncio loop (no HTTP server, no keeper).
  ``--uvloop``: both of those on uvloop instead (the loop ``cas serve`` runs by default,
  so a tree's served door runs on it already; a tree from before uvloop was a dependency
  runs asyncio's).
* ``--inprocess``: the door's Connection fed commands in this process, without sockets
  (its transport only collects what is written), a command a packet or ``--packet``
  bytes a packet: the door's own µs per command; ``--profile`` prints cProfile's top
  functions.
* ``--commit-batch N``: the commit process's work (``redis_commit._Committer``) on
  batches of N SETs in this process: µs CPU per SET; ``--default-gc`` leaves Python's
  GC thresholds as they are, ``--profile`` prints cProfile's top functions.

Run: ``.venv/bin/python bench/redis_cpu.py --op get --size 1024 --clients 8
--tree /tmp/base --tree .`` (results: docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from bench_redis import KEYS, children, key, throughput, value  # noqa: E402

from cas.objects import Env  # noqa: E402
from cas.store import Store  # noqa: E402
from cas_cli.cmd_serve import announced  # noqa: E402

ENV = Env({"bench": "redis-door"})


def make_store(path: Path) -> Path:
    with Store.init(path) as s:
        s.objects.put_object(ENV)
    return path


class Served:
    """``cas serve`` of checkout ``tree`` (its ``cas`` package first on the path)."""

    def __init__(self, tree: Path, store: Path, log: Path) -> None:
        self.tree = tree
        env = {k: v for k, v in os.environ.items() if k != "CAS_DIR"}
        env["PYTHONPATH"] = str(tree)
        cmd = [sys.executable, "-c", "from cas_cli.main import main; main()", "--store", str(store), "serve",
               "--host", "127.0.0.1", "--port", "0", "--no-auth", "--redis-port", "0",
               "--redis-env", ENV.id.hex, "--redis-flush-every", "1"]
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        # cwd=tree: `python -c` puts the working directory first on the path.
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=tree)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            said = announced(log.read_text(errors="replace"))
            if said is not None and said.redis_port is not None:
                self.port = said.redis_port
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"cas serve of {tree} did not start:\n{log.read_text(errors='replace')[-2000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class Child:
    """This script serving in a child process (``--serve-echo`` or ``--serve-door``)."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.pid = self.proc.pid

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def serve_echo(size: int) -> None:
    bulk = b"$%d\r\n%s\r\n" % (size, b"x" * size)

    class Canned(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            if data.startswith(b"*2\r\n$3\r\nGET"):
                self.transport.write(bulk)
            elif data.startswith(b"*3\r\n$3\r\nSET"):
                self.transport.write(b"+OK\r\n")
            else:  # the handshake: PING, or CLIENT SETINFO twice in one packet
                self.transport.write(b"+OK\r\n" * (data.count(b"\r\n*") + 1))

    async def main() -> None:
        sock = socket.create_server(("127.0.0.1", 0), backlog=2048)
        sock = socket.socket(sock.family, socket.SOCK_STREAM, socket.IPPROTO_TCP, fileno=sock.detach())
        server = await asyncio.get_running_loop().create_server(Canned, sock=sock)
        print(sock.getsockname()[1], flush=True)
        await server.serve_forever()

    run_loop(main())


def serve_door(store: Path) -> None:
    """The door alone on a bare asyncio loop (no HTTP server), with cas serve's metrics."""
    from cas.server.metrics import Metrics
    from cas.server.redis_door import RedisDoor, RedisOptions

    async def main() -> None:
        door = RedisDoor(store, None, RedisOptions(port=0, env=ENV.id.hex, flush_every=1))
        door.observe = Metrics(dict).redis_observer(door.env.id.short())
        sock = socket.create_server(("127.0.0.1", 0), backlog=2048)
        sock = socket.socket(sock.family, socket.SOCK_STREAM, socket.IPPROTO_TCP, fileno=sock.detach())
        await door.start(sock)
        print(door.port, flush=True)
        await asyncio.Event().wait()

    run_loop(main())


def run_loop(coro: Any) -> None:
    """``asyncio.run``, or ``uvloop.run`` when ``--uvloop`` asked for it (the echo and
    door-alone children only)."""
    if os.environ.get("REDIS_CPU_LOOP") == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


def seed(port: int, size: int) -> None:
    c = redis.Redis(host="127.0.0.1", port=port)
    for i in range(KEYS):
        c.set(key(size, i), value(size, i))


def user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def children_cpu(pid: int) -> float:
    """User + system CPU seconds so far of the direct children of ``pid`` (the door's
    commit process), from /proc."""
    return sum(sum(user_system(k)) for k in children(pid) if Path(f"/proc/{k}").exists())


#: After a round of SETs: the door commits what it holds at its next flush (every second
#: here), so a round's CPU is read once that commit is done, and it does not run during
#: the next tree's round.
SETTLE = 1.6


def measure(servers: dict[str, Any], op: str, size: int, clients: int, rounds: int, ops: int) -> dict[str, Any]:
    """Alternate rounds over ``servers``; per name: µs CPU per request (all, user,
    system) of the serving process, µs CPU per request of its children (the commit
    process), best ops/s."""
    cpu = {name: [0.0, 0.0, 0.0] for name in servers}
    best = dict.fromkeys(servers, 0.0)
    names = list(servers)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            srv = servers[name]
            before = (*user_system(srv.pid), children_cpu(srv.pid))
            best[name] = max(best[name], throughput(srv.port, op, size, clients, ops).ops_per_s)
            serving = user_system(srv.pid)  # before the wait: an idle server's ticks are not requests'
            if op == "set":
                time.sleep(SETTLE)
            after = (*serving, children_cpu(srv.pid))
            cpu[name] = [c + a - b for c, a, b in zip(cpu[name], after, before, strict=True)]
    n = rounds * (ops // clients) * clients
    return {name: (sum(cpu[name][:2]) / n * 1e6, cpu[name][0] / n * 1e6, cpu[name][1] / n * 1e6,
                   cpu[name][2] / n * 1e6, best[name])
            for name in names}


def sockets(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="redis-cpu-"))
    servers: dict[str, Any] = {}
    try:
        if args.echo:
            servers["echo"] = Child("--serve-echo", str(args.size))
        if args.door_alone:
            servers["door alone"] = Child("--serve-door", str(make_store(work / "alone")))
            seed(servers["door alone"].port, args.size)
        for i, tree in enumerate(args.tree or [HERE.parent]):
            name = f"{i}:{tree}"
            servers[name] = Served(Path(tree).resolve(), make_store(work / f"store{i}"), work / f"serve{i}.log")
            seed(servers[name].port, args.size)
        time.sleep(2.5)  # the seeded batch lands; GETs then read the branch
        spy = None
        if args.py_spy:
            target = next(s for s in servers.values() if isinstance(s, Served))
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-r", "500", "--gil", "-o",
                                    args.py_spy, "-f", args.py_spy_format, "-p", str(target.pid)])
            time.sleep(1)
        print(f"load before: {os.getloadavg()}")
        results = measure(servers, args.op, args.size, args.clients, args.rounds, args.ops)
        print(f"load after: {os.getloadavg()}")
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait()
        for name, (us, user, system, kids, ops) in results.items():
            print(f"{args.op} {args.size} B x {args.clients} clients  {name}: {us:.1f} us CPU/request "
                  f"(user {user:.1f}, system {system:.1f}), commit process {kids:.1f} us/request, "
                  f"{ops:.0f} ops/s")
    finally:
        for s in servers.values():
            s.stop()


def inprocess(args: argparse.Namespace) -> None:
    """The door's Connection fed ``args.ops`` commands, one per packet, without sockets."""
    from cas.server.metrics import Metrics
    from cas.server.redis_door import RedisDoor, RedisOptions

    work = Path(tempfile.mkdtemp(prefix="redis-cpu-"))
    store = make_store(work / "store")

    class Collect(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.out = 0

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return ("127.0.0.1", 1) if name == "peername" else default

        def write(self, data: Any) -> None:
            self.out += len(data)

        def is_closing(self) -> bool:
            return False

        def pause_reading(self) -> None:
            pass

        def resume_reading(self) -> None:
            pass

    def packet(*parts: bytes) -> bytes:
        return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)

    async def main() -> float:
        door = RedisDoor(store, None, RedisOptions(port=0, env=ENV.id.hex, flush_every=1))
        door.observe = Metrics(dict).redis_observer(door.env.id.short())  # as cas serve does
        await door.start()
        conn = door._connection()
        conn.connection_made(Collect())
        values = [value(args.size, i) for i in range(4)]
        for i in range(KEYS):
            conn.data_received(packet(b"SET", key(args.size, i).encode(), values[i % 4]))
        door.start_flush()
        while door._flush_task is not None or door._pending:
            await asyncio.sleep(0.05)
        if args.op == "get":
            packets = [packet(b"GET", key(args.size, i % KEYS).encode()) for i in range(args.ops)]
        else:
            packets = [packet(b"SET", key(args.size, KEYS + i).encode(), values[i % 4]) for i in range(args.ops)]
        prof = cProfile.Profile() if args.profile else None
        t = time.process_time()
        if prof is not None:
            prof.enable()
        cut = args.packet or max(map(len, packets))
        for i, p in enumerate(packets):
            for at in range(0, len(p), cut):
                conn.data_received(p[at:at + cut])
            if i % 512 == 511:
                await asyncio.sleep(0)  # let a flush the batch started move on
        if prof is not None:
            prof.disable()
        spent = time.process_time() - t
        await door.stop()
        if prof is not None:
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return spent

    spent = asyncio.run(main())
    print(f"in-process {args.op} {args.size} B: {spent / args.ops * 1e6:.1f} us CPU/command "
          f"(this process, commit process excluded; {args.ops} commands)")


def commit_batches(args: argparse.Namespace) -> None:
    """The commit process's work in this process: batches of ``--commit-batch`` SETs of
    bench_redis's values (new keys each, the same keys every batch, as bench_redis's
    clients write them), committed as the commit process commits a request; the GC set
    as the commit process sets it unless ``--default-gc``."""
    import msgpack

    from cas.server import redis_commit

    store = make_store(Path(tempfile.mkdtemp(prefix="redis-cpu-")) / "store")
    committer = redis_commit._Committer(store, ENV.id.hex, "redis/bench")
    if not args.default_gc:
        redis_commit._collect_less()
    n = args.commit_batch
    values = [value(args.size, i) for i in range(4)]
    request = msgpack.packb([None, [["bench", [[key(args.size, KEYS + i), values[i % 4]] for i in range(n)]]]])
    committer.run(request)  # the first batch adds the keys; the ones measured replace them
    prof = cProfile.Profile() if args.profile else None
    t = time.process_time()
    if prof is not None:
        prof.enable()
    for _ in range(args.rounds):
        committer.run(request)
    if prof is not None:
        prof.disable()
    spent = time.process_time() - t
    committer.store.close()
    if prof is not None:
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    print(f"commit process's work, {args.size} B SETs, {n} a batch, {'default' if args.default_gc else 'its'} GC: "
          f"{spent / (n * args.rounds) * 1e6:.1f} us CPU per SET ({args.rounds} batches)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", choices=("get", "set"), default="get")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--ops", type=int, default=3200, help="requests per round, all clients together")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tree", action="append", help="a checkout whose cas serves (repeat to compare)")
    p.add_argument("--echo", action="store_true", help="also measure an asyncio server that does nothing")
    p.add_argument("--door-alone", action="store_true",
                   help="also measure the door of this tree alone on a bare asyncio loop")
    p.add_argument("--py-spy", help="record the first tree's serving process into this file")
    p.add_argument("--py-spy-format", default="speedscope")
    p.add_argument("--inprocess", action="store_true")
    p.add_argument("--profile", action="store_true", help="with --inprocess: cProfile's top functions")
    p.add_argument("--packet", type=int, help="with --inprocess: bytes a packet (default: a command a packet)")
    p.add_argument("--commit-batch", type=int, help="the commit process's work in-process, N SETs a batch")
    p.add_argument("--default-gc", action="store_true", help="with --commit-batch: Python's GC thresholds")
    p.add_argument("--uvloop", action="store_true", help="run --echo and --door-alone on uvloop")
    p.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    p.add_argument("--serve-door", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.uvloop:
        os.environ["REDIS_CPU_LOOP"] = "uvloop"  # read by the --serve-echo / --serve-door children
    if args.serve_echo is not None:
        serve_echo(args.serve_echo)
    elif args.serve_door is not None:
        serve_door(args.serve_door)
    elif args.commit_batch:
        commit_batches(args)
    elif args.inprocess:
        inprocess(args)
    else:
        sockets(args)


if __name__ == "__main__":
    main()
