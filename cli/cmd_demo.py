"""``cas demo``: the README workflow, end to end, on loopback.

1. machine A (an empty torch cache dir and an empty ``TMPDIR``): ``cas run --record``
   of a program that compiles a model, into the store (``--store``, default store);
2. ``cas serve`` on 127.0.0.1 (a fresh server store), and ``cas push`` of the branch;
3. ``cas clone --env current --trusted`` into a second store;
4. machine B (empty cache dir, empty ``TMPDIR``): ``cas run --ref`` of the same program
   from the clone;
5. a table: times, torch's cache hits, C++ compiler runs, bytes moved; the server stops.

Every step is the real command line in its own process, so what the demo shows is what
a user gets. Nothing leaves the machine: the server listens on loopback only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from cas.errors import TorchError
from cas_cli.cmd_serve import announced
from cas_cli.context import Context, pass_ctx

CAS = [sys.executable, "-m", "cas_cli.main"]


#: What machine A reads: a ref nothing creates, so it compiles cold even when the store
#: already holds this model (a second `cas demo` on the same store); it still records to
#: the branch.
COLD_REF = "refs/cas-demo/nothing"


def _machine(root: Path) -> dict[str, str]:
    """A new machine's env: empty torch cache dir, empty ``TMPDIR``, empty cas env cache."""
    (root / "cache").mkdir(parents=True)
    (root / "tmp").mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("CAS_DIR", "TORCHINDUCTOR_CACHE_DIR")}
    env.update(TORCHINDUCTOR_CACHE_DIR=str(root / "cache"), TMPDIR=str(root / "tmp"),
               CAS_TORCH_ENV_CACHE=str(root / "env-cache"))
    return env


def _cas(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*CAS, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise TorchError(f"demo step `cas {' '.join(args[:3])}` failed (exit {proc.returncode}): {tail[0]}")
    return proc


def _json_tail(text: str) -> dict[str, Any]:
    """The last JSON document in ``text`` (``cas --json`` output, or a summary line)."""
    start = text.rfind("\n{")
    start = 0 if start < 0 else start + 1
    while start >= 0:
        try:
            out: dict[str, Any] = json.loads(text[start:])
            return out
        except ValueError:
            start = text.rfind("\n{", 0, max(start - 1, 0))
            start = -1 if start < 0 else start + 1
    return {}


def _run_machine(store: Path, root: Path, program: list[str], *run_args: str) -> dict[str, Any]:
    start = time.perf_counter()
    proc = _cas("--store", str(store), "--json", "run", *run_args, "--", *program, env=_machine(root))
    wall = time.perf_counter() - start
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("CAS-DEMO ")), None)
    if line is None:
        raise TorchError("the demo program printed no result", hint=proc.stderr.strip()[-300:])
    out: dict[str, Any] = json.loads(line[len("CAS-DEMO "):])
    summary: dict[str, Any] = next(
        (json.loads(ln) for ln in reversed(proc.stderr.splitlines()) if ln.startswith("{")), {})
    builds = sum(int(r["count"]) for r in summary.get("warmth", {}).get("rebuilds", [])
                 if str(r["kind"]).startswith("cpp"))
    out.update(wall_s=wall, summary=summary, cxx_builds=builds)
    return out


def _serve(store: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`cas serve` on a free port (``--port 0``: no port picked here that another process
    could take first); the server and the URL it printed once it listened."""
    _cas("--store", str(store), "init")
    with open(log, "wb") as out:
        server = subprocess.Popen([*CAS, "--store", str(store), "serve", "--host", "127.0.0.1",
                                   "--port", "0", "--no-auth"], stdout=out, stderr=out)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        said = announced(log.read_text(errors="replace"))
        if said is not None:
            return server, said.url
        if server.poll() is not None:
            raise TorchError(f"cas serve exited early (exit {server.returncode})", hint=f"see {log}")
        time.sleep(0.1)
    server.terminate()
    raise TorchError("cas serve did not start listening within 60 s", hint=f"see {log}")


def _hits(counters: dict[str, dict[str, int]]) -> str:
    ind, aot = counters.get("inductor", {}), counters.get("aot_autograd", {})
    return (f"fx {ind.get('fxgraph_cache_hit', 0)} hit / {ind.get('fxgraph_cache_miss', 0)} miss, "
            f"aot {aot.get('autograd_cache_hit', 0)} hit / {aot.get('autograd_cache_miss', 0)} miss")


def _precompiled(result: dict[str, Any]) -> str:
    pre = result["summary"].get("precompile")
    return f"{pre['loaded']} loaded, {pre['traced']} traced" if pre else "off"


def _moved(result: dict[str, Any]) -> int:
    """Bytes a transfer put on the wire (raw bytes when it does not say)."""
    return int(result.get("wire_bytes") or result.get("bytes") or 0)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@click.command()
@click.option("--model", type=click.Choice(["mlp", "transformer"]), default="mlp", show_default=True)
@click.option("--small", is_flag=True, help="A smaller model (faster; for tests).")
@click.option("-b", "--branch", default="main", show_default=True)
@click.option("--precompile", is_flag=True, help="Both machines run with cas run --precompile (docs/torch.md).")
@pass_ctx
def demo(ctx: Context, model: str, small: bool, branch: str, precompile: bool) -> None:
    """Record a compile, push it through a loopback `cas serve`, clone, and start warm."""
    program = [sys.executable, "-m", "cas.torch.demo", "--model", model] + (["--small"] if small else [])
    with tempfile.TemporaryDirectory(prefix="cas-demo-") as tmp:
        work = Path(tmp)
        ctx.info(f"1/4 machine A: cas run --record {branch} -- python -m cas.torch.demo (compiles cold) ...")
        pre = ("--precompile",) if precompile else ()
        a = _run_machine(ctx.store_path, work / "a", program, *pre, "--ref", COLD_REF, "--record", branch)
        server, url = _serve(work / "server-store", work / "serve.log")
        ctx.info(f"2/4 cas serve on {url}; cas push {branch} ...")
        try:
            pushed = _json_tail(_cas("--store", str(ctx.store_path), "--json", "push", url, branch).stdout)
            ctx.info("3/4 cas clone --env current --trusted into a second store ...")
            clone = work / "b-store"
            cloned = _json_tail(_cas("--json", "clone", url, str(clone), "--env", "current", "--trusted").stdout)
        finally:
            server.terminate()
            server.wait(timeout=30)
        ctx.info(f"4/4 machine B (empty torch caches and TMPDIR): cas run --ref {branch} ...")
        b = _run_machine(clone, work / "b", program, *pre, "--ref", branch)
    moved = {"push": _moved(pushed), "clone": _moved(cloned)}
    data = {"model": model, "store": str(ctx.store_path), "branch": branch, "machine_a": a,
            "machine_b": b, "bytes_moved": moved, "speedup": a["first_call_s"] / b["first_call_s"]}
    ctx.emit(data, None)
    if ctx.as_json:
        return
    table = Table(title=f"cas demo: {model}, README workflow over loopback", show_edge=False)
    for col in ("machine", "first call", "process", "torch caches", "precompiled", "C++ compiler runs",
                "bytes moved"):
        table.add_column(col)
    cold = not any(n for kind in a["counters"].values() for name, n in kind.items() if name.endswith("_hit"))
    table.add_row(f"A: cas run --record ({'cold' if cold else 'not cold'})", f"{a['first_call_s']:.2f} s", f"{a['wall_s']:.2f} s",
                  _hits(a["counters"]), _precompiled(a), str(a["cxx_builds"]), f"push {_mb(moved['push'])}")
    table.add_row("B: cas run --ref (clone)", f"{b['first_call_s']:.2f} s", f"{b['wall_s']:.2f} s",
                  _hits(b["counters"]), _precompiled(b), str(b["cxx_builds"]), f"clone {_mb(moved['clone'])}")
    ctx.out.print(table)
    warm = b["summary"].get("warmth", {})
    ctx.out.print(f"machine B {warm.get('headline', 'start: ?')}; first call {data['speedup']:.1f}x faster "
                  f"than cold; server stopped")


def register(cli: click.Group) -> None:
    cli.add_command(demo)
