"""The ``cas`` command: a click group, global options, and the one error handler.

Commands live in cli/cmd_*.py, each a thin layer: parse, call the library, print.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from cas.config import default_store_path
from cas.errors import CasError
from cas_cli.context import Context


class CasGroup(click.Group):
    """Maps every CasError to one line on stderr and its exit code; no tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CasError as exc:
            as_json = isinstance(ctx.obj, Context) and ctx.obj.as_json
            if as_json:
                click.echo(json.dumps(exc.to_dict()), err=True)
            else:
                click.echo(f"cas: error: {exc.message}", err=True)
                if exc.hint:
                    click.echo(f"hint: {exc.hint}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("cas: interrupted", err=True)
            sys.exit(130)
        finally:
            if isinstance(ctx.obj, Context):
                ctx.obj.close()


@click.group(cls=CasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    "store_path",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Store directory (default: $CAS_DIR, else ~/.cache/cas).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or chatter on stderr.")
@click.version_option(package_name="cas", prog_name="cas")
@click.pass_context
def cli(ctx: click.Context, store_path: Path | None, as_json: bool, quiet: bool) -> None:
    """cas: a git-like, content-addressed store for torch.compile artifacts.

    Capture what torch.compile produced, commit and tag it, push it to a remote, and
    start other machines warm from it.
    """
    ctx.obj = Context(store_path or default_store_path(), as_json, quiet)


def _register() -> None:
    from cas_cli import (
        cmd_autotune,
        cmd_demo,
        cmd_remote,
        cmd_serve,
        cmd_store,
        cmd_torch,
        cmd_torch_run,
    )

    for module in (cmd_store, cmd_torch, cmd_torch_run, cmd_demo, cmd_remote, cmd_serve, cmd_autotune):
        module.register(cli)


_register()


def main() -> None:
    cli(prog_name="cas")


if __name__ == "__main__":
    main()
