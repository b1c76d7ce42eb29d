"""``cas run`` (start a program warm from the store) and ``cas explain`` (why a miss)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import click

from cas.errors import CasError, UsageError
from cas_cli.context import Context, pass_ctx

# The bootstrap `cas run` puts first on the program's PYTHONPATH. It runs the
# sitecustomize it shadows (if any), then waits for `import torch` to finish and enables
# cas right then, before any torch.compile: programs that never import torch pay nothing.
_SITECUSTOMIZE = '''\
"""Written by `cas run`: enable cas when the program imports torch."""
import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _chain():
    paths = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", paths)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


class _TorchHook:
    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            try:
                from cas.torch.enable import bootstrap_from_env
            except Exception as exc:
                sys.stderr.write(f"cas run: cannot enable cas in this interpreter ({exc})\\n")
                return
            bootstrap_from_env()

        spec.loader.exec_module = exec_module
        return spec


_chain()
sys.meta_path.insert(0, _TorchHook())
'''


def _summarise(lines: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {
        "processes": len(lines),
        "fxgraph_cache_hit": 0,
        "fxgraph_cache_miss": 0,
        "autograd_cache_hit": 0,
        "autograd_cache_miss": 0,
        "served": 0,
        "recorded": 0,
        "autotuned": 0,
        "hydrated": 0,
        "commits": [],
        "precompile": None,
    }
    for s in lines:
        c = s.get("counters") or {}
        for name in ("fxgraph_cache_hit", "fxgraph_cache_miss"):
            total[name] += int((c.get("inductor") or {}).get(name, 0))
        for name in ("autograd_cache_hit", "autograd_cache_miss"):
            total[name] += int((c.get("aot_autograd") or {}).get(name, 0))
        total["served"] += int((s.get("live") or {}).get("hits", 0))
        total["recorded"] += int((s.get("live") or {}).get("recorded", 0))
        total["autotuned"] += int((s.get("live") or {}).get("autotuned", 0))
        total["hydrated"] += int((s.get("hydrated") or {}).get("written", 0))
        total["commits"].extend(s.get("commits") or [])
        _add_precompile(total, (s.get("warmth") or {}).get("precompile"))
    total["warmth"] = _warmth(lines)
    total["compat"] = _compat(lines)
    return total


def _add_precompile(total: dict[str, Any], seen: dict[str, int] | None) -> None:
    if seen is None:
        return
    mine = total["precompile"] = total["precompile"] or {"loaded": 0, "traced": 0}
    for name in ("loaded", "traced"):
        mine[name] += int(seen.get(name, 0))


def _compat(lines: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What the processes found missing in torch (:func:`cas.torch._compat.report`), as
    one report; None when no process compiled."""
    found = [s["compat"] for s in lines if s.get("compat")]
    if not found:
        return None
    missing: dict[str, dict[str, str]] = {}
    for f in found:
        missing.update((m["hook"], m) for m in f.get("missing", []))
    return {"torch": found[0].get("torch"), "supported": all(f.get("supported", True) for f in found),
            "missing": list(missing.values())}


def _warmth(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The processes' warmth reports as one: what torch rebuilt, and what hydrate said
    it would (the toolchain lines only hydrate can tell apart).

    Importing cas.torch (for ``combine``) costs this process ~0.1-0.3 s after the
    program ended, so a single process's line carries its report combined already."""
    if len(lines) == 1 and lines[0].get("warmth_combined"):
        return dict(lines[0]["warmth_combined"])  # one process: it combined its own
    from cas.torch.warmth import combine

    seen = [s.get("warmth") or {} for s in lines]
    out = combine(seen).to_dict()
    predicted = combine([w.get("predicted") or {} for w in seen])
    out["predicted"] = predicted.to_dict()
    return out


def _read_stats(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _summary_text(t: dict[str, Any], record: str | None) -> str:
    if not t["processes"]:
        return "cas run: no process of the command imported torch; nothing served or recorded"
    text = (
        f"cas run: {t['processes']} torch process(es): fx graph cache {t['fxgraph_cache_hit']} hit / "
        f"{t['fxgraph_cache_miss']} miss, aot autograd {t['autograd_cache_hit']} hit / "
        f"{t['autograd_cache_miss']} miss; {t['hydrated']} entries hydrated, {t['served']} served live"
    )
    if record:
        commits = ", ".join(c[:12] for c in t["commits"]) or "no commit: nothing new"
        tuned = f" and {t['autotuned']} autotune records" if t["autotuned"] else ""
        text += f"; {t['recorded']} new entries{tuned} recorded on {record} ({commits})"
    warmth = t["warmth"]
    lines = [text, f"cas run: {warmth['headline']}"]
    if t.get("precompile"):
        pre = t["precompile"]
        lines.append(f"cas run: precompiled start: {pre['loaded']} unit(s) loaded, "
                     f"{pre['traced']} frame(s) traced")
    lines += [f"  {r['line']}" for r in warmth["rebuilds"]]
    known = {r["reason"] for r in warmth["rebuilds"]}
    lines += [f"  expected: {r['line']}" for r in warmth["predicted"]["rebuilds"]
              if "compiler" in r["reason"] and r["reason"] not in known]
    if t.get("compat"):
        from cas.torch._compat import report_lines

        lines += [f"cas run: {line}" for line in report_lines(t["compat"])]
    return "\n".join(lines)


def _program(command: tuple[str, ...]) -> str:
    """What the recorded commits name as the program: the script or module a Python
    interpreter runs, else the command's name."""
    name = Path(command[0]).name
    args = list(command[1:])
    if name.startswith("python"):
        if args[:1] == ["-m"] and len(args) > 1:
            return args[1]
        script = next((a for a in args if not a.startswith("-")), None)
        return Path(script).name if script else name
    return name


def _report(ctx: Context, lines: list[dict[str, Any]]) -> list[str]:
    """Commit the run's miss reports (one per pin) into the store; their commit ids."""
    import time

    from cas.coverage import run_reports, write_report

    made = run_reports(lines, host=platform.node(), time=int(time.time()))
    try:
        return [write_report(ctx.store, r).hex for r in made]
    except CasError as exc:  # the program's exit code still comes through
        click.echo(f"cas run: could not commit the miss report: {exc.message}", err=True)
        return []


def register(cli: click.Group) -> None:
    @cli.command(
        "run",
        context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    )
    @click.option("--ref", default="main", show_default=True, help="Ref to start warm from.")
    @click.option("--record", metavar="BRANCH", help="Commit what the program compiles to BRANCH.")
    @click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Torch cache dir to hydrate into (default: $TORCHINDUCTOR_CACHE_DIR, else a fresh one).",
    )
    @click.option("--no-hydrate", is_flag=True, help="Serve through the live backend only.")
    @click.option("--report-misses/--no-report-misses", default=False, envvar="CAS_REPORT_MISSES",
                  show_default=True,
                  help="Commit what missed as a report on cas/reports/<host> (push it to share; "
                       "`cas coverage` sums them). Default from $CAS_REPORT_MISSES.")
    @click.option("--precompile", is_flag=True,
                  help="Load and record dynamo's precompiled units (skip tracing where their guards pass).")
    @click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
    @pass_ctx
    def run(
        ctx: Context,
        ref: str,
        record: str | None,
        cache_dir: Path | None,
        no_hydrate: bool,
        report_misses: bool,
        precompile: bool,
        command: tuple[str, ...],
    ) -> None:
        """Run COMMAND with torch.compile served from the store (and recorded into it).

        Works for programs that know nothing of cas: a bootstrap on PYTHONPATH enables cas
        as soon as the program imports torch, hydrating REF into a fresh torch cache dir
        and answering misses from the store. The exit code of COMMAND is passed through;
        a summary goes to stderr.

            cas run --record main -- python train.py --epochs 1
        """
        from cas.config import env_value

        if shutil.which(command[0]) is None and not Path(command[0]).exists():
            raise UsageError(f"command not found: {command[0]}")
        if record:
            from cas.store import Store  # only here: the program starts without lmdb's import

            Store.init(ctx.store_path).close()  # created once here, not raced by children
        work = Path(tempfile.mkdtemp(prefix="cas-run-"))
        fresh_cache = cache_dir is None and not env_value("TORCHINDUCTOR_CACHE_DIR")
        try:
            (work / "boot").mkdir()
            (work / "boot" / "sitecustomize.py").write_text(_SITECUSTOMIZE, encoding="utf-8")
            env = dict(os.environ)
            python_path = [str(work / "boot"), env.get("PYTHONPATH", "")]
            env["PYTHONPATH"] = os.pathsep.join(p for p in python_path if p)
            env["CAS_RUN_STORE"] = str(Path(ctx.store_path).resolve())
            env["CAS_RUN_REF"] = ref
            env["CAS_RUN_RECORD"] = record or ""
            env["CAS_RUN_HYDRATE"] = "0" if no_hydrate else "1"
            env["CAS_RUN_PRECOMPILE"] = "1" if precompile else "0"
            env["CAS_RUN_STATS"] = str(work / "stats.jsonl")
            env["CAS_RUN_PROGRAM"] = _program(command)
            if cache_dir is not None:
                env["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)
            elif fresh_cache:
                env["TORCHINDUCTOR_CACHE_DIR"] = str(work / "torch-cache")
            try:
                rc = subprocess.call(list(command), env=env)
            except OSError as exc:
                raise UsageError(f"cannot run {command[0]}: {exc.strerror or exc}") from exc
            lines = _read_stats(work / "stats.jsonl")
            total = _summarise(lines)
            if report_misses:
                total["reports"] = _report(ctx, lines)
            if ctx.as_json:
                click.echo(json.dumps({"exit_code": rc, **total}), err=True)
            elif not ctx.quiet:
                click.echo(_summary_text(total, record), err=True)
                if total.get("reports"):
                    from cas.coverage import report_branch

                    branch = report_branch(platform.node())
                    click.echo(f"cas run: miss report committed on {branch} (share it: cas push origin {branch})",
                               err=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        ctx.close()
        raise SystemExit(rc)

    @cli.command("explain")
    @click.argument("key", required=False)
    @click.option("--ref", default="main", show_default=True, help="Ref to look in.")
    @click.option("--current", is_flag=True, help="Explain for this process's env as a whole.")
    @pass_ctx
    def explain(ctx: Context, key: str | None, ref: str, current: bool) -> None:
        """Why the entry for KEY (a torch cache key) does or does not apply here.

        Lists the env fields that differ from the nearest entry. With --current, shows
        every env the ref holds entries for and how each differs from this process's.
        """
        from cas.torch.explain import explain_env, explain_key

        if not key and not current:
            raise UsageError("give a cache KEY or --current")
        # click.echo, not rich: guard expressions and reprs contain [brackets].
        if current:
            from cas.torch._compat import report as compat_report
            from cas.torch._compat import report_lines

            report = explain_env(ctx.store, ref)
            compat = compat_report()
            if ctx.as_json:
                click.echo(json.dumps({**report.to_dict(), "compat": compat}, indent=2))
            else:
                click.echo("\n".join(report.lines() + report_lines(compat)))
        if key:
            result = explain_key(ctx.store, ref, key)
            click.echo(json.dumps(result.to_dict(), indent=2) if ctx.as_json else "\n".join(result.lines()))
