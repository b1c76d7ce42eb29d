"""``cas coverage REF [--env current|ENV]``: what a pin covers, and whether it starts a
machine warm."""

from __future__ import annotations

import click

from cas.codec import ObjType
from cas.errors import UsageError
from cas.objects import Env
from cas.refs import resolve_object
from cas.store import Store
from cas_cli.context import Context, pass_ctx


def _env_named(store: Store, text: str) -> Env | None:
    """``current`` is None (this process's env, computed by cas.torch); else an env id."""
    if text == "current":
        return None
    got = store.objects.get_typed(resolve_object(store, text))
    if got is None or got[0] != ObjType.ENV:
        raise UsageError(f"{text!r} is not an env in this store", hint="give --env current or an env id")
    return Env.decode(got[1])


def register(cli: click.Group) -> None:
    @cli.command("coverage")
    @click.argument("ref")
    @click.option("--env", "env", metavar="current|ENV",
                  help="Judge the pin for this machine (current) or an env id: will it start warm?")
    @pass_ctx
    def coverage(ctx: Context, ref: str, env: str | None) -> None:
        """What REF covers: per env, kind, graph and recorder, and the misses machines
        reported for it. Reads the local store only (run `cas fetch` first for a remote
        pin, e.g. origin/release/1.4); nothing is hydrated.

            cas coverage release/1.4 --env current
        """
        from cas.coverage import coverage as compute

        cov = compute(ctx.store, ref)
        if env is not None:
            here = _env_named(ctx.store, env)
            from cas.torch.explain import coverage_here  # imports torch for --env current

            cov.here = coverage_here(ctx.store, cov, here)
        if ctx.as_json:
            ctx.emit(cov.to_dict())
        else:  # click, not rich: keys and reprs hold [brackets]
            click.echo("\n".join(cov.lines()))
