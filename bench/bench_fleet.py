"""A fleet of new machines pulling one pin at once, from one `cas serve` and from S3
(SeaweedFS), beside raw parallel GETs of the same bytes from the same kind of server in
the same run.

The pin is what a release engineer pushes (DESIGN.md, "who uses it"): a precompiled
header, compiled kernels and many small cache entries, committed and tagged
``release/fleet`` with the project's own APIs. Its size is ``CAS_FLEET_PIN_MB``
(default 32): about 4 % one header, 56 % kernels (256 KiB-6 MiB), 40 % entries
(2-192 KiB); each artifact half random, half kernel-like text (about 1.5x compressible,
as bench_sync's data).

A *machine* is a process of its own with an empty store dir, an empty torch cache dir
(TORCHINDUCTOR_CACHE_DIR), an empty TMPDIR and an empty XDG cache: it runs
``cas clone URL STORE`` (a read token for `cas serve`; AWS_* variables and
``-o endpoint=`` for S3). N machines (``CAS_FLEET_N``, comma-separated; default 4) are
started together. *Time to warm* is one machine's spawn-to-exit time (interpreter start
included). After each fleet, ``cas fsck`` runs on every machine's store (two at a time,
not timed); a non-zero exit of a clone or an fsck is an error.

The raw baseline: the same bytes, split into 64 MiB files/objects, GET by N processes
at once, each streaming every file into a file of its own and fsyncing it (a clone
fsyncs its store too):

* beside `cas serve`: a trivial Starlette/uvicorn file server (the stack `cas serve`
  runs on) serving the files from disk;
* beside S3: boto3 ``get_object`` of the objects from the same SeaweedFS.

Reported per target and N: aggregate throughput (N x pin bytes / first-spawn-to-last-exit)
and its ratio to raw, p50/p99 time to warm, errors, fsck findings, the server's CPU
seconds and its peak RSS (VmHWM, reset before each fleet via /proc/PID/clear_refs).

Run: ``CAS_FLEET_N=8,32,64 CAS_FLEET_PIN_MB=128 .venv/bin/python bench/bench_fleet.py``
(prints a markdown table; ``--json`` for JSON). Disk: each fleet holds N x pin bytes
until its fsck is done (a machine's dirs are removed after its fsck). Under pytest
(``make bench``) it runs N=4 with a 128 MiB pin per target and asserts 0 errors and fsck
clean; a throughput ratio under its goal (>= 0.8x of raw for S3, >= 0.6x for
`cas serve`) is an expected failure with its reason (neither is met reliably at that
scale; docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from bombs import peak_rss  # noqa: E402
from servers import S3_KEY, S3_REGION, S3_SECRET, Seaweed, Served, free_port  # noqa: E402
from synth import KERNEL_TEXT  # noqa: E402

from cas import history, refs  # noqa: E402
from cas.digest import ObjectId  # noqa: E402
from cas.objects import Entry, EntryKey, Env  # noqa: E402
from cas.remote.http import CONNECTIONS  # noqa: E402
from cas.remote.s3 import S3Remote  # noqa: E402
from cas.store import Store  # noqa: E402
from cas.sync import transfer  # noqa: E402

NS = [int(n) for n in os.environ.get("CAS_FLEET_N", "4").split(",")]
PIN_MB = float(os.environ.get("CAS_FLEET_PIN_MB", "32"))
TAG = "release/fleet"
PART = 64 << 20
CAS = [sys.executable, "-c", "from cas_cli.main import main; main()"]
_TEXT = KERNEL_TEXT

RAW_SERVER = """
import os, sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import FileResponse
from starlette.routing import Route
root = sys.argv[1]
async def get(request):
    return FileResponse(os.path.join(root, request.path_params["name"]))
app = Starlette(routes=[Route("/raw/{name}", get, methods=["GET"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""

#: One raw machine: GET every part into one file of its own, then fsync.
RAW_HTTP_CLIENT = """
import os, sys, httpx
base, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with httpx.Client(timeout=600) as c, open(out, "wb") as f:
    for name in names:
        with c.stream("GET", base + name) as r:
            r.raise_for_status()
            for chunk in r.iter_raw(1 << 20):
                f.write(chunk)
    f.flush()
    os.fsync(f.fileno())
"""

RAW_S3_CLIENT = """
import os, sys, boto3
from botocore.config import Config
endpoint, bucket, out, keys = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
s3 = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
with open(out, "wb") as f:
    for key in keys:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        for chunk in iter(lambda: body.read(1 << 20), b""):
            f.write(chunk)
    f.flush()
    os.fsync(f.fileno())
"""


# -- the pin --------------------------------------------------------------------------


def _artifact(rng: random.Random, size: int) -> bytes:
    half = size // 2
    text_len = size - half
    off = rng.randrange(max(1, len(_TEXT) - text_len))
    text = (_TEXT * (1 + text_len // len(_TEXT)))[off : off + text_len]
    return rng.randbytes(half) + text


def pin_artifacts(total: int, seed: int = 7) -> Iterator[tuple[str, bytes]]:
    """(kind, bytes) of a pin of about ``total`` bytes: a header, kernels, entries."""
    rng = random.Random(seed)
    yield "cpp_pch", _artifact(rng, max(64 << 10, total // 25))
    for kind, share, low, high in (("cpp_kernel", 0.56, 256 << 10, 6 << 20),
                                   ("inductor", 0.40, 2 << 10, 192 << 10)):
        left = int(total * share)
        while left > 0:
            size = min(left, int(low * (high / low) ** rng.random()))
            left -= size
            yield kind, _artifact(rng, max(size, 1024))


def build_pin(store: Store, total: int) -> tuple[int, list[bytes]]:
    """Commit and tag the pin in ``store``; its artifact bytes and their sum."""
    env_id = store.objects.put_object(Env({"device": "cpu", "torch_version": "bench-fleet"}))
    changes: dict[EntryKey, Entry | None] = {}
    arts: list[bytes] = []
    batch: list[tuple[int, bytes]] = []
    for i, (kind, data) in enumerate(pin_artifacts(total)):
        arts.append(data)
        batch.append((0, data))
        changes[EntryKey(env_id, kind, f"key{i:06d}")] = Entry(ObjectId.of(data), len(data))
        if sum(len(d) for _, d in batch) > 64 << 20:
            store.objects.write(batch)  # type: ignore[arg-type]
            batch = []
    store.objects.write(batch)  # type: ignore[arg-type]
    commit = history.commit_changes(store, "main", changes, "fleet pin")
    refs.create_tag(store, TAG, commit, message="the pin a fleet pulls")
    return sum(map(len, arts)), arts


def write_parts(arts: list[bytes], root: Path) -> list[str]:
    """The pin's bytes as 64 MiB files under ``root`` (the raw baseline's payload)."""
    root.mkdir(parents=True, exist_ok=True)
    blob = b"".join(arts)
    names = []
    for i in range(0, len(blob), PART):
        name = f"part{i // PART:04d}"
        (root / name).write_bytes(blob[i : i + PART])
        names.append(name)
    return names


# -- measuring a server process ---------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak(pid: int) -> None:
    """Reset the process's VmHWM to its current RSS (Linux: clear_refs 5)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


# -- a fleet ----------------------------------------------------------------------------


@dataclass
class Machine:
    home: Path
    cmd: list[str]
    env: dict[str, str]
    start: float = 0.0
    end: float = 0.0
    rc: int | None = None
    err: str = ""
    cpu: float = 0.0
    sys: float = 0.0  # of which in the kernel

    @property
    def store(self) -> Path:
        return self.home / "store"


def new_machine(root: Path, i: int, cmd: Callable[[Path], list[str]], env: dict[str, str]) -> Machine:
    """An empty machine: its own store path, torch cache dir, TMPDIR and XDG cache."""
    home = root / f"m{i:03d}"
    for d in ("tmp", "torch", "xdg"):
        (home / d).mkdir(parents=True)
    menv = {k: v for k, v in os.environ.items() if k != "CAS_DIR"}
    menv.update(env, TMPDIR=str(home / "tmp"), TORCHINDUCTOR_CACHE_DIR=str(home / "torch"),
                XDG_CACHE_HOME=str(home / "xdg"), HOME=str(home))
    return Machine(home, cmd(home), menv)


def run_fleet(machines: list[Machine]) -> float:
    """Start every machine at once; wall seconds from the first spawn to the last exit."""

    def wait(m: Machine, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)  # its CPU time, which Popen.wait drops
        proc.returncode = os.waitstatus_to_exitcode(status)
        m.end, m.rc, m.err = time.monotonic(), proc.returncode, err.decode(errors="replace")[-500:]
        m.cpu = usage.ru_utime + usage.ru_stime
        m.sys = usage.ru_stime

    waiters = []
    t0 = time.monotonic()
    for m in machines:
        m.start = time.monotonic()
        proc = subprocess.Popen(m.cmd, env=m.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        waiters.append(threading.Thread(target=wait, args=(m, proc)))
        waiters[-1].start()
    for t in waiters:
        t.join()
    return max(m.end for m in machines) - t0


def fsck_all(machines: list[Machine]) -> list[str]:
    """`cas fsck` on every machine's store (two at a time); what failed. Dirs removed."""

    def one(m: Machine) -> str | None:
        if m.rc != 0:
            shutil.rmtree(m.home, ignore_errors=True)
            return None  # counted as a clone error already
        p = subprocess.run([*CAS, "--store", str(m.store), "fsck"], env=m.env, capture_output=True)
        shutil.rmtree(m.home, ignore_errors=True)
        return None if p.returncode == 0 else f"{m.home.name}: {p.stdout.decode()[-300:]}"

    with ThreadPoolExecutor(2) as pool:
        return [r for r in pool.map(one, machines) if r is not None]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Fleet:
    label: str
    n: int
    seconds: float
    pin_bytes: int
    warm: list[float]
    errors: list[str]
    server_cpu_s: float
    server_peak_rss: int
    client_cpu_s: float
    load: tuple[float, float]
    fsck_failed: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "case": self.label,
            "n": self.n,
            "seconds": round(self.seconds, 2),
            "aggregate_MB_per_s": round(self.n * self.pin_bytes / self.seconds / 1e6, 1),
            "warm_p50_s": round(statistics.median(self.warm), 2),
            "warm_p99_s": round(pct(self.warm, 0.99), 2),
            "errors": len(self.errors),
            "first_error": self.errors[0] if self.errors else None,
            "fsck_failed": len(self.fsck_failed),
            "client_cpu_s_mean": round(self.client_cpu_s, 2),
            "server_cpu_s": round(self.server_cpu_s, 1),
            # The server's part of the machine's CPU over the fleet's time: near 1.0 the
            # server is the bottleneck; low, the clients (or the neighbours) are.
            "server_cpu_share": round(self.server_cpu_s / (self.seconds * (os.cpu_count() or 1)), 2),
            "server_peak_rss_MiB": round(self.server_peak_rss / 2**20),
            "load_1min_before_after": self.load,
        }


def measure(label: str, server_pid: int, root: Path, n: int, pin_bytes: int,
            cmd: Callable[[Path], list[str]], env: dict[str, str], fsck: bool) -> Fleet:
    shutil.rmtree(root, ignore_errors=True)
    machines = [new_machine(root, i, cmd, env) for i in range(n)]
    reset_peak(server_pid)
    cpu = cpu_seconds(server_pid)
    load = os.getloadavg()[0]
    secs = run_fleet(machines)
    used = cpu_seconds(server_pid) - cpu
    errors = [f"{m.home.name}: exit {m.rc}: {m.err.strip().splitlines()[-1] if m.err.strip() else ''}"
              for m in machines if m.rc != 0]
    fleet = Fleet(label, n, secs, pin_bytes, [m.end - m.start for m in machines], errors, used,
                  peak_rss(server_pid), statistics.mean(m.cpu for m in machines), (round(load, 1), round(os.getloadavg()[0], 1)))
    fleet.fsck_failed = fsck_all(machines) if fsck else []
    shutil.rmtree(root, ignore_errors=True)
    return fleet


# -- the two targets --------------------------------------------------------------------


def _wait_http(url: str) -> None:
    for _ in range(400):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"raw server at {url} did not answer")


def serve_fleets(tmp: Path, ns: list[int], total: int, serve_args: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """cas serve vs a raw Starlette file server, each fleet size in turn."""
    rows: list[dict[str, Any]] = []
    built: dict[str, Any] = {}

    def prepare(store: Store) -> None:
        built["bytes"], built["arts"] = build_pin(store, total)

    # On loopback every machine is one peer (127.0.0.1), and a clone holds at most
    # http.CONNECTIONS (3) connections: the default per-peer cap (100) would answer 503
    # to a fleet of more than 33, as it does to a fleet behind one NAT address; the cap
    # is raised as docs/server.md ("A fleet") tells an operator to.
    per_peer = ("--max-connections-per-peer", str(max(100, CONNECTIONS * max(ns))))
    served = Served(tmp / "serve", *per_peer, *serve_args, prepare=prepare)
    names = write_parts(built.pop("arts"), tmp / "raw-files")
    port = free_port()
    raw = subprocess.Popen([sys.executable, "-c", RAW_SERVER, str(tmp / "raw-files"), str(port)])
    try:
        _wait_http(f"http://127.0.0.1:{port}/")
        pin = built["bytes"]
        for n in ns:
            rows.append(measure("cas serve: cas clone", served.server.proc.pid, tmp / "fleet", n, pin,
                                lambda h: [*CAS, "clone", served.url, str(h / "store")],
                                {"CAS_TOKEN": served.read_token}, fsck=True).row())
            rows.append(measure("raw HTTP GET (uvicorn file server)", raw.pid, tmp / "fleet", n, pin,
                                lambda h: [sys.executable, "-c", RAW_HTTP_CLIENT,
                                           f"http://127.0.0.1:{port}/raw/", str(h / "copy"), *names],
                                {}, fsck=False).row())
    finally:
        raw.kill()
        raw.wait()
        served.stop()
    return rows


@dataclass
class S3Pin:
    """The pin pushed to an S3 remote, and its bytes as raw objects in another bucket."""

    pin: int  # bytes
    url: str  # the cas remote
    raw_bucket: str
    keys: list[str]  # the raw objects, in order


def s3_pin(weed: Seaweed, tmp: Path, total: int) -> S3Pin:
    """Build the pin (``build_pin``), push it to bucket cas-fleet of ``weed``, and put its
    bytes, in PART-sized objects, into bucket raw-fleet."""
    bucket = weed.bucket("cas-fleet")
    url = f"s3://{bucket}/fleet"
    with Store.init(tmp / "s3-src") as src:
        pin, arts = build_pin(src, total)
        remote = S3Remote(url, endpoint=weed.endpoint, region=S3_REGION, access_key=S3_KEY, secret_key=S3_SECRET)
        transfer.push(src, remote, [("refs/heads/main", "refs/heads/main"), (f"refs/tags/{TAG}",) * 2])
        remote.close()
    raw_bucket = weed.bucket("raw-fleet")
    blob = b"".join(arts)
    keys = [f"part{i // PART:04d}" for i in range(0, len(blob), PART)]
    for key, i in zip(keys, range(0, len(blob), PART), strict=True):
        weed.client.put_object(Bucket=raw_bucket, Key=key, Body=blob[i : i + PART])
    return S3Pin(pin, url, raw_bucket, keys)


def s3_fleets(tmp: Path, ns: list[int], total: int) -> list[dict[str, Any]]:
    """cas clone from an S3 remote vs raw get_object, from one SeaweedFS."""
    rows: list[dict[str, Any]] = []
    weed = Seaweed(tmp / "seaweed")
    try:
        made = s3_pin(weed, tmp, total)
        pin, url, raw_bucket, keys = made.pin, made.url, made.raw_bucket, made.keys
        creds = {"AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET, "AWS_DEFAULT_REGION": S3_REGION}
        for n in ns:
            rows.append(measure("S3: cas clone", weed.proc.pid, tmp / "fleet", n, pin,
                                lambda h: [*CAS, "clone", url, str(h / "store"), "-o", f"endpoint={weed.endpoint}"],
                                creds, fsck=True).row())
            rows.append(measure("S3: raw get_object", weed.proc.pid, tmp / "fleet", n, pin,
                                lambda h: [sys.executable, "-c", RAW_S3_CLIENT, weed.endpoint, raw_bucket,
                                           str(h / "copy"), *keys],
                                creds, fsck=False).row())
    finally:
        weed.stop()
    return rows


def with_ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each cas row gets ``ratio``: its aggregate throughput over the raw row's (same N)."""
    for row, raw in zip(rows[::2], rows[1::2], strict=True):
        row["ratio_to_raw"] = round(row["aggregate_MB_per_s"] / raw["aggregate_MB_per_s"], 2)
    return rows


def compile_tree(*roots: Path) -> None:
    """Bytecode for cas's own modules (``roots``: default this tree's cas/ and cli/), as
    an installed package has it: where PYTHONDONTWRITEBYTECODE is set, an edited module
    would otherwise be compiled from source again by every machine (+0.05-0.3 CPU-s)."""
    top = Path(__file__).resolve().parent.parent
    dirs = [str(r) for r in roots] or [str(top / "cas"), str(top / "cli")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *dirs], check=True, stdout=subprocess.DEVNULL)


def run(ns: list[int] | None = None, pin_mb: float | None = None, targets: tuple[str, ...] = ("serve", "s3"),
        serve_args: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every fleet size against every target; one row per (target, N, cas or raw)."""
    ns = ns or NS
    total = int((pin_mb or PIN_MB) * 2**20)
    compile_tree()
    tmp = Path(tempfile.mkdtemp(prefix="cas-bench-fleet-"))
    rows: list[dict[str, Any]] = []
    try:
        if "serve" in targets:
            rows += with_ratios(serve_fleets(tmp / "http", ns, total, serve_args))
        if "s3" in targets:
            rows += with_ratios(s3_fleets(tmp / "s3", ns, total))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["case", "n", "seconds", "aggregate_MB_per_s", "ratio_to_raw", "warm_p50_s", "warm_p99_s",
            "errors", "fsck_failed", "client_cpu_s_mean", "server_cpu_s", "server_cpu_share", "server_peak_rss_MiB",
            "load_1min_before_after"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _check(rows: list[dict[str, Any]], goal: float, shortfall: str) -> None:
    """0 errors and fsck clean, asserted; the throughput goal, an expected failure with
    its reason when missed (at make-bench scale it is, see docs/benchmarks.md)."""
    for r in rows:
        assert r["errors"] == 0, r
        assert r["fsck_failed"] == 0, r
    if rows[0]["ratio_to_raw"] < goal:
        pytest.xfail(f"{rows[0]['ratio_to_raw']}x of raw, goal {goal}x: {shortfall}")


@pytest.mark.parametrize("target, goal, shortfall", [
    ("serve", 0.6, "met with a 64 MiB pin at N = 8, 32, 64 (0.86, 1.20, 1.09x at load 15-35; "
                   "docs/benchmarks.md, 'One machine's CPU'), but a clone costs 1.2x the CPU of a raw "
                   "GET and clients and server share 2 cores: a loaded machine moves the ratio"),
    ("s3", 0.8, "with a 64 MiB pin met at N = 8 (0.93x), in 3 of 6 runs at N = 32 (0.36-0.89x; 4 of 5 with one sync per clone) and 1 of 4 "
                "at N = 64 (0.45-0.85x) on a loaded 2-core machine (docs/benchmarks.md, 'One machine's "
                "CPU'); at N = 4 before 0.6x (the fixed cost of a clone weighs more)"),
], ids=["serve", "s3"])
def test_fleet(benchmark: Any, target: str, goal: float, shortfall: str) -> None:
    """``make bench``: 4 machines clone a 128 MiB pin at once from one `cas serve`, or from
    SeaweedFS."""
    rows: list[dict[str, Any]] = []
    benchmark.pedantic(lambda: rows.extend(run([4], 128, (target,))), rounds=1, iterations=1)
    benchmark.extra_info["rows"] = rows
    _check(rows, goal, shortfall)


if __name__ == "__main__":
    targets = tuple(a for a in ("serve", "s3") if f"--no-{a}" not in sys.argv)
    result = run(targets=targets)
    print(f"pin {PIN_MB:g} MiB, N = {NS}, {os.cpu_count()} cores\n")
    print(json.dumps(result, indent=2) if "--json" in sys.argv else table(result))
