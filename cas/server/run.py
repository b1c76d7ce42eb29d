"""Run the cas ASGI app under uvicorn: host and port, TLS, access log."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import uvicorn

from cas.errors import UsageError
from cas.server.app import ACCESS_LOG, Limits, create_app
from cas.server.auth import Tokens
from cas.server.keeper import DEFAULT_EVERY
from cas.server.peers import ConnectionLimits, ensure_files
from cas.server.protocol import limited_protocol
from cas.server.redis_door import RedisOptions


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Where access-log lines go: a file path, or None for stderr.
    access_log: Path | None = None
    limits: Limits = Limits()
    #: The Redis door (``--redis-port``), or None.
    redis: RedisOptions | None = None
    #: The HTTP door's connection caps and idle timeout (keep-alive: pack uploads are
    #: large, so connections stay open between the requests of a push).
    connections: ConnectionLimits = ConnectionLimits()
    #: Seconds between the budget keeper's rounds (cas.server.keeper).
    gc_every: float = DEFAULT_EVERY
    #: The event loop both doors run on: "uvloop", "asyncio", or "auto" (uvloop when it
    #: is installed: a dependency wherever it builds, see docs/dependencies.md).
    loop: str = "auto"


@dataclass(frozen=True)
class Bound:
    """The ports a started server listens on (what port 0 turned into)."""

    port: int
    redis_port: int | None = None


def _port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def _access_handler(path: Path | None, stream: TextIO) -> logging.Handler:
    handler: logging.Handler = logging.FileHandler(path) if path else logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    return handler


def _listen(host: str, port: int, flag: str) -> socket.socket:
    """A listening socket on host:port, or a one-line error naming ``flag`` (busy port,
    bad address, a port out of range)."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family, backlog=2048)
        # asyncio turns Nagle off on an accepted connection only if its socket says proto
        # IPPROTO_TCP, and an accepted socket says what the listening one does: 0, from
        # create_server. With Nagle on, an answer written in two pieces (head, then body)
        # waited for the client's delayed ACK: 44 ms per request on loopback, a fifth of a
        # 64 MiB fetch (docs/benchmarks.md, "Large pins").
        return socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, fileno=sock.detach())
    except (OSError, OverflowError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(
            f"cannot listen on {host}:{port} ({flag}): {reason}",
            hint=f"pick another {flag}, or stop what is using it",
        ) from exc


def event_loop(wanted: str) -> str:
    """The event loop ``cas serve`` runs on for ``--loop wanted``: "uvloop" or "asyncio".

    uvloop (libuv) spends less CPU per event than asyncio's own loop; for the Redis door's
    small requests that is most of what it spends (docs/benchmarks.md, "uvloop as the
    default loop"). "auto" takes it when it imports, as uvicorn's own "auto" does.
    """
    if wanted not in ("auto", "asyncio", "uvloop"):
        raise UsageError(f"unknown event loop {wanted!r}: auto, asyncio or uvloop")
    if wanted == "asyncio":
        return wanted
    try:
        import uvloop  # noqa: F401
    except ImportError as exc:
        if wanted == "uvloop":
            raise UsageError(f"--loop uvloop: uvloop cannot be imported ({exc})",
                             hint="pip install uvloop, or use --loop asyncio") from exc
        return "asyncio"
    return "uvloop"


def _config(app: Any, options: ServeOptions, loop: str) -> uvicorn.Config:
    config = uvicorn.Config(
        app,
        loop=loop,
        host=options.host,
        port=options.port,
        ssl_certfile=str(options.tls_cert) if options.tls_cert else None,
        ssl_keyfile=str(options.tls_key) if options.tls_key else None,
        access_log=False,
        log_level="info",
        timeout_keep_alive=options.connections.idle_timeout,
        # Limits on request heads (431): uvicorn's own h11 limit does nothing with httptools;
        # connection caps (503) and an idle timeout from the first byte.
        http=limited_protocol(options.connections),
    )
    try:
        config.load()  # TLS files are read here: a bad one fails now, not after "serving"
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot start the server: {exc}") from exc
    return config


def serve(
    store_path: Path,
    tokens: Tokens | None,
    options: ServeOptions,
    ready: Callable[[Bound, str], None] | None = None,
) -> None:
    """Serve the store until interrupted (blocks).

    The ports are bound, the TLS files checked and the store opened before ``ready`` is
    called with the bound ports and the event loop's name (the CLI prints "serving ..."
    there), so a server that cannot start never claims it did. Port 0 (HTTP or Redis)
    lets the system pick a free port, which ``ready`` reports: no race with another
    process picking the same one.
    uvicorn's own access log is off: ours (cas.server.app.AccessLog) also records the
    token name and bytes sent, which is what an operator audits.
    """
    if (options.tls_cert is None) != (options.tls_key is None):
        raise UsageError("TLS needs both --tls-cert and --tls-key")
    loop = event_loop(options.loop)
    for p in (options.tls_cert, options.tls_key):
        if p is not None and not p.is_file():
            raise UsageError(f"TLS file not found: {p}")
    ensure_files(options.connections.max_connections
                 + (options.redis.connections.max_connections if options.redis else 0))
    ACCESS_LOG.setLevel(logging.INFO)
    ACCESS_LOG.addHandler(_access_handler(options.access_log, sys.stderr))
    ACCESS_LOG.propagate = False
    sock = _listen(options.host, options.port, "--port")
    redis_sock: socket.socket | None = None
    try:
        if options.redis:
            redis_sock = _listen(options.redis.host, options.redis.port, "--redis-port")
        config = _config(create_app(store_path, tokens, options.limits, options.redis, redis_sock, options.gc_every),
                         options, loop)
    except BaseException:
        for bound in (sock, redis_sock):
            if bound is not None:
                bound.close()
        raise
    if ready is not None:
        ready(Bound(_port(sock), _port(redis_sock) if redis_sock else None), loop)
    uvicorn.Server(config).run(sockets=[sock])
