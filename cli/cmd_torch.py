"""Torch commands: capture, hydrate, import-megacache, export-megacache, demo.

Each command imports torch (through cas.torch) only when it runs, so ``cas --help`` and
the store commands stay fast and work without torch.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from cas.errors import TorchError, UsageError
from cas.refs import load_commit
from cas_cli.context import Context, pass_ctx


def _require_torch(load: bool = True) -> None:
    """Fail clearly without torch. ``load=False``: only check that it is installed (for
    commands that do not need torch itself once cas knows this install's env)."""
    # torch warns on import when numpy is absent; numpy is not needed for compiling.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    if not load:
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise TorchError("torch is not installed in this environment", hint="pip install torch")
        return
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise TorchError("torch is not installed in this environment", hint="pip install torch") from exc


def _kinds_table(title: str, by_kind: dict[str, int]) -> Table:
    table = Table(title=title, show_edge=False)
    table.add_column("kind")
    table.add_column("entries", justify="right")
    for kind, n in sorted(by_kind.items()):
        table.add_row(kind, str(n))
    return table


@click.command()
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Torch cache dir to read (default: torch's, i.e. $TORCHINDUCTOR_CACHE_DIR).")
@click.option("-m", "--message", required=True, help="Commit message.")
@click.option("-b", "--branch", default="main", show_default=True)
@pass_ctx
def capture(ctx: Context, cache_dir: Path | None, message: str, branch: str) -> None:
    """Store every artifact in a torch cache dir and commit it on BRANCH."""
    _require_torch(load=False)  # files only: torch is imported only to fill the env cache
    from cas.torch.capture import capture as do_capture

    if cache_dir is not None and not cache_dir.is_dir():
        raise UsageError(f"no such cache dir: {cache_dir}")
    res = do_capture(ctx.store, cache_dir, branch=branch, message=message, megacache=False)
    tuned = res.autotune.commit if res.autotune is not None else None
    if res.commit is None and tuned is None:
        ctx.emit(res.to_dict(), f"nothing new to capture ({res.already_stored} entries already stored)")
        return
    ctx.emit(res.to_dict(), None)
    if not ctx.as_json:
        if res.commit is not None:
            ctx.out.print(_kinds_table(f"captured {res.added} entries", res.by_kind))
            ctx.out.print(escape(f"[{branch} {res.commit.short()}] {message}"))
        if tuned is not None:
            ctx.out.print(escape(f"[{branch} {tuned.short()}] {load_commit(ctx.store, tuned).message}"))


@click.command()
@click.argument("ref")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Torch cache dir to fill (default: torch's, i.e. $TORCHINDUCTOR_CACHE_DIR).")
@pass_ctx
def hydrate(ctx: Context, ref: str, cache_dir: Path | None) -> None:
    """Write the entries of REF that match this environment into a torch cache dir."""
    _require_torch(load=False)
    from cas.torch.hydrate import hydrate as do_hydrate

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = do_hydrate(ctx.store, ref, cache_dir)
    for w in caught:  # each skipped entry: one line naming it, not Python's two
        message = str(w.message).splitlines()[0] if str(w.message) else w.category.__name__
        click.echo(f"cas: warning: {message.removeprefix('cas: ')}", err=True)
    ctx.emit(res.to_dict(), None)
    if ctx.as_json:
        return
    ctx.out.print(_kinds_table(f"hydrated {res.cache_dir} from {ref} ({res.commit.short()})", res.by_kind))
    ctx.out.print(
        f"written {res.written} ({res.bytes_written} bytes), already present {res.present}, "
        f"skipped: {res.skipped_other_env} of other envs, {res.skipped_other_cpu} of other CPUs, "
        f"{res.corrupt} corrupt, {res.bad_keys} with unsafe keys, {res.bad_records} malformed autotune records, "
        f"{res.revoked} revoked"
    )
    for line in _warmth_lines(res.warmth):
        ctx.out.print(escape(line))


def _warmth_lines(warmth: dict[str, Any]) -> list[str]:
    if not warmth:
        return []
    return [warmth["headline"]] + [f"  {r['line']}" for r in warmth["rebuilds"]]


@click.command("import-megacache")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("-m", "--message", default=None, help="Commit message.")
@click.option("-b", "--branch", default="main", show_default=True)
@pass_ctx
def import_megacache(ctx: Context, file: Path, message: str | None, branch: str) -> None:
    """Split a torch.compiler.save_cache_artifacts() file into entries and commit them."""
    _require_torch(load=False)  # cas.torch.megacache: no torch needed
    from cas.torch.capture import import_megacache as do_import

    res = do_import(ctx.store, file.read_bytes(), branch=branch,
                    message=message or f"import mega-cache {file.name}")
    ctx.emit(res.to_dict(), None)
    if not ctx.as_json:
        ctx.out.print(_kinds_table(f"imported {res.added} entries", res.by_kind))
        if res.commit is not None:
            ctx.out.print(escape(f"[{branch} {res.commit.short()}]"))
        else:
            ctx.out.print(f"nothing new ({res.already_stored} entries already stored)")


@click.command("export-megacache")
@click.argument("ref")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@pass_ctx
def export_megacache(ctx: Context, ref: str, output: Path) -> None:
    """Write the entries of REF for this environment as a Mega-Cache file that
    torch.compiler.load_cache_artifacts() accepts."""
    _require_torch(load=False)  # cas.torch.megacache: no torch needed
    from cas.torch.capture import export_megacache as do_export

    data, counts = do_export(ctx.store, ref)
    if not counts:
        raise UsageError(f"{ref} holds no mega-cache entries for this environment",
                         hint="see `cas explain` for why entries do not apply here")
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, output)
    ctx.emit({"output": str(output), "bytes": len(data), "by_kind": counts}, None)
    if not ctx.as_json:
        ctx.out.print(_kinds_table(f"wrote {output} ({len(data)} bytes)", counts))


# `run` and `explain` (the live backend's commands) are registered by the other torch
# engineer below; add them to the tuple in register().

COMMANDS: tuple[click.Command, ...] = (capture, hydrate, import_megacache, export_megacache)


def register(cli: click.Group) -> None:
    for cmd in COMMANDS:
        cli.add_command(cmd)

