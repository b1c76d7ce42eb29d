"""Push and fetch of one large pin over loopback `cas serve`, beside a raw durable write
of the same bytes, in one run (issue 20, point 4).

The pin is a commit tagged ``release/large`` holding a few large kernels (8 MiB each,
stored chunked) and many small entries, half random and half kernel-like text (about
1.5x compressible overall), ``CAS_BENCH_LARGE_MIB`` MiB in all (default 64; the figures
in docs/benchmarks.md use 256).

Cases, each timed once:

* raw: the same bytes written to a file in 1 MiB writes, then fsync (the disk's durable
  write limit for this much data, as a store's commit reaches it);
* cas push of the tag to an empty `cas serve` (durable store), through
  cas.sync.transfer, i.e. what `cas push` does;
* cas fetch of the tag from that server into an empty durable store (`cas fetch`).

Goal: push and fetch each >= 0.5x the raw write's throughput. Run:
``CAS_BENCH_LARGE_MIB=256 .venv/bin/python bench/bench_large.py`` (a markdown table), or
``.venv/bin/pytest bench/bench_large.py --benchmark-only`` (asserts the ratios).
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from servers import Served  # noqa: E402
from synth import KERNEL_TEXT  # noqa: E402

from cas import history, refs  # noqa: E402
from cas.digest import ObjectId  # noqa: E402
from cas.fsck import fsck  # noqa: E402
from cas.objects import Entry, EntryKey, Env  # noqa: E402
from cas.remote.http import HttpRemote  # noqa: E402
from cas.store import Store  # noqa: E402
from cas.sync import transfer  # noqa: E402

MIB = int(os.environ.get("CAS_BENCH_LARGE_MIB", "64"))
GOAL = 0.5
TAG = "refs/tags/release/large"
KERNEL = 8 << 20
_TEXT = KERNEL_TEXT


def artifacts(total: int, seed: int = 1) -> list[bytes]:
    """Half the bytes in KERNEL-sized kernels, half in 4-256 KiB entries; each artifact
    random and text in alternating 1 KiB blocks (so every 4 MiB chunk of a kernel
    compresses, as compiled code and headers do)."""
    rng = random.Random(seed)
    sizes = [KERNEL] * max(1, total // 2 // KERNEL)
    left = total - sum(sizes)
    while left > 0:
        sizes.append(min(left, int(4096 * 64 ** rng.random())))
        left -= sizes[-1]
    text = _TEXT * 2
    out = []
    for size in sizes:
        blocks = []
        for _ in range(0, size, 2 << 10):
            off = rng.randrange(len(_TEXT))
            blocks += (rng.randbytes(1 << 10), text[off : off + (1 << 10)])
        out.append(b"".join(blocks)[:size])
    return out


def make_pin(store: Store, arts: list[bytes]) -> None:
    env_id = store.objects.put_object(Env({"device": "cpu", "torch_version": "bench"}))
    for i in range(0, len(arts), 64):
        store.objects.write((0, a) for a in arts[i : i + 64])  # type: ignore[misc]
    changes: dict[EntryKey, Entry | None] = {
        EntryKey(env_id, "inductor", f"key{i:06d}"): Entry(ObjectId.of(a), len(a)) for i, a in enumerate(arts)
    }
    tip = history.commit_changes(store, "main", changes, "large pin")
    refs.create_tag(store, "release/large", tip, message="bench")


def raw_write(path: Path, arts: list[bytes]) -> None:
    with open(path, "wb") as f:
        for a in arts:
            view = memoryview(a)
            for i in range(0, len(view), 1 << 20):
                f.write(view[i : i + (1 << 20)])
        f.flush()
        os.fsync(f.fileno())


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cpu_of(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(out: dict[str, Any], case: str, server: int, fn: Callable[[], Any]) -> None:
    """Wall seconds of ``fn``, and the CPU seconds it cost this process and the server:
    on a loaded shared machine CPU time tells a change apart where wall time cannot."""
    me, them = cpu_of(os.getpid()), cpu_of(server)
    out[f"{case}_s"] = timed(fn)
    out[f"{case}_client_cpu_s"] = round(cpu_of(os.getpid()) - me, 2)
    out[f"{case}_server_cpu_s"] = round(cpu_of(server) - them, 2)


def run(mib: int = MIB, workdir: Path | None = None) -> dict[str, Any]:
    """Raw write, push, fetch, once each; seconds and ratios of raw throughput."""
    tmp = Path(workdir or tempfile.mkdtemp(prefix="cas-bench-large-"))
    arts = artifacts(mib << 20)
    total = sum(map(len, arts))
    src = Store.init(tmp / "src")
    make_pin(src, arts)
    (tmp / "served").mkdir()
    served = Served(tmp / "served")
    out: dict[str, Any] = {"MiB": round(total / 2**20), "artifacts": len(arts), "load": os.getloadavg()[0]}
    try:
        out["raw_write_s"] = timed(lambda: raw_write(tmp / "raw.bin", arts))
        server = served.server.proc.pid
        pusher = HttpRemote(served.url, token=served.write_token)
        measured(out, "push", server, lambda: transfer.push(src, pusher, [(TAG, TAG)]))
        pusher.close()
        dst = Store.init(tmp / "dst")
        fetcher = HttpRemote(served.url, token=served.read_token)
        measured(out, "fetch", server, lambda: transfer.fetch(dst, fetcher, remote_name="origin"))
        fetcher.close()
        assert dst.refs.get(TAG) == src.refs.get(TAG)
        out["fsck_ok"] = fsck(dst).ok  # after the timing: a full re-hash of the copy
        dst.close()
    finally:
        served.stop()
        src.close()
        if workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    for case in ("push", "fetch"):
        out[f"{case}_ratio"] = round(out["raw_write_s"] / out[f"{case}_s"], 3)
        out[f"{case}_MBps"] = round(total / out[f"{case}_s"] / 1e6, 1)
    out["raw_MBps"] = round(total / out["raw_write_s"] / 1e6, 1)
    return out


def test_large_pin(benchmark: Any) -> None:
    """pytest entry (``make bench``): one run, figures in extra_info, ratios asserted."""
    got: dict[str, Any] = {}
    benchmark.pedantic(lambda: got.update(run()), rounds=1, iterations=1)
    benchmark.extra_info.update(got)
    assert got["fsck_ok"]
    unmet = [f"{case} {got[case + '_ratio']}x" for case in ("push", "fetch") if got[case + "_ratio"] < GOAL]
    if unmet:
        # Not met yet (docs/benchmarks.md, "Copies and hash passes of a received byte":
        # 0.12-0.15x): every byte is still decompressed and hashed 1.5 times on each
        # side, plus the pack trailer's hash, a walk per entry and 9-11 durable commits,
        # while the baseline is one sequential write and one fsync.
        pytest.xfail(f"{', '.join(unmet)} of a raw durable write, goal {GOAL}x")


if __name__ == "__main__":
    print(run())
