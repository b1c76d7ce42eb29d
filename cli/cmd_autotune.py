"""``cas autotune log|show|diff|record``: autotune records per kernel and shape.

log, show and diff read the store only (no torch); record reads a torch cache dir.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from cas import refs, tuning
from cas.errors import UsageError
from cas_cli import autotune_rows
from cas_cli.context import Context, pass_ctx


def _ms(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "-"


def _emit_rows(ctx: Context, title: str, rows: list[autotune_rows.Row]) -> None:
    if ctx.as_json:
        ctx.emit([r.to_dict() for r in rows])
        return
    ctx.out.print(_rows_table(title, rows, True))
    ctx.info(f"{len(rows)} records")


def _rows_table(title: str, rows: list[autotune_rows.Row], with_commit: bool) -> Table:
    table = Table(title=title, show_edge=False)
    for name in ("op", "shapes", "choice", "ms", "device", "host"):
        # op, choice and times whole; long shapes and device names wrap rather than truncate
        table.add_column(name, justify="right" if name == "ms" else "left",
                         no_wrap=name in ("op", "choice", "ms"), overflow="fold")
    if with_commit:
        table.add_column("commit", no_wrap=True)
    for r in rows:
        cells = [str(r.meta.get("op", "")), str(r.meta.get("shapes", "")), tuning.short_choice(r.meta.get("choice")),
                 _ms(r.time()), str(r.meta.get("device", "")), str(r.meta.get("host", ""))]
        if with_commit:
            cells.append(r.commit.hex[:10] if r.commit else "-")
        table.add_row(*(escape(c) for c in cells))
    return table


@click.group()
def autotune_group() -> None:
    """Autotune results as records: what was tuned, the choice, its time, where."""


@autotune_group.command(name="log")
@click.argument("rev", default="HEAD")
@click.option("-n", "--max-count", type=int, default=None, help="At most N autotune commits.")
@pass_ctx
def log_cmd(ctx: Context, rev: str, max_count: int | None) -> None:
    """Records measured by the autotune commits reachable from REV, newest first."""
    _emit_rows(ctx, f"autotune records measured up to {rev}",
               autotune_rows.log_rows(ctx.store, refs.resolve(ctx.store, rev), max_count))


@autotune_group.command(name="show")
@click.argument("rev", default="HEAD")
@pass_ctx
def show_cmd(ctx: Context, rev: str) -> None:
    """Every record in REV, with the commit that measured it."""
    _emit_rows(ctx, f"autotune records in {rev}", autotune_rows.show_rows(ctx.store, refs.resolve(ctx.store, rev)))


@autotune_group.command(name="diff")
@click.argument("a")
@click.argument("b")
@pass_ctx
def diff_cmd(ctx: Context, a: str, b: str) -> None:
    """Records that differ from A to B: speedups, regressions, added, removed."""
    store = ctx.store
    deltas = autotune_rows.diff_rows(store, refs.resolve(store, a), refs.resolve(store, b))
    if ctx.as_json:
        ctx.emit([d.to_dict() for d in deltas])
        return
    table = Table(title=f"autotune {a} -> {b}", show_edge=False)
    for name in ("op", "shapes", "device class", f"{a} choice", f"{a} ms", f"{b} choice", f"{b} ms", "ratio", ""):
        table.add_column(name, no_wrap=name in ("op", "ratio", ""), overflow="fold")
    colors = {"speedup": "green", "regression": "red"}
    for d in deltas:
        row = d.to_dict()
        ratio = f"{row['ratio']:.2f}x" if row["ratio"] else "-"
        verdict = row["verdict"]
        cells = [str(row["op"]), str(row["shapes"]), d.key.variant[:24], tuning.short_choice(row["old_choice"]),
                 _ms(row["old_ms"]), tuning.short_choice(row["new_choice"]), _ms(row["new_ms"]), ratio]
        color = colors.get(verdict)
        table.add_row(*(escape(c) for c in cells), f"[{color}]{verdict}[/]" if color else verdict)
    ctx.out.print(table)
    ups = sum(d.verdict() == "speedup" for d in deltas)
    downs = sum(d.verdict() == "regression" for d in deltas)
    ctx.info(f"{len(deltas)} records differ: {ups} faster, {downs} slower")


@autotune_group.command(name="record")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Torch cache dir to read (default: torch's, i.e. $TORCHINDUCTOR_CACHE_DIR).")
@click.option("-b", "--branch", default="main", show_default=True)
@pass_ctx
def record_cmd(ctx: Context, cache_dir: Path | None, branch: str) -> None:
    """Commit the autotune results in a torch cache dir as records on BRANCH."""
    from cas_cli.cmd_torch import _require_torch

    if cache_dir is not None and not cache_dir.is_dir():
        raise UsageError(f"no such cache dir: {cache_dir}")
    _require_torch(load=False)  # files and the env only (torch is imported to fill the env cache)
    from cas.torch.autotune import record

    res = record(ctx.store, cache_dir, branch=branch)
    text = (f"autotune: {res.added + res.changed} records committed as {res.commit.short()}"
            if res.commit else "nothing new to record")
    ctx.emit(res.to_dict(), f"{text} ({res.unchanged} unchanged)")


def register(cli: click.Group) -> None:
    cli.add_command(autotune_group, name="autotune")
