"""The ``cas serve`` ASGI application (Starlette): the HTTP side of the Remote protocol.

Endpoints (docs/format.md, "HTTP protocol"; every one but health needs a bearer token
when the server has tokens):

=======  ===================  =======  ==================================================
method   path                 scope    what
=======  ===================  =======  ==================================================
GET      /v1/health           none     liveness, versions and limits
GET      /v1/refs?prefix=     read     ``{name: hex}``
POST     /v1/missing          read     body: 32-byte ids; answer: the ones absent
POST     /v1/fetch            read     body: 32-byte ids; answer: a pack of those present
POST     /v1/packs            write    body: a pack; verified, closure-checked, stored
PUT      /v1/refs/{name}      write    ``{"new": hex|null, "expected": hex|null}``: CAS
GET      /metrics             read     Prometheus text format (cas.server.metrics)
GET      /ui/...              read     the web view, token in a cookie (cas.server.web);
                                      POST /ui/login and /ui/logout with a CSRF token
=======  ===================  =======  ==================================================

With ``redis=RedisOptions(...)`` the same event loop also runs the Redis door
(cas.server.redis_door) for stock torch and Triton clients.

Every error is a :class:`~cas.errors.CasError` turned into JSON
``{"error", "message", ...}`` with its ``http_status`` by ONE handler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from cas import pack, provenance, refs
from cas.codec import ObjType
from cas.digest import DIGEST_SIZE, ObjectId
from cas.errors import (
    AuthError,
    CasError,
    Forbidden,
    RequestTooLarge,
    UsageError,
)
from cas.ingest import MAX_UNPACKED, Commits, receive
from cas.server import web, websec
from cas.server.auth import Scope, Tokens
from cas.server.keeper import DEFAULT_EVERY, BudgetKeeper
from cas.server.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from cas.server.metrics import Metrics, route_of
from cas.server.protocol import read_body
from cas.server.redis_door import RedisDoor, RedisOptions
from cas.store import STORE_FORMAT, Store

API = "/v1"
ACCESS_LOG = logging.getLogger("cas.server.access")
LOG = logging.getLogger("cas.server")
#: Bytes per chunk of a streamed fetch answer: big enough to keep syscalls rare.
_STREAM_CHUNK = 1 << 20
#: Raw bytes a streamed fetch reads from the store per step (see _read_steps).
READ_STEP = 1 << 20
MAX_FETCH_LEVEL = 6
#: Request header by which a client says it reads blobs sent as several zstd frames.
FRAMES_HEADER = "x-cas-pack-frames"
#: A ref update body is ``{"new": hex, "expected": hex}``: about 150 bytes.
MAX_REF_BODY = 4096

Scope_ = dict[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Limits:
    """Per-request limits. A pack larger than ``max_request`` is refused with 413, and so
    is one whose objects declare more than ``max_unpacked`` bytes in all (a client packs
    at most PACK_BYTES, or one object of up to MAX_OBJECT alone; see cas.pack.batches)."""

    max_request: int = 256 << 20
    max_ids: int = 1_000_000
    max_unpacked: int = MAX_UNPACKED

    @property
    def as_dict(self) -> dict[str, int]:
        return {"max_request": self.max_request, "max_ids": self.max_ids, "max_unpacked": self.max_unpacked}


class _Stores:
    """One Store handle per worker thread.

    Store handles share the LMDB env (zstd contexts are per thread anyway, see
    cas.store.records); each picks its read mode from the size of its last read, so a
    handle per thread keeps one thread's large reads from setting another's mode.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[Store] = []
        self._lock = threading.Lock()
        # Packs are written one group at a time: LMDB serializes writers anyway, and this
        # keeps the closure check and the write of one pack from interleaving with another's.
        self.commits = Commits()
        with Store(path) as store:  # fail at start-up, not on the first request
            #: The store's own id: clients record it with the URL as this server's identity.
            self.store_id = provenance.store_id(store)

    def get(self) -> Store:
        s = getattr(self._local, "store", None)
        if s is None:
            s = Store(self.path)
            self._local.store = s
            with self._lock:
                self._all.append(s)
        return s

    def close(self) -> None:
        with self._lock:
            for s in self._all:
                s.close()
            self._all.clear()


# -- helpers ----------------------------------------------------------------------------


def _authorize(request: Request, needed: Scope) -> None:
    tokens: Tokens | None = request.app.state.tokens
    if tokens is None:
        return
    header = request.headers.get("authorization", "")
    kind, _, token = header.partition(" ")
    rec = tokens.check(token.strip()) if kind.lower() == "bearer" and token else None
    if rec is None:
        raise AuthError(
            "missing or unknown token",
            hint="pass a token made with `cas token add` as 'Authorization: Bearer <token>'",
        )
    request.scope["cas.token"] = rec.name
    if not rec.scope.allows(needed):
        raise Forbidden(f"token {rec.name!r} lacks {needed.value} scope")


async def _body(request: Request, limit: int | None = None) -> bytes:
    """The request body, within ``limit`` (by default the server's request limit)."""
    return await read_body(request, request.app.state.limits.max_request if limit is None else limit)


def _ids(body: bytes, limits: Limits) -> list[ObjectId]:
    if len(body) % DIGEST_SIZE:
        raise UsageError(f"id list must be a multiple of {DIGEST_SIZE} bytes, got {len(body)}")
    n = len(body) // DIGEST_SIZE
    if n > limits.max_ids:
        raise RequestTooLarge(f"{n} ids in one request exceeds the limit of {limits.max_ids}")
    return [ObjectId(body[i : i + DIGEST_SIZE]) for i in range(0, len(body), DIGEST_SIZE)]


def _oid_or_none(value: Any, what: str) -> ObjectId | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageError(f"{what} must be a hex id or null")
    return ObjectId.parse(value)


# -- pack ingest --------------------------------------------------------------------------

def ingest(
    store: Store, data: bytes, commits: Commits | None = None, limits: Limits | None = None
) -> dict[str, int]:
    """Receive one pack (:func:`cas.ingest.receive`: verify, closure, group commit)."""
    verified = receive(store, data, commits, max_unpacked=(limits or Limits()).max_unpacked)
    return {"objects": verified.count, "bytes": len(data)}


def _fetch_level(request: Request) -> int | None:
    """The zstd level the client asked for (X-Cas-Pack-Level), clamped to cheap levels."""
    raw = request.headers.get("x-cas-pack-level", "1").strip().lower()
    if raw == "none":
        return None
    try:
        # Capped: a client must not make the server spend minutes at level 19.
        return max(-7, min(int(raw), MAX_FETCH_LEVEL))
    except ValueError as exc:
        raise UsageError(f"bad X-Cas-Pack-Level {raw!r}: a number or none") from exc


def _multi_frame(request: Request) -> bool:
    """Whether the client reads a blob sent as several zstd frames (X-Cas-Pack-Frames)."""
    return request.headers.get(FRAMES_HEADER, "").strip().lower() == "multi"


def _read_steps(store: Store, ids: list[ObjectId]) -> list[list[ObjectId]]:
    """``ids`` in steps of at most READ_STEP raw bytes (one object at least): what one
    streamed fetch holds in memory at a time (its objects and their stored frames).

    Read whole, a client's batch (a pack's worth, up to 64 objects) was held by every
    fetch in flight: a fleet of 64 machines cloning at once took the server's resident
    memory to 1.3 GiB (bench/bench_fleet.py, docs/benchmarks.md). The sizes come from
    the records alone, without reading a payload.
    """
    sizes = store.objects.records(ids)
    steps: list[list[ObjectId]] = [[]]
    size = 0
    for oid in ids:
        n = sizes[oid].raw_size if oid in sizes else 0
        if steps[-1] and size + n > READ_STEP:
            steps.append([])
            size = 0
        steps[-1].append(oid)
        size += n
    return steps


def _pack_stream(
    stores: _Stores, ids: list[ObjectId], level: int | None, multi_frame: bool = False
) -> Iterator[bytes]:
    """The pack of the requested objects that exist, in request order, streamed.

    Objects stored compressed go as their stored zstd frames (a chunked blob as its
    chunks' frames when ``multi_frame``), whatever ``level``: no CPU spent, and the bytes
    on the wire are the stored ones. Each step may run on a different worker thread, so
    the store handle is looked up per batch rather than captured once.
    """

    def objects() -> Iterator[pack.WireObject | pack.Sized]:
        for i in range(0, len(ids), 64):
            for step in _read_steps(stores.get(), ids[i : i + 64]):
                store = stores.get()
                sent = []
                for obj in pack.from_store_frames(store.objects, step, multi_frame=multi_frame):
                    if obj is not None:
                        if obj[1] is ObjType.BLOB:
                            sent.append(obj[0])
                        yield obj
                store.maintenance.note_reads(sent)  # a fetch is a read (gc's eviction order); batched

    buf: list[bytes] = []
    size = 0
    for part in pack.encode(objects(), level=level, multi_frame=multi_frame):
        buf.append(part)
        size += len(part)
        if size >= _STREAM_CHUNK:
            yield b"".join(buf)
            buf, size = [], 0
    yield b"".join(buf)


# -- endpoints ----------------------------------------------------------------------------


async def health(request: Request) -> Response:
    state = request.app.state
    return JSONResponse(
        {
            "status": "ok",
            "store_format": STORE_FORMAT,
            "pack_version": pack.VERSION,
            "pack_multi_frame": True,
            "auth": state.tokens is not None,
            "store_id": state.stores.store_id,
            # The loop both doors run on (`cas serve --loop`): "uvloop" or "asyncio".
            "event_loop": type(asyncio.get_running_loop()).__module__.partition(".")[0],
            **state.limits.as_dict,
        }
    )


async def list_refs(request: Request) -> Response:
    _authorize(request, Scope.READ)
    prefix = request.query_params.get("prefix", "refs/")
    found = await run_in_threadpool(lambda: request.app.state.stores.get().refs.as_dict(prefix))
    return JSONResponse({name: oid.hex for name, oid in found.items()})


async def missing(request: Request) -> Response:
    _authorize(request, Scope.READ)
    ids = _ids(await _body(request), request.app.state.limits)
    absent = await run_in_threadpool(lambda: request.app.state.stores.get().objects.missing(ids))
    request.app.state.metrics.lookup("http", "object", "any", len(ids) - len(absent), len(absent))
    return Response(b"".join(o.raw for o in absent), media_type="application/octet-stream")


async def fetch(request: Request) -> Response:
    _authorize(request, Scope.READ)
    ids = _ids(await _body(request), request.app.state.limits)
    # A sync iterator: Starlette runs it in the thread pool, one chunk at a time.
    return StreamingResponse(
        _pack_stream(request.app.state.stores, ids, _fetch_level(request), _multi_frame(request)),
        media_type="application/x-cas-pack",
    )


async def send_pack(request: Request) -> Response:
    _authorize(request, Scope.WRITE)
    data = await _body(request)
    stores: _Stores = request.app.state.stores

    def go() -> dict[str, int]:
        return ingest(stores.get(), data, stores.commits, request.app.state.limits)

    return JSONResponse(await run_in_threadpool(go))


async def update_ref(request: Request) -> Response:
    _authorize(request, Scope.WRITE)
    name = refs.check_name(request.path_params["name"])
    raw = await _body(request, MAX_REF_BODY)
    try:
        body = json.loads(raw)
        if not isinstance(body, dict) or not body.keys() <= {"new", "expected"}:
            raise ValueError("not an object with keys new, expected")
        new = _oid_or_none(body.get("new"), "new")
        expected = _oid_or_none(body.get("expected"), "expected")
    except (ValueError, RecursionError) as exc:  # RecursionError: deep nesting
        raise UsageError(f"ref update body must be JSON {{new, expected}}: {str(exc)[:100]}") from exc
    who = request.scope.get("cas.token") or "anonymous"
    old = await run_in_threadpool(
        lambda: request.app.state.stores.get().refs.set(
            name, new, expected=expected, who=f"cas serve ({who})", message="push"
        )
    )
    request.app.state.keeper.wrote()
    return JSONResponse({"ref": name, "old": old.hex if old else None, "new": new.hex if new else None})


async def metrics(request: Request) -> Response:
    """Prometheus text format (cas.server.metrics); read scope, like everything but health."""
    _authorize(request, Scope.READ)
    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type=METRICS_CONTENT_TYPE)


# -- errors and access log ----------------------------------------------------------------


async def _cas_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CasError)
    headers = {"WWW-Authenticate": "Bearer"} if type(exc) is AuthError else None
    return JSONResponse(exc.to_dict(), status_code=exc.http_status, headers=headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    # A bug, not a user error: keep the traceback for the operator, give the client JSON.
    LOG.error("%s %s failed", escaped(request.method), log_target(request.scope), exc_info=exc)
    return JSONResponse(
        {"error": "InternalError", "message": f"internal error: {type(exc).__name__}"},
        status_code=500,
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    name = "NotFound" if exc.status_code == 404 else "HTTPError"
    return JSONResponse(
        {"error": name, "message": f"{request.method} {request.url.path}: {exc.detail}".lower()},
        status_code=exc.status_code,
    )


#: Every byte but printable ASCII (and the quote and backslash) is logged as \\xNN, so
#: that one request is one line whatever its path holds (%0A, %00, invalid UTF-8).
_ESCAPES = {i: f"\\x{i:02x}" for i in range(256) if not 0x21 <= i < 0x7F or i in (0x22, 0x5C)}
#: Query parameters whose values are logged; any other value (a token passed as
#: ?access_token=, a signature, ...) is logged as REDACTED.
LOGGED_PARAMS = frozenset({b"prefix"})
#: Anything shaped like a token (cas.server.auth: ``cas_`` + 43 URL-safe characters),
#: wherever it appears in a target, percent-encoded or not.
_TOKEN = re.compile(rb"cas_[A-Za-z0-9_%-]{20,}")


def escaped(text: str | bytes) -> str:
    """``text`` as one printable ASCII line (bytes are read as Latin-1)."""
    raw = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
    return raw.decode("latin-1").translate(_ESCAPES)


def log_target(scope: Mapping[str, Any]) -> str:
    """The request target for the access log: the path as sent (still percent-encoded),
    query values other than LOGGED_PARAMS redacted, everything escaped."""
    path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    query = scope.get("query_string", b"")
    if query:
        parts = []
        for item in query.split(b"&"):
            name, sep, value = item.partition(b"=")
            parts.append(item if not sep or not value or name.lower() in LOGGED_PARAMS else name + b"=REDACTED")
        path += b"?" + b"&".join(parts)
    return escaped(_TOKEN.sub(b"cas_REDACTED", path))


class AccessLog:
    """ASGI middleware, one wrapper per request: its access log line (client, token,
    request, status, bytes, ms) and the HTTP door's metrics (route, status, bytes in and
    out, latency)."""

    def __init__(
        self, app: Callable[[Scope_, Receive, Send], Awaitable[None]], metrics: Metrics, routes: list[Any]
    ) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Scope_, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0
        sent = 0
        received = 0
        logged = False

        def log() -> None:
            nonlocal logged
            if logged:
                return
            logged = True
            client = scope.get("client") or ("-", 0)
            ACCESS_LOG.info(
                '%s %s "%s %s" %d %d %.1fms',
                client[0],
                escaped(str(scope.get("cas.token") or "-")),
                escaped(scope["method"]),
                log_target(scope),
                status or 500,
                sent,
                (time.perf_counter() - start) * 1000,
            )

        async def watch(message: MutableMapping[str, Any]) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
                if not message.get("more_body", False):
                    # Logged before the last byte goes out, so that once a client has
                    # its whole answer, the line is in the log (tests count requests).
                    log()
            await send(message)

        async def count() -> MutableMapping[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        try:
            await self.app(scope, count, watch)
        finally:
            log()
            self.metrics.request("http", route_of(self.routes, scope), str(status or 500), (status or 500) >= 400,
                                 received, sent, time.perf_counter() - start)


def create_app(
    store_path: str | Path,
    tokens: Tokens | None,
    limits: Limits | None = None,
    redis: RedisOptions | None = None,
    redis_sock: socket.socket | None = None,
    gc_every: float = DEFAULT_EVERY,
) -> Any:
    """The ASGI app serving the store at ``store_path``.

    ``tokens=None`` turns authentication off (``cas serve --no-auth``); otherwise every
    endpoint but health needs a token of the right scope. ``redis`` also opens the Redis
    door (cas.server.redis_door) in the same event loop, for the app's lifetime; a
    misconfigured door (no env to serve, say) raises here, before anything listens.
    ``redis_sock``, a socket bound already, is where the door listens (``cas serve`` binds
    it up front so that a busy port fails before it says "serving"). A budget keeper
    (cas.server.keeper) runs every ``gc_every`` seconds for the app's lifetime.
    """
    stores = _Stores(Path(store_path))
    counters = Metrics(lambda: stores.get().info())
    door = RedisDoor(store_path, tokens, redis) if redis is not None else None
    keeper = BudgetKeeper(Path(store_path), gc_every)
    if door is not None:
        door.observe = counters.redis_observer(door.env.id.short())
        door.on_drop = counters.redis_dropped
        counters.watch_budget(door.budget)
        door.on_commit = keeper.wrote

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        keeper.start()
        if door is not None:
            await door.start(redis_sock)
        try:
            yield
        finally:
            if door is not None:
                await door.stop()
            keeper.stop()
            stores.close()

    app = Starlette(
        routes=[
            Route(f"{API}/health", health, methods=["GET"]),
            Route(f"{API}/refs", list_refs, methods=["GET"]),
            Route(f"{API}/refs/{{name:path}}", update_ref, methods=["PUT"]),
            Route(f"{API}/missing", missing, methods=["POST"]),
            Route(f"{API}/fetch", fetch, methods=["POST"]),
            Route(f"{API}/packs", send_pack, methods=["POST"]),
            Route("/metrics", metrics, methods=["GET"]),
            *web.routes(),
        ],
        exception_handlers={
            CasError: _cas_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )
    app.state.stores = stores
    app.state.tokens = tokens
    app.state.limits = limits or Limits()
    app.state.redis = door
    app.state.keeper = keeper
    app.state.metrics = counters
    app.state.csrf = websec.Csrf()
    return AccessLog(websec.SecurityHeaders(app), counters, app.routes)
