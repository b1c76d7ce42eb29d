"""First compiled call, four ways, side by side in one run (fresh process per measurement).

For the MLP (512→1024→1024→10, batch 64) and ``nn.TransformerEncoderLayer(256, 8, 1024)``
on (8, 128, 256) with the MHA fast path off, inference under ``no_grad``:

- **cold**: a new machine: empty torch cache dir and empty ``$TMPDIR`` (torch's default
  dir, where it keeps precompiled headers);
- **warm local**: the cache dir and ``$TMPDIR`` a cold run left (torch's own warm cache);
- **mega-cache**: a new machine, ``torch.compiler.load_cache_artifacts`` of the cold
  run's ``save_cache_artifacts()`` first (load time included);
- **cas hydrate**: a new machine, ``cas.torch.hydrate`` from a store the cold run
  captured into (store open, env and hydrate time included).

Each cell is the median of ``--runs`` fresh processes. The imports every compile needs
(``torch``, ``torch._dynamo``, ``torch._inductor``) happen before the timer in all four,
so each time is the preparation (load / hydrate) plus ``torch.compile`` and the first
call. Prints a Markdown table and, with ``--json FILE``, the raw numbers.

    .venv/bin/python bench/bench_torch.py [--runs 3] [--models mlp transformer]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

WAYS = ("cold", "warm local", "mega-cache", "cas hydrate")


def child(args: argparse.Namespace) -> None:
    """One measurement, in this fresh process."""
    import warnings

    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch
    import torch._dynamo  # noqa: F401  (imported by torch.compile anyway: not timed)
    import torch._inductor.codecache  # noqa: F401

    from cas.store import Store
    from cas.torch import capture, hydrate
    from cas.torch.demo import cache_counters, first_call

    t0 = time.perf_counter()
    if args.load_megacache:
        torch.compiler.load_cache_artifacts(Path(args.load_megacache).read_bytes())
    if args.hydrate:
        with Store(args.hydrate) as store:
            hydrated = hydrate(store, "main", background=True)
    prepare = time.perf_counter() - t0
    first = first_call(args.model)
    if args.hydrate:
        hydrated.wait()
    out = {"prepare_s": prepare, "first_call_s": first, "total_s": prepare + first,
           "counters": cache_counters()}
    if args.save_megacache:
        saved = torch.compiler.save_cache_artifacts()
        Path(args.save_megacache).write_bytes(saved[0] if saved else b"")
    if args.capture:
        with Store(args.capture) as store:
            capture(store, message=f"bench {args.model}", compile_seconds=first)
    print("BENCH " + json.dumps(out), flush=True)
    os._exit(0)


def measure(model: str, machine: Path, *extra: str) -> dict[str, Any]:
    """One fresh process on "machine" (a dir holding its cache dir and $TMPDIR)."""
    (machine / "tmp").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(machine / "cache"), TMPDIR=str(machine / "tmp"))
    cmd = [sys.executable, __file__, "--child", "--model", model, *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH "):
            return dict(json.loads(line[6:]))
    raise SystemExit(f"measurement failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")


def bench_model(model: str, runs: int, work: Path) -> dict[str, list[dict[str, Any]]]:
    from cas.store import Store

    store = work / f"{model}-store"
    Store.init(store).close()
    mega = work / f"{model}-mega.bin"
    out: dict[str, list[dict[str, Any]]] = {w: [] for w in WAYS}
    cold_dir = work / f"{model}-cold-0"
    for i in range(runs):
        d = work / f"{model}-cold-{i}"
        extra = ["--capture", str(store), "--save-megacache", str(mega)] if i == 0 else []
        out["cold"].append(measure(model, d, *extra))
        print(f"  {model} cold {i + 1}/{runs}: {out['cold'][-1]['total_s']:.2f} s", file=sys.stderr)
    for i in range(runs):
        out["warm local"].append(measure(model, cold_dir))
        d = work / f"{model}-mega-{i}"
        out["mega-cache"].append(measure(model, d, "--load-megacache", str(mega)))
        d = work / f"{model}-cas-{i}"
        out["cas hydrate"].append(measure(model, d, "--hydrate", str(store)))
        print(f"  {model} warm/mega/cas {i + 1}/{runs}: "
              + " / ".join(f"{out[w][-1]['total_s']:.2f}" for w in WAYS[1:]) + " s", file=sys.stderr)
    return out


def table(results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    lines = ["| model | " + " | ".join(WAYS) + " | cas / warm | cas / cold |",
             "|---|" + "---|" * (len(WAYS) + 2)]
    for model, ways in results.items():
        med = {w: statistics.median(r["total_s"] for r in ways[w]) for w in WAYS}
        cells = []
        for w in WAYS:
            runs = ", ".join(f"{r['total_s']:.2f}" for r in ways[w])
            cells.append(f"**{med[w]:.2f} s** [{runs}]")
        lines.append(f"| {model} | " + " | ".join(cells)
                     + f" | {med['cas hydrate'] / med['warm local']:.2f}× | {med['cas hydrate'] / med['cold']:.2f}× |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="mlp")
    p.add_argument("--models", nargs="+", default=["mlp", "transformer"])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--json", dest="json_out")
    p.add_argument("--load-megacache")
    p.add_argument("--save-megacache")
    p.add_argument("--hydrate")
    p.add_argument("--capture")
    args = p.parse_args()
    if args.child:
        child(args)
        return
    work = Path(tempfile.mkdtemp(prefix="cas-bench-"))
    try:
        results = {m: bench_model(m, args.runs, work) for m in args.models}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(results))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))


def test_first_call_bench(benchmark: Any) -> None:
    """pytest entry (``make bench``): one side-by-side run of the MLP, 1 run per way
    (``python bench/bench_torch.py --runs 3`` gives the medians in docs/benchmarks.md)."""
    work = Path(tempfile.mkdtemp(prefix="cas-bench-"))
    results: dict[str, Any] = {}
    try:
        benchmark.pedantic(lambda: results.update(mlp=bench_model("mlp", 1, work)),
                           rounds=1, iterations=1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ways = results["mlp"]
    med = {w: statistics.median(r["total_s"] for r in ways[w]) for w in WAYS}
    benchmark.extra_info.update({w: med[w] for w in WAYS})
    benchmark.extra_info["cas_over_warm"] = med["cas hydrate"] / med["warm local"]
    benchmark.extra_info["cas_over_cold"] = med["cas hydrate"] / med["cold"]
    # Goals: <= 1.0x warm local and <= 0.35x cold; one run on a shared machine is noisy,
    # so the asserted bound leaves a margin on the warm ratio.
    assert med["cas hydrate"] <= 0.35 * med["cold"]
    assert med["cas hydrate"] <= 1.3 * med["warm local"]


if __name__ == "__main__":
    main()
