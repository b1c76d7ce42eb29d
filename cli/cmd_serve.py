"""Server commands: ``cas serve`` and ``cas token add|list|remove``."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from cas.errors import UsageError
from cas.server.auth import Scope, Tokens, add_token, remove_token
from cas_cli.context import Context, pass_ctx

#: The lines `cas serve` prints once its ports are bound. With ``--port 0`` they are how a
#: script (cas demo, the test harness) learns the ports it got: read them with announced().
_SERVING_LINE = re.compile(r"^serving .* on (https?://\S+?:(\d+)) \(", re.M)
_REDIS_LINE = re.compile(r"^redis door on redis://\S+?:(\d+) \(", re.M)


@dataclass(frozen=True)
class Announced:
    url: str
    port: int
    redis_port: int | None


def announced(output: str) -> Announced | None:
    """What `cas serve` said it listens on, from its stderr so far (None before it said)."""
    serving = _SERVING_LINE.search(output)
    if serving is None:
        return None
    redis = _REDIS_LINE.search(output)
    return Announced(serving.group(1), int(serving.group(2)), int(redis.group(1)) if redis else None)


F = TypeVar("F", bound=Callable[..., Any])

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _parse_size(text: str) -> int:
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1] if t and t[-1] in _SIZE_UNITS else ""
    number = t[: len(t) - len(unit)]
    if not number.isdigit():
        raise UsageError(f"not a size: {text!r}", hint="e.g. 256M, 1G, 65536")
    return int(number) * _SIZE_UNITS[unit]


def _redis_value_size(text: str) -> int:
    from cas.server.resp import MAX_BULK

    n = _parse_size(text)
    if not 0 < n <= MAX_BULK:
        raise UsageError(f"--redis-max-value must be 1 byte to {MAX_BULK >> 20}M, not {text}")
    return n


def _connection_options(prefix: str, door: str, idle: int) -> Callable[[F], F]:
    """One door's connection caps and idle timeout (cas.server.peers.ConnectionLimits)."""
    options = [
        click.option(f"--{prefix}max-connections", default=1000, show_default=True, type=click.IntRange(1),
                     help=f"Connections open at once on the {door} door (refused past it)."),
        click.option(f"--{prefix}max-connections-per-peer", default=100, show_default=True,
                     type=click.IntRange(1), help=f"Connections open at once from one address on the {door} door."),
        click.option(f"--{prefix}idle-timeout", default=idle, show_default=True, type=click.IntRange(1),
                     help=f"Seconds a connection to the {door} door may stay silent before it is closed."),
    ]

    def apply(f: F) -> F:
        for option in reversed(options):
            f = option(f)
        return f

    return apply


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port to bind (0: a free one, printed in the 'serving' line).")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Read tokens from this JSON file instead of the store.",
)
@click.option("--no-auth", is_flag=True, help="Serve without tokens (trusted networks only).")
@click.option("--tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="PEM certificate.")
@click.option("--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="PEM private key.")
@click.option("--max-request", default="256M", show_default=True, help="Largest request body.")
@_connection_options("", "HTTP", idle=30)
@click.option(
    "--access-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Append access-log lines here (default: stderr).",
)
@click.option("--redis-port", type=click.IntRange(0, 65535),
              help="Also open the Redis door (stock torch/Triton) on this port (0: a free one, printed).")
@click.option("--redis-ref", help="Ref the Redis door reads from (default: --redis-branch).")
@click.option("--redis-branch", default="main", show_default=True, help="Branch Redis writes are committed to.")
@click.option("--redis-read-only", is_flag=True, help="Record nothing from the Redis door (SETs are dropped).")
@click.option(
    "--redis-env",
    help="Env id (or prefix) the Redis door serves; `here` for this machine's "
    "(default: the only env of the ref).",
)
@click.option("--redis-batch", default=1024, show_default=True, type=int, help="Entries per Redis commit.")
@click.option(
    "--redis-flush-every", default=5.0, show_default=True, type=float, help="Seconds between Redis commits."
)
@click.option("--redis-anonymous-read", is_flag=True, help="Let Redis clients that send no AUTH read.")
@click.option("--redis-report-misses", "redis_report_every", type=click.FloatRange(min=1.0), metavar="SECONDS",
              help="Commit what the Redis door's readers missed as a miss report every SECONDS "
                   "(and at shutdown) on cas/reports/<host>-redis-door (default: no reports).")
@click.option(
    "--redis-anonymous-write",
    is_flag=True,
    help="Let Redis clients that send no AUTH (Triton's) read and write to --redis-branch.",
)
@click.option("--redis-max-value", default="128M", show_default=True,
              help="Largest value a Redis write may carry.")
@click.option("--redis-max-pending", default="256M", show_default=True,
              help="Bytes of Redis write values held at once (received, not yet committed); past it writers wait.")
@_connection_options("redis-", "Redis", idle=300)
@click.option(
    "--gc-every", default=30.0, show_default=True, type=click.FloatRange(min=0.01),
    help="Seconds between rounds that write noted reads and apply the store's gc budget "
         "(`cas gc --max-size N --save`).",
)
@click.option(
    "--loop", type=click.Choice(["auto", "uvloop", "asyncio"]), default="auto", show_default=True,
    help="Event loop of both doors; auto: uvloop when installed (a dependency where it builds), else asyncio.",
)
@pass_ctx
def serve(
    ctx: Context,
    host: str,
    port: int,
    token_file: Path | None,
    no_auth: bool,
    tls_cert: Path | None,
    tls_key: Path | None,
    max_request: str,
    max_connections: int,
    max_connections_per_peer: int,
    idle_timeout: int,
    access_log: Path | None,
    redis_port: int | None,
    redis_ref: str | None,
    redis_branch: str,
    redis_read_only: bool,
    redis_env: str | None,
    redis_batch: int,
    redis_flush_every: float,
    redis_anonymous_read: bool,
    redis_anonymous_write: bool,
    redis_report_every: float | None,
    redis_max_value: str,
    redis_max_pending: str,
    redis_max_connections: int,
    redis_max_connections_per_peer: int,
    redis_idle_timeout: int,
    gc_every: float,
    loop: str,
) -> None:
    """Serve this store over HTTP(S) for `cas push` / `cas pull` (and Redis for torch)."""
    from cas.server.app import Limits
    from cas.server.peers import ConnectionLimits
    from cas.server.redis_door import RedisOptions
    from cas.server.run import Bound, ServeOptions
    from cas.server.run import serve as run_server

    tokens: Tokens | None = None
    if not no_auth:
        tokens = Tokens.from_file(token_file) if token_file else Tokens.from_store(ctx.store)
        if not len(tokens):
            raise UsageError(
                "no tokens: nobody could use this server",
                hint="make one with `cas token add NAME --scope write`, or pass --no-auth",
            )
    redis = None
    if redis_port is not None:
        if redis_anonymous_write and redis_read_only:
            raise UsageError("--redis-anonymous-write and --redis-read-only contradict each other")
        if redis_env == "here":
            from cas.torch.env import ensure_env

            redis_env = ensure_env(ctx.store).hex
        redis = RedisOptions(
            port=redis_port,
            host=host,
            ref=redis_ref or redis_branch,
            branch=None if redis_read_only else redis_branch,
            env=redis_env,
            batch=max(1, redis_batch),
            flush_every=redis_flush_every,
            anonymous_read=redis_anonymous_read,
            anonymous_write=redis_anonymous_write,
            report_every=redis_report_every,
            max_value=_redis_value_size(redis_max_value),
            max_pending=_parse_size(redis_max_pending),
            connections=ConnectionLimits(redis_max_connections, redis_max_connections_per_peer, redis_idle_timeout),
        )
    path = ctx.store.path
    ctx.close()  # the server opens its own handles, one per worker thread
    options = ServeOptions(
        host=host,
        port=port,
        tls_cert=tls_cert,
        tls_key=tls_key,
        access_log=access_log,
        limits=Limits(max_request=_parse_size(max_request)),
        redis=redis,
        connections=ConnectionLimits(max_connections, max_connections_per_peer, idle_timeout),
        gc_every=gc_every,
        loop=loop,
    )
    scheme = "https" if tls_cert else "http"
    auth = "no auth" if no_auth else f"{len(tokens or [])} token(s)"

    def ready(bound: Bound, loop: str) -> None:
        # Printed even under --quiet/--json: with port 0 it is the only way to learn the port.
        ctx.err.print(f"serving {path} on {scheme}://{host}:{bound.port} ({auth}; {loop} loop)")
        if redis is not None:
            ctx.err.print(f"redis door on redis://{host}:{bound.redis_port} (reads {redis.ref}, records to {redis.branch or 'nothing'})")

    run_server(path, tokens, options, ready=ready)


@click.group()
def token() -> None:
    """Manage the bearer tokens `cas serve` accepts."""


_file_option = click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep tokens in this JSON file instead of the store.",
)


@token.command("add")
@click.argument("name")
@click.option("--scope", type=click.Choice(["read", "write"]), default="read", show_default=True)
@_file_option
@pass_ctx
def token_add(ctx: Context, name: str, scope: str, token_file: Path | None) -> None:
    """Make a token NAME and print it once (only its hash is kept)."""
    store = None if token_file else ctx.store
    secret = add_token(name, Scope.parse(scope), store=store, path=token_file)
    ctx.emit({"name": name, "scope": scope, "token": secret}, secret)
    ctx.info(f"token {name!r} ({scope}) created; it is shown only this once")


@token.command("list")
@_file_option
@pass_ctx
def token_list(ctx: Context, token_file: Path | None) -> None:
    """List token names and scopes (never the tokens)."""
    tokens = Tokens.from_file(token_file) if token_file else Tokens.from_store(ctx.store)
    rows = [{"name": r.name, "scope": r.scope.value} for r in tokens.records()]
    ctx.emit(rows, "\n".join(f"{r['name']}\t{r['scope']}" for r in rows) or "no tokens")


@token.command("remove")
@click.argument("name")
@_file_option
@pass_ctx
def token_remove(ctx: Context, name: str, token_file: Path | None) -> None:
    """Revoke token NAME."""
    store = None if token_file else ctx.store
    if not remove_token(name, store=store, path=token_file):
        raise UsageError(f"no token named {name!r}")
    ctx.emit({"name": name, "removed": True}, f"token {name!r} removed")


def register(cli: click.Group) -> None:
    cli.add_command(serve)
    cli.add_command(token)
