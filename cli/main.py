"""The ``cas`` command: a click group, global options, and the one error handler.

Commands live in cli/cmd_*.py, each a thin layer: parse, call the library, print.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import click

from cas.config import default_store_path
from cas.errors import CasError
from cas_cli.context import Context

#: Which module registers each command. A command's module is imported only when that
#: command runs (or for --help), so `cas run` does not pay for the server, sync and
#: autotune imports: it starts the user's program ~0.1-0.3 s sooner (issue 8, point 4).
#: tests/cli/test_store_cli.py checks this table against what the modules register.
COMMANDS = {
    "cmd_store": ("init", "put", "cat", "ls", "log", "show", "diff", "branch", "tag", "refs", "fsck", "gc",
                  "stats"),
    "cmd_torch": ("capture", "hydrate", "import-megacache", "export-megacache"),
    "cmd_torch_run": ("run", "explain"),
    "cmd_demo": ("demo",),
    "cmd_remote": ("remote", "fetch", "pull", "push", "clone"),
    "cmd_serve": ("serve", "token"),
    "cmd_autotune": ("autotune",),
    "cmd_coverage": ("coverage",),
    "cmd_revoke": ("revoke", "blame"),
}
_MODULE_OF = {name: module for module, names in COMMANDS.items() for name in names}


class CasGroup(click.Group):
    """Maps every CasError to one line on stderr and its exit code; no tracebacks.

    Commands are registered lazily, module by module (:data:`COMMANDS`)."""

    _loaded: set[str]

    def _load(self, module: str) -> None:
        loaded = self.__dict__.setdefault("_loaded", set())
        if module not in loaded:
            loaded.add(module)
            importlib.import_module(f"cas_cli.{module}").register(self)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = _MODULE_OF.get(cmd_name)
        if module is not None:
            self._load(module)
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        for module in COMMANDS:
            self._load(module)
        return super().list_commands(ctx)

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




def main() -> None:
    cli(prog_name="cas")


if __name__ == "__main__":
    main()
