"""Models nobody here wrote, on a new machine, with dynamo's precompiled units: GPT-2
(inference, and one training step), BERT with a dynamic batch and a ResNet (a vision
model, another family: convolutions, batch norm, pooling), all from ``transformers``.

Each is built from a small config with random weights (no download) and dropout off, so
eager and compiled compute the same function. Needs the ``bench`` extra (``pip install
-e '.[bench]'``); never a runtime dependency.

Ways per model, each the compile and first step in a fresh process (``torch.compile``
through the step's last output: a unit is loaded at the ``torch.compile`` call):

- **cold**: plain python on a new machine (empty torch cache dir, empty ``TMPDIR``);
- **torch warm local**: plain python again on that machine, torch's own warm caches;
- **cas record**: ``cas run --precompile --record main`` on another new machine (store A);
- **cas new machine**: store A pushed to a ``cas serve`` on loopback, ``cas clone --env
  current --trusted`` into store B, then ``cas run --precompile --ref main`` on a new
  machine (empty cache dir and ``TMPDIR``).

Every step's outputs (logits; for training the loss and every gradient) are checked
against eager in the same process; a difference ends the run. Each process also reports
torch's per-phase times (``torch._dynamo.utils.compilation_time_metrics``, what
``dynamo_timed`` measured) and a few timers of our own around torch's loading functions
(the unit's unpickle, the precompiled-header check, the ISA probe, ``.so`` loads).

    .venv/bin/python bench/bench_models.py [--models gpt2 gpt2-train bert resnet] [--reps 3]

With ``--reps N`` the warm ways run N rounds, alternating, and the table gives each way's
median; the cold ways run once. ``--ab-prewarm`` adds a fourth warm way: the new machine
with ``CAS_PREWARM=0`` (torch runs its ISA probe and header check itself, when it loads
the first kernel), for a same-run comparison; ``process`` is each process's wall time
(interpreter start, imports and the model's build included).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

CAS = str(Path(sys.executable).parent / "cas")
MODELS = ("gpt2", "gpt2-train", "bert", "resnet")
COLD, WARM, RECORD, NEW = "cold", "torch warm local", "cas record", "cas new machine"
#: ``--ab-prewarm``: the new machine again with torch's C++ load checks left where torch
#: runs them (``CAS_PREWARM=0``, cas.torch.prewarm), in the same rounds.
NEW_LATE = "cas new machine, checks not early"
#: The phases the table shows: (column, torch's ``dynamo_timed`` names or our own timers, summed).
PHASES = (
    ("tracing", ("bytecode_tracing",)),
    ("guards", ("build_guards", "precompile_load_guards", "precompile_build_guards")),
    ("unit read", ("unit_read",)),
    ("AOT load", ("after_deserialization", "AOTAutogradCache.inductor_load")),
    ("module load", ("PyCodeCache.load_by_key_path",)),
)
#: Our own timers inside module load (point 4 of issue 17): the functions torch calls on
#: every warm start before a C++ kernel runs.
LOAD_PARTS = ("header_check", "isa_probe", "so_load")
#: Tolerance of the eager check: inductor reorders float sums.
ATOL = RTOL = 1e-4


def _no_grad(fn: Callable[[], list[Any]]) -> list[Any]:
    import torch

    with torch.no_grad():
        return fn()


def _build(model: str) -> tuple[Any, Callable[[Any], list[Any]], dict[str, Any]]:
    """``model``'s module, one step (``step(fn)`` calls ``fn`` as the model and returns
    every output to check) and the ``torch.compile`` options."""
    import torch
    import transformers

    torch.manual_seed(0)
    if model.startswith("gpt2"):
        cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=512, n_positions=64,
                                      bos_token_id=0, eos_token_id=0,
                                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        net = transformers.GPT2LMHeadModel(cfg)
        ids = torch.randint(0, 512, (2, 32))
        if model == "gpt2":
            net.eval()
            return net, lambda f: _no_grad(lambda: [f(input_ids=ids).logits]), {}

        def train_step(f: Any) -> list[Any]:  # forward, loss, backward: the loss and every grad
            net.zero_grad(set_to_none=True)
            loss = f(input_ids=ids, labels=ids).loss
            loss.backward()
            return [loss.detach(), *(p.grad.clone() for p in net.parameters() if p.grad is not None)]
        return net, train_step, {}
    if model == "bert":
        cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=128, vocab_size=512, max_position_embeddings=64)
        net = transformers.BertModel(cfg).eval()
        batches = [torch.randint(0, 512, (b, 32)) for b in (4, 8, 16)]  # one dynamic graph serves all
        return net, lambda f: _no_grad(lambda: [f(input_ids=x).last_hidden_state for x in batches]), \
            {"dynamic": True}
    cfg = transformers.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                    num_labels=10)
    net = transformers.ResNetForImageClassification(cfg).eval()
    images = torch.randn(2, 3, 64, 64)
    return net, lambda f: _no_grad(lambda: [f(pixel_values=images).logits]), {}


class _Timers:
    """Seconds spent in a few of torch's functions, wrapped in this process only."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, owner: Any, name: str, label: str, classmethod_: bool = False) -> None:
        raw = owner.__dict__[name].__func__ if classmethod_ else getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return raw(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - start
        setattr(owner, name, classmethod(timed) if classmethod_ else timed)


def _timers() -> _Timers:
    from torch._dynamo import package
    from torch._inductor import codecache, cpu_vec_isa

    t = _Timers()
    t.wrap(package.DynamoCache, "load", "unit_read")
    t.wrap(codecache, "_precompile_header", "header_check")
    for owner in (codecache, cpu_vec_isa):
        t.wrap(owner, "pick_vec_isa", "isa_probe")
    t.wrap(codecache.CppPythonBindingsCodeCache, "_load_library_inner", "so_load", classmethod_=True)
    _time_subprocesses(t)
    return t


def _time_subprocesses(t: _Timers) -> None:
    """Seconds in each program torch runs (``g++ -E``/``-v``, ``openssl``, the ISA probe's
    python), as ``run:<program>``: ``subprocess.run`` is what ``check_output`` calls."""
    import subprocess as sp

    raw = sp.run

    def run(args: Any, *a: Any, **kw: Any) -> Any:
        argv = [args] if isinstance(args, str) else list(args)
        label = "run:" + Path(str(argv[0]).split()[0]).name if argv else "run:?"
        start = time.perf_counter()
        try:
            return raw(args, *a, **kw)
        finally:
            t.seconds[label] = t.seconds.get(label, 0.0) + time.perf_counter() - start
    sp.run = run  # type: ignore[assignment]


def child(model: str) -> None:
    """The compile and first step of ``model`` in this fresh process, checked against eager."""
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    from torch._dynamo.utils import compilation_time_metrics, counters

    from cas.torch import _compat
    from cas.torch.demo import cache_counters

    net, step, opts = _build(model)
    expected = step(net)
    timers = _timers()
    start = time.perf_counter()
    got = step(torch.compile(net, **opts))
    first = time.perf_counter() - start
    diff = max(float((a - b).abs().max()) for a, b in zip(got, expected, strict=True))
    if not all(torch.allclose(a, b, atol=ATOL, rtol=RTOL) for a, b in zip(got, expected, strict=True)):
        raise SystemExit(f"{model}: compiled output differs from eager (max abs diff {diff:.2e})")
    phases = {k: round(sum(v), 3) for k, v in compilation_time_metrics.items()}
    phases.update({k: round(v, 3) for k, v in timers.seconds.items()})
    print("BENCH " + json.dumps({"first_call_s": first, "max_diff": diff, "counters": cache_counters(),
                                 "frames": dict(counters["frames"]), "phases_s": phases,
                                 "unrecorded": _compat.unrecorded_units()}), flush=True)


def _machine(root: Path) -> dict[str, str]:
    (root / "cache").mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("CAS_DIR", "TORCHINDUCTOR_CACHE_DIR")}
    env.update(TORCHINDUCTOR_CACHE_DIR=str(root / "cache"), TMPDIR=str(root / "tmp"))
    return env


def _run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:6]} failed:\n{proc.stdout[-1000:]}\n{proc.stderr[-3000:]}")
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
        warmth = summary[-1].get("warmth") or {}
        rebuilds = warmth.get("rebuilds", [])
        out["cxx_builds"] = sum(int(r["count"]) for r in rebuilds if str(r["kind"]).startswith("cpp"))
        out["precompile"] = summary[-1].get("precompile")
        out["refused"] = [r["what"] for r in rebuilds if r["kind"] == "precompile"]
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


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median first step, every first step kept in ``runs_s``."""
    ordered = sorted(runs, key=lambda r: float(r["first_call_s"]))
    return {**ordered[(len(ordered) - 1) // 2], "runs_s": [round(r["first_call_s"], 2) for r in runs],
            "process_runs_s": [round(r["process_s"], 2) for r in runs]}


def _clone(work: Path) -> dict[str, Any]:
    """Store A to a ``cas serve``, cloned from there into store B (the new machine's)."""
    server, url = _serve(work / "server")
    try:
        pushed = json.loads(_run([CAS, "--store", str(work / "store-a"), "--json", "push", url, "main"]).stdout)
        cloned = json.loads(_run([CAS, "--json", "clone", url, str(work / "store-b"), "--env", "current",
                                  "--trusted"]).stdout)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {"push_wire": pushed.get("wire_bytes"), "clone_wire": cloned.get("wire_bytes") or cloned.get("bytes"),
            "clone_raw": cloned.get("bytes")}


def run(models: list[str], work: Path, reps: int = 1, ab_prewarm: bool = False) -> dict[str, Any]:
    me = [sys.executable, __file__, "--child", "--model"]
    record = [CAS, "--store", str(work / "store-a"), "--json", "run", "--precompile", "--record", "main", "--"]
    load = [CAS, "--store", str(work / "store-b"), "--json", "run", "--precompile", "--ref", "main", "--"]
    out: dict[str, Any] = {m: {} for m in models}
    for m in models:
        print(f"{m}: cold, then cas record ...", file=sys.stderr)
        out[m][COLD] = _measure([*me, m], _machine(work / f"w-{m}"))
        out[m][RECORD] = _measure([*record, *me, m], _machine(work / f"a-{m}"))
    out["bytes"] = _clone(work)
    ways = (WARM, NEW, NEW_LATE) if ab_prewarm else (WARM, NEW)
    warm: dict[str, dict[str, list[dict[str, Any]]]] = {m: {w: [] for w in ways} for m in models}
    for rep in range(reps):  # the warm ways alternate, so load from elsewhere hits them alike
        for m in models:
            print(f"{m}: warm ways, round {rep + 1} of {reps} ...", file=sys.stderr)
            warm[m][WARM].append(_measure([*me, m], _machine(work / f"w-{m}")))
            warm[m][NEW].append(_measure([*load, *me, m], _machine(work / f"b-{m}-{rep}")))
            if ab_prewarm:
                late = dict(_machine(work / f"c-{m}-{rep}"), CAS_PREWARM="0")
                warm[m][NEW_LATE].append(_measure([*load, *me, m], late))
    for m in models:
        out[m].update({w: _median_run(runs) for w, runs in warm[m].items()})
    return out


def _phase(run_: dict[str, Any], column: str, names: tuple[str, ...]) -> float:
    """``names`` summed; for the AOT load, the outer of two nested timers (a unit's
    ``after_deserialization`` contains ``AOTAutogradCache.inductor_load``)."""
    values = [float(run_.get("phases_s", {}).get(n, 0.0)) for n in names]
    return max(values) if column == "AOT load" else sum(values)


def _programs(run_: dict[str, Any]) -> str:
    """Seconds in each program torch ran, largest first (``run:<program>`` timers)."""
    runs = sorted(((k[4:], v) for k, v in run_.get("phases_s", {}).items() if k.startswith("run:")),
                  key=lambda kv: -kv[1])
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in runs) or "none"


def table(out: dict[str, Any]) -> str:
    late = any(NEW_LATE in ways for m, ways in out.items() if m != "bytes")
    lines = [f"| model | {COLD} | {WARM} | {NEW} | cas / cold | cas / warm local | unit | cas C++ builds |"
             " max diff vs eager |" + (" checks not early / warm local |" if late else ""),
             "|---|" + "---|" * (9 if late else 8)]
    for m, ways in out.items():
        if m == "bytes":
            continue
        first = {w: ways[w]["first_call_s"] for w in (COLD, WARM, NEW)}
        cas = ways[NEW]
        pre = cas.get("precompile") or {}
        unit = f"{pre.get('loaded', 0)} loaded, {pre.get('traced', 0)} traced" + \
            "".join(f"; {r}" for r in cas.get("refused", [])) + \
            "".join(f"; not recorded: {r[:90]}" for r in ways[RECORD].get("unrecorded", []))
        diff = max(ways[w].get("max_diff", 0.0) for w in (COLD, WARM, NEW))
        lines.append(f"| {m} | {first[COLD]:.2f} s | {first[WARM]:.2f} s | {first[NEW]:.2f} s | "
                     f"{first[NEW] / first[COLD]:.2f}× | {first[NEW] / first[WARM]:.2f}× | {unit} | "
                     f"{cas.get('cxx_builds')} | {diff:.1e} |"
                     + (f" {ways[NEW_LATE]['first_call_s'] / first[WARM]:.2f}× |" if NEW_LATE in ways else ""))
    lines += ["", "Per phase (seconds inside the measured compile and first step; torch's `dynamo_timed` "
              "names, and our timers around the unit read and the C++ module loading):", "",
              "| model | way | first step | " + " | ".join(p for p, _ in PHASES) + " | "
              + " | ".join(LOAD_PARTS) + " | programs run | runs | process |",
              "|---|---|---|" + "---|" * (len(PHASES) + len(LOAD_PARTS) + 3)]
    for m, ways in out.items():
        if m == "bytes":
            continue
        for w in (w for w in (COLD, WARM, NEW, NEW_LATE) if w in ways):
            r = ways[w]
            lines.append(f"| {m} | {w} | {r['first_call_s']:.2f} | "
                         + " | ".join(f"{_phase(r, c, names):.2f}" for c, names in PHASES) + " | "
                         + " | ".join(f"{_phase(r, n, (n,)):.2f}" for n in LOAD_PARTS) + " | "
                         + _programs(r) + " | "
                         + ", ".join(f"{x:.2f}" for x in r.get("runs_s", [r["first_call_s"]])) + " | "
                         + ", ".join(f"{x:.2f}" for x in r.get("process_runs_s", [r["process_s"]])) + " |")
    b = out["bytes"]
    lines.append(f"\nclone moved {b['clone_wire'] / 1e6:.1f} MB on the wire ({b['clone_raw'] / 1e6:.1f} MB raw); "
                 f"the push sent {b['push_wire'] / 1e6:.1f} MB")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", default="gpt2", choices=MODELS)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--reps", type=int, default=1, help="rounds of the warm ways (medians reported)")
    p.add_argument("--ab-prewarm", action="store_true",
                   help="also the new machine with CAS_PREWARM=0, in the same rounds")
    p.add_argument("--json", dest="json_out")
    args = p.parse_args()
    if args.child:
        child(args.model)
        return
    work = Path(tempfile.mkdtemp(prefix="cas-bench-models-"))
    try:
        out = run(args.models, work, args.reps, args.ab_prewarm)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(table(out))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
