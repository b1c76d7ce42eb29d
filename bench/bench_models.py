"""Models nobody here wrote, on a new machine: GPT-2 and BERT from ``transformers``.

Both are built from small configs with random weights (no download): GPT-2 (2 layers,
width 64) with one training step (forward, loss, backward); BERT (2 layers, width 64)
in inference with dynamic batch sizes (batch 4, then 8 and 16 on the same graph).
Needs the ``bench`` extra (``pip install -e '.[bench]'``); never a runtime dependency.

Three ways per model, each the first compiled call in a fresh process:

- **cold**: a new machine (empty torch cache dir, empty ``TMPDIR``), under
  ``cas run --record main`` (which records it into store A);
- **torch warm local**: machine A again, plain python, torch's own warm caches;
- **cas new machine**: store A pushed to a ``cas serve`` on loopback, ``cas clone
  --env current --trusted`` into store B, then ``cas run --ref main`` on a new machine.

Reports times, torch's FX/AOT hits, the C++ builds torch did (cas run's warmth report)
and the bytes the clone moved (and how many of them were precompiled headers).

    .venv/bin/python bench/bench_models.py [--models gpt2 bert] [--reps 3]

With ``--reps N`` the warm ways run N rounds, alternating, and the table gives each way's
median; cold runs once. A fourth way, plain python again on the machine cas hydrated,
tells cas's cost inside the process apart from what the hydrated cache lacks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CAS = str(Path(sys.executable).parent / "cas")
WAYS = ("cold", "torch warm local", "cas new machine")
#: Not a goal: plain python again on the machine ``cas run`` just hydrated. Against "cas
#: new machine" it isolates what cas costs inside the process (hooks, live backend, the
#: header written in the background); against "torch warm local", what the hydrated
#: cache lacks.
HYDRATED = "torch warm, hydrated by cas"


def child(model: str) -> None:
    """One first compiled call of ``model``, in this fresh process."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    import transformers

    from cas.torch.demo import cache_counters

    torch.manual_seed(0)
    if model == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=512, n_positions=64)
        net = transformers.GPT2LMHeadModel(cfg)
        ids = torch.randint(0, 512, (2, 32))
        compiled = torch.compile(net)
        start = time.perf_counter()
        compiled(input_ids=ids, labels=ids).loss.backward()  # one training step
        first = time.perf_counter() - start
    else:
        cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=128, vocab_size=512, max_position_embeddings=64)
        net = transformers.BertModel(cfg).eval()
        compiled = torch.compile(net, dynamic=True)
        start = time.perf_counter()
        with torch.no_grad():
            compiled(input_ids=torch.randint(0, 512, (4, 32)))
            first = time.perf_counter() - start
            for batch in (8, 16):  # dynamic batch sizes: the same graph serves them
                compiled(input_ids=torch.randint(0, 512, (batch, 32)))
    print("BENCH " + json.dumps({"first_call_s": first, "counters": cache_counters(), **_diagnosis()}),
          flush=True)


def _diagnosis() -> dict[str, Any]:
    """Every torch counter and torch's own per-phase compile times: what to compare when a
    warm start is slower than torch's own warm cache (docs/benchmarks.md)."""
    from torch._dynamo import utils

    counters = utils.counters
    phases: dict[str, float] = {}
    try:  # what dynamo_timed measured, per phase (torch's private table; absent: no phases)
        for name, values in utils.compilation_time_metrics.items():
            phases[name] = round(sum(values), 3)
    except Exception:
        pass
    return {"all_counters": {k: dict(v) for k, v in counters.items() if v}, "phases_s": phases}


def _machine(root: Path) -> dict[str, str]:
    (root / "cache").mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("CAS_DIR", "TORCHINDUCTOR_CACHE_DIR")}
    env.update(TORCHINDUCTOR_CACHE_DIR=str(root / "cache"), TMPDIR=str(root / "tmp"))
    return env


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:6]} failed:\n{proc.stderr[-3000:]}")
    return proc


def _measure(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    start = time.perf_counter()
    proc = _run(cmd, env)
    out: dict[str, Any] = {"process_s": time.perf_counter() - start}
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH "):
            out.update(json.loads(line[6:]))
    summary = [json.loads(ln) for ln in proc.stderr.splitlines() if ln.startswith("{")]
    if summary:
        rebuilds = summary[-1].get("warmth", {}).get("rebuilds", [])
        out["cxx_builds"] = sum(int(r["count"]) for r in rebuilds if str(r["kind"]).startswith("cpp"))
        out["fully_warm"] = summary[-1].get("warmth", {}).get("fully_warm")
    return out


def _serve(store: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _run([CAS, "--store", str(store), "init"])
    server = subprocess.Popen([CAS, "--store", str(store), "serve", "--port", str(port), "--no-auth"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    server.terminate()
    raise SystemExit("cas serve did not start")


def _header_bytes(store: Path) -> tuple[int, int]:
    """The precompiled headers of ``main``: raw bytes, and bytes as stored (what they
    cost on the wire, sent as their stored frames)."""
    from cas import manifest
    from cas.refs import load_commit, resolve
    from cas.store import Store

    with Store(store) as s:
        root = load_commit(s, resolve(s, "main")).manifest
        raw = stored = 0
        for k, e in manifest.entries(s, root):
            if k.kind == "cpp_pch":
                raw += e.size
                for part in s.objects.chunk_ids(e.blob) or [e.blob]:
                    rec = s.objects.record(part)
                    stored += rec.stored_size if rec is not None else 0
        return raw, stored


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median first call, every first call kept in ``runs_s``."""
    ordered = sorted(runs, key=lambda r: float(r["first_call_s"]))
    return {**ordered[(len(ordered) - 1) // 2], "runs_s": [round(r["first_call_s"], 2) for r in runs]}


def run(models: list[str], work: Path, reps: int = 1) -> dict[str, Any]:
    store_a = work / "store-a"
    me = [sys.executable, __file__, "--child", "--model"]
    out: dict[str, Any] = {m: {} for m in models}
    for m in models:
        print(f"{m}: cold (cas run --record) ...", file=sys.stderr)
        out[m]["cold"] = _measure([CAS, "--store", str(store_a), "--json", "run", "--record", "main", "--",
                                   *me, m], _machine(work / f"a-{m}"))
        print(f"{m}: torch warm local ...", file=sys.stderr)
        out[m]["torch warm local"] = _measure([*me, m], _machine(work / f"a-{m}"))
    server, url = _serve(work / "server")
    try:
        pushed = json.loads(_run([CAS, "--store", str(store_a), "--json", "push", url, "main"]).stdout)
        cloned = json.loads(_run([CAS, "--json", "clone", url, str(work / "store-b"), "--env", "current",
                                  "--trusted"]).stdout)
    finally:
        server.terminate()
        server.wait(timeout=30)
    # The warm ways alternate, rep by rep, so load from elsewhere hits them alike.
    warm: dict[str, dict[str, list[dict[str, Any]]]] = {m: {w: [] for w in (*WAYS[1:], HYDRATED)} for m in models}
    for rep in range(reps):
        for m in models:
            print(f"{m}: warm ways, round {rep + 1} of {reps} ...", file=sys.stderr)
            if rep:
                warm[m]["torch warm local"].append(_measure([*me, m], _machine(work / f"a-{m}")))
            else:
                warm[m]["torch warm local"].append(out[m]["torch warm local"])
            b = _machine(work / f"b-{m}-{rep}")
            warm[m]["cas new machine"].append(_measure([CAS, "--store", str(work / "store-b"), "--json", "run",
                                                        "--ref", "main", "--", *me, m], b))
            warm[m][HYDRATED].append(_measure([*me, m], b))
    for m in models:
        out[m].update({w: _median_run(runs) for w, runs in warm[m].items()})
    headers_raw, headers_stored = _header_bytes(work / "store-b")
    out["bytes"] = {"push_wire": pushed.get("wire_bytes"), "clone_wire": cloned.get("wire_bytes") or cloned.get("bytes"),
                    "clone_raw": cloned.get("bytes"), "headers_raw": headers_raw, "headers_stored": headers_stored}
    return out


def table(out: dict[str, Any]) -> str:
    lines = ["| model | " + " | ".join(WAYS) + f" | cas / cold | cas / warm local | cas C++ builds | cas FX/AOT | {HYDRATED} |",
             "|---|" + "---|" * (len(WAYS) + 5)]
    for m, ways in out.items():
        if m == "bytes":
            continue
        first = {w: ways[w]["first_call_s"] for w in WAYS}
        cas = ways["cas new machine"]
        ind, aot = cas["counters"].get("inductor", {}), cas["counters"].get("aot_autograd", {})
        hits = (f"{ind.get('fxgraph_cache_hit', 0)}/{ind.get('fxgraph_cache_miss', 0)}, "
                f"{aot.get('autograd_cache_hit', 0)}/{aot.get('autograd_cache_miss', 0)} (hit/miss)")
        lines.append(f"| {m} | " + " | ".join(f"{first[w]:.2f} s" for w in WAYS)
                     + f" | {first['cas new machine'] / first['cold']:.2f}× | "
                     f"{first['cas new machine'] / first['torch warm local']:.2f}× | {cas.get('cxx_builds')} | {hits} | "
                     f"{ways[HYDRATED]['first_call_s']:.2f} s |")
        if len(ways["cas new machine"].get("runs_s", [])) > 1:
            lines.append(f"| {m}, every run | {ways['cold']['first_call_s']:.2f} | "
                         + " | ".join(", ".join(f"{x:.2f}" for x in ways[w]["runs_s"]) for w in WAYS[1:])
                         + " | | | | | " + ", ".join(f"{x:.2f}" for x in ways[HYDRATED]["runs_s"]) + " |")
    b = out["bytes"]
    lines.append(f"\nclone moved {b['clone_wire'] / 1e6:.1f} MB on the wire ({b['clone_raw'] / 1e6:.1f} MB raw), "
                 f"of which precompiled headers {b.get('headers_stored', 0) / 1e6:.1f} MB "
                 f"({b['headers_raw'] / 1e6:.1f} MB raw); without headers a new machine pulls "
                 f"{(b['clone_wire'] - b.get('headers_stored', 0)) / 1e6:.1f} MB "
                 f"({(b['clone_raw'] - b['headers_raw']) / 1e6:.1f} MB raw); the push sent {b['push_wire'] / 1e6:.1f} MB")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="gpt2")
    p.add_argument("--models", nargs="+", default=["gpt2", "bert"])
    p.add_argument("--reps", type=int, default=1, help="rounds of the warm ways (medians reported)")
    p.add_argument("--json", dest="json_out")
    args = p.parse_args()
    if args.child:
        child(args.model)
        return
    work = Path(tempfile.mkdtemp(prefix="cas-bench-models-"))
    try:
        out = run(args.models, work, args.reps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(out))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
