"""Push and pull over loopback HTTP (`cas serve`) and SeaweedFS (S3), side by side with
a raw copy of the same bytes over the same path and with git, in one run.

The data set is N artifacts of mixed sizes (99 % log-uniform 1 KiB-384 KiB, 1 % 2-6 MiB;
half random, half kernel-like text, so about 1.5x compressible), N = 10,000 x
``CAS_BENCH_SCALE`` (about 1 GiB at scale 1; default 0.1, about 100 MiB).

Cases, each timed once (the figures are large transfers, not micro-benchmarks):

* cas push (full), cas fetch into an empty store (full), then a commit adding 1 % new
  artifacts: incremental push and incremental fetch. Through cas.sync.transfer, i.e.
  exactly what `cas push` / `cas fetch` do.
* raw HTTP: one PUT of the same bytes to a trivial Starlette/uvicorn server that writes
  them to a file and fsyncs (a copy lands on disk, as ours does), and one GET back to a
  file + fsync. Goal: cas >= 0.5x its throughput.
* raw S3: boto3 put_object / get_object of the same bytes in 64 MiB objects.
* git: the same artifacts as files in a work tree, committed (not timed), then
  `git push` to a bare repository on local disk and `git fetch` into an empty one;
  then the 1 % incremental push. Goal: cas faster, far faster incrementally.

Run: ``CAS_BENCH_SCALE=1 .venv/bin/python bench/bench_sync.py`` (prints a markdown table;
``--json`` for JSON). Under pytest (``make bench``) it runs once at the default scale and
puts the figures in ``benchmark.extra_info``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import S3_KEY, S3_REGION, S3_SECRET, Seaweed, Served, free_port  # noqa: E402
from synth import KERNEL_TEXT  # noqa: E402

from cas import history  # noqa: E402
from cas.objects import Entry, EntryKey, Env  # noqa: E402
from cas.remote.base import Remote  # noqa: E402
from cas.remote.http import HttpRemote  # noqa: E402
from cas.remote.s3 import S3Remote  # noqa: E402
from cas.store import Store  # noqa: E402
from cas.sync import transfer  # noqa: E402

SCALE = float(os.environ.get("CAS_BENCH_SCALE", "0.1"))
MAIN = "refs/heads/main"
_TEXT = KERNEL_TEXT

RAW_SERVER = """
import os, sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import FileResponse, Response
from starlette.routing import Route
root = sys.argv[1]
async def put(request):
    with open(os.path.join(root, request.path_params["name"]), "wb") as f:
        async for chunk in request.stream():
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    return Response(status_code=201)
async def get(request):
    return FileResponse(os.path.join(root, request.path_params["name"]))
app = Starlette(routes=[Route("/raw/{name}", put, methods=["PUT"]),
                        Route("/raw/{name}", get, methods=["GET"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


# -- data -------------------------------------------------------------------------------


def artifacts(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.01:
            size = rng.randint(2 << 20, 6 << 20)
        else:
            size = int(1024 * 384 ** rng.random())
        half = size // 2
        off = rng.randrange(len(_TEXT) - (size - half) - 1) if size - half < len(_TEXT) else 0
        text = (_TEXT * (1 + (size - half) // len(_TEXT)))[off : off + size - half]
        out.append(rng.randbytes(half) + text)
    return out


def commit_artifacts(store: Store, arts: list[bytes], first: int, message: str) -> None:
    env = Env({"device": "cpu", "torch_version": "bench"})
    env_id = store.objects.put_object(env)
    for i in range(0, len(arts), 256):
        store.objects.write((0, a) for a in arts[i : i + 256])  # type: ignore[misc]
    from cas.digest import ObjectId

    changes: dict[EntryKey, Entry | None] = {
        EntryKey(env_id, "inductor", f"key{first + i:06d}"): Entry(ObjectId.of(a), len(a))
        for i, a in enumerate(arts)
    }
    history.commit_changes(store, "main", changes, message)


def write_tree(root: Path, arts: list[bytes], first: int) -> None:
    for i, a in enumerate(arts):
        d = root / f"d{(first + i) % 100:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"a{first + i:06d}.bin").write_bytes(a)


# -- measuring --------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    got = fn()
    return time.perf_counter() - t, got


def row(name: str, seconds: float, raw_bytes: int, wire: int | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "case": name,
        "seconds": round(seconds, 3),
        "bytes": raw_bytes,
        "wire_bytes": wire if wire is not None else raw_bytes,
        "MB_per_s": round(raw_bytes / seconds / 1e6, 1) if seconds > 0 else None,
        **extra,
    }


def _io(remote: Remote) -> tuple[int, int, int]:
    r: Any = remote
    return r.requests, r.bytes_sent, r.bytes_received


def cas_cases(label: str, open_remote: Callable[[], Remote], src: Store, tmp: Path,
              new_arts: list[bytes], n_first: int, total: int, new_total: int) -> Iterator[dict[str, Any]]:
    """Full push, full fetch, no-op push, +1 % push and fetch; wire bytes from the remote."""
    pusher, puller = open_remote(), open_remote()
    dst = Store.init(tmp / f"pull-{label}")

    def measure(name: str, remote: Remote, fn: Callable[[], Any], raw: int) -> dict[str, Any]:
        r0, s0, g0 = _io(remote)
        secs, res = timed(fn)
        r1, s1, g1 = _io(remote)
        return row(f"{label}: {name}", secs, raw, (s1 - s0) + (g1 - g0),
                   requests=r1 - r0, objects=res.stats.objects)

    def push() -> Any:
        return transfer.push(src, pusher, [(MAIN, MAIN)])

    def fetch() -> Any:
        return transfer.fetch(dst, puller, remote_name="origin")

    yield measure("cas push (full)", pusher, push, total)
    yield measure("cas fetch (full, into an empty store)", puller, fetch, total)
    yield measure("cas push (nothing new)", pusher, push, 0)
    yield measure("cas fetch (nothing new)", puller, fetch, 0)
    commit_artifacts(src, new_arts, n_first, "1% more")
    yield measure("cas push (+1%)", pusher, push, new_total)
    yield measure("cas fetch (+1%)", puller, fetch, new_total)
    pusher.close()
    puller.close()
    dst.close()


def _views(data: bytes, size: int = 1 << 20) -> Iterator[memoryview]:
    view = memoryview(data)
    for i in range(0, len(data), size):
        yield view[i : i + size]


def raw_http(tmp: Path, blob: bytes) -> Iterator[dict[str, Any]]:
    port = free_port()
    (tmp / "raw").mkdir()
    proc = subprocess.Popen([sys.executable, "-c", RAW_SERVER, str(tmp / "raw"), str(port)])
    url = f"http://127.0.0.1:{port}/raw/all"
    try:
        for _ in range(200):
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        with httpx.Client(timeout=600) as client:
            # Sent in 1 MiB views with a Content-Length, as HttpRemote sends packs: httpx
            # is quadratic on one huge bytes body, which would flatter cas.
            secs, _ = timed(lambda: client.put(
                url,
                content=_views(blob),  # type: ignore[arg-type]  # memoryviews work at run time
                headers={"Content-Length": str(len(blob))},
            ).raise_for_status())
            yield row("http: raw PUT (same bytes, to file + fsync)", secs, len(blob))

            def get() -> None:
                with client.stream("GET", url) as resp, open(tmp / "raw-copy", "wb") as f:
                    for chunk in resp.iter_raw(1 << 20):
                        f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())

            secs, _ = timed(get)
            yield row("http: raw GET (to file + fsync)", secs, len(blob))
    finally:
        proc.kill()
        proc.wait()


def raw_s3(weed: Seaweed, blob: bytes) -> Iterator[dict[str, Any]]:
    bucket = weed.bucket("raw-bench")
    part = 64 << 20
    keys = [f"raw/{i}" for i in range(0, len(blob), part)]

    def put() -> None:
        for key, i in zip(keys, range(0, len(blob), part), strict=True):
            weed.client.put_object(Bucket=bucket, Key=key, Body=blob[i : i + part])

    secs, _ = timed(put)
    yield row("s3: raw put_object (same bytes, 64 MiB objects)", secs, len(blob))
    secs, _ = timed(lambda: [weed.client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys])
    yield row("s3: raw get_object", secs, len(blob))


def git_cases(tmp: Path, arts: list[bytes], new_arts: list[bytes], total: int, new_total: int) -> Iterator[dict[str, Any]]:
    work, bare, clone = tmp / "git-work", tmp / "git-remote.git", tmp / "git-clone"
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@x", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@x"}

    def git(*args: str, cwd: Path = work) -> None:
        subprocess.run(["git", "-c", "gc.auto=0", *args], cwd=cwd, env=env, check=True, capture_output=True)

    work.mkdir()
    write_tree(work, arts, 0)
    git("init", "-q", "-b", "main")
    def add_commit() -> None:
        git("add", "-A")
        git("commit", "-q", "-m", "all")

    secs, _ = timed(add_commit)
    yield row("git: add + commit (not a transfer; for reference)", secs, total)
    git("init", "-q", "--bare", str(bare))
    secs, _ = timed(lambda: git("push", "-q", str(bare), "main"))
    yield row("git: push (full, to a bare repo on local disk)", secs, total, _du(bare))
    clone.mkdir()
    git("init", "-q", cwd=clone)
    secs, _ = timed(lambda: git("fetch", "-q", str(bare), "main:refs/remotes/origin/main", cwd=clone))
    yield row("git: fetch (full)", secs, total, _du(clone / ".git"))
    write_tree(work, new_arts, len(arts))
    git("add", "-A")
    git("commit", "-q", "-m", "1% more")
    before = _du(bare)
    secs, _ = timed(lambda: git("push", "-q", str(bare), "main"))
    yield row("git: push (+1%)", secs, new_total, _du(bare) - before)
    before = _du(clone / ".git")
    secs, _ = timed(lambda: git("fetch", "-q", str(bare), "main:refs/remotes/origin/main", cwd=clone))
    yield row("git: fetch (+1%)", secs, new_total, _du(clone / ".git") - before)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _opener(served: Served | None, weed: Seaweed) -> Callable[[], Remote]:
    if served is not None:
        return lambda: HttpRemote(served.url, token=served.write_token)
    return lambda: S3Remote("s3://cas-bench/bench", endpoint=weed.endpoint, region=S3_REGION,
                            access_key=S3_KEY, secret_key=S3_SECRET)


def run(scale: float = SCALE, workdir: Path | None = None, git: bool = True) -> list[dict[str, Any]]:
    """Every case once; returns one row per case."""
    tmp = Path(workdir or tempfile.mkdtemp(prefix="cas-bench-sync-"))
    n = max(100, int(10_000 * scale))
    arts = artifacts(n, seed=1)
    new_arts = artifacts(max(1, n // 100), seed=2)
    total, new_total = sum(map(len, arts)), sum(map(len, new_arts))
    rows: list[dict[str, Any]] = [
        {"case": f"data: {n} artifacts, {total / 2**20:.0f} MiB; +1%: {len(new_arts)} artifacts, "
                 f"{new_total / 2**20:.1f} MiB"}
    ]
    blob = b"".join(arts)
    weed = Seaweed(tmp / "seaweed")
    try:
        rows += raw_http(tmp, blob)
        for label in ("http", "s3"):
            src = Store.init(tmp / f"src-{label}")
            commit_artifacts(src, arts, 0, "all")
            served = Served(tmp / "served") if label == "http" else None
            if served is None:
                weed.bucket("cas-bench")
            opener = _opener(served, weed)
            try:
                rows += cas_cases(label, opener, src, tmp, new_arts, n, total, new_total)
            finally:
                if served is not None:
                    served.stop()
                src.close()
        rows += raw_s3(weed, blob)
    finally:
        weed.stop()
    if git:
        rows += git_cases(tmp, arts, new_arts, total, new_total)
    if workdir is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| case | seconds | MB/s (raw bytes) | bytes on the wire | requests |",
             "|---|---|---|---|---|"]
    for r in rows:
        if "seconds" not in r:
            lines.insert(0, f"{r['case']}\n")
            continue
        lines.append(f"| {r['case']} | {r['seconds']} | {r['MB_per_s']} | {r['wire_bytes']:,} | "
                     f"{r.get('requests') if r.get('requests') is not None else ''} |")
    return "\n".join(lines)


def test_sync_bench(benchmark: Any) -> None:
    """pytest entry (``make bench``): one run at the default scale, figures in extra_info."""
    rows: list[dict[str, Any]] = []
    benchmark.pedantic(lambda: rows.extend(run()), rounds=1, iterations=1)
    benchmark.extra_info["rows"] = rows
    by = {r["case"]: r for r in rows if "seconds" in r}
    # Only what is missing travels: the 1 % push moves about 1 % of the bytes.
    for label in ("http", "s3"):
        inc, full = by[f"{label}: cas push (+1%)"], by[f"{label}: cas push (full)"]
        assert inc["wire_bytes"] < 0.05 * full["wire_bytes"]
        assert by[f"{label}: cas push (nothing new)"]["requests"] <= 2
        assert by[f"{label}: cas fetch (nothing new)"]["requests"] <= 2


if __name__ == "__main__":
    result = run(git="--no-git" not in sys.argv)
    print(json.dumps(result, indent=2) if "--json" in sys.argv else table(result))
