"""The read-only web view of ``cas serve``, at ``/ui``: server-rendered (Jinja2), no script.

Pages: refs and tags with hit rates (``/ui/``), a ref's commit log (``/ui/log/<ref>``), a
commit with its diff against its first parent grouped by kind and env
(``/ui/commit/<id>``), a ref's entries grouped by env and kind with sizes and compile time
saved (``/ui/entries/<ref>``), what a ref covers per env, recorder, kind and graph and the
misses machines reported for it (``/ui/coverage/<ref>``, :mod:`cas.coverage`), and an explain box (``/ui/explain``) answering, for a torch
cache key, what ``cas explain`` would for a process of a chosen env.

Access: when the server has tokens, a page needs a token of read scope (any token), given
once through the login form and kept in an HttpOnly, SameSite=Strict cookie. Logging in
and out are POSTs of forms that carry a CSRF token (cas.server.websec), and every
response carries the security headers of cas.server.websec. The view never writes to the
store.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cas import blame, coverage, display, manifest, refs, revocations
from cas import budget as budgets
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import CasError, Forbidden
from cas.history import log
from cas.objects import Env
from cas.server.auth import Tokens
from cas.server.keeper import BudgetKeeper
from cas.server.protocol import read_body
from cas.server.websec import CSRF_FIELD, Csrf, set_nonce
from cas.stats import human_size
from cas.store import Store

COOKIE = "cas_token"
_HERE = Path(__file__).parent
_TEMPLATES = Environment(
    loader=FileSystemLoader(_HERE / "templates"), autoescape=select_autoescape(["html"])
)
_TEMPLATES.filters["size"] = lambda n: human_size(int(n))
_TEMPLATES.filters["url"] = lambda s: quote(str(s), safe="/")
_TEMPLATES.filters["utc"] = lambda t: display.utc(t, seconds=False)
LOG_LIMIT = 200
#: Largest login or logout form (a token, a CSRF token); read before any auth.
MAX_LOGIN_BODY = 8 << 10
DIFF_LIMIT = 500


@dataclass
class Group:
    """Entries of one (env, kind): how many, their bytes, compile time they save."""

    env: str
    kind: str
    count: int = 0
    bytes: int = 0
    saved_ms: int = 0
    added: int = 0
    removed: int = 0
    changed: int = 0
    revoked: int = 0  # entries withheld from torch (cas.revocations)
    keys: list[tuple[str, str, str]] = field(default_factory=list)


# -- what each page reads ---------------------------------------------------------------


def _refs(store: Store) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {"branches": [], "tags": [], "remotes": []}
    for name, oid in sorted(store.refs.as_dict("refs/").items()):
        section = {"heads": "branches", "tags": "tags", "remotes": "remotes"}.get(name.split("/")[1])
        if section:
            out[section].append((refs.short_name(name), oid.hex))
    return out


def _log(store: Store, ref: str) -> list[dict[str, Any]]:
    start = refs.resolve(store, ref)
    return [
        {"id": oid.hex, "short": oid.short(), "author": c.author, "time": c.time, "message": c.message,
         "producer": c.metadata.get("producer", ""), "token": c.metadata.get("token", "")}
        for oid, c in log(store, start, limit=LOG_LIMIT)
    ]


def _commit(store: Store, text: str) -> dict[str, Any]:
    named = store.objects.resolve_unique(text) if len(text) < 64 else ObjectId.parse(text)
    oid = refs.peel(store, named)  # an annotated tag shows the commit it pins
    commit = refs.load_commit(store, oid)
    # A first commit is diffed against the empty manifest (a constant, never read).
    base = refs.load_commit(store, commit.parents[0]).manifest if commit.parents else manifest.EMPTY
    groups: dict[tuple[str, str], Group] = {}
    shown = 0
    revoked = revocations.load(store)
    for ch in manifest.diff(store, base, commit.manifest):
        g = groups.setdefault((ch.key.env.short(), ch.key.kind), Group(ch.key.env.short(), ch.key.kind))
        what = "added" if ch.old is None else "removed" if ch.new is None else "changed"
        setattr(g, what, getattr(g, what) + 1)
        entry = ch.new or ch.old
        assert entry is not None
        g.bytes += entry.size if ch.new is not None else 0
        if entry.blob in revoked:
            what += ", revoked"
        if shown < DIFF_LIMIT:
            g.keys.append((what, ch.key.key + (f" #{ch.key.variant}" if ch.key.variant else ""), human_size(entry.size)))
            shown += 1
    return {
        "id": oid.hex, "short": oid.short(), "commit": commit,
        "parents": [p.hex for p in commit.parents],
        "groups": sorted(groups.values(), key=lambda g: (g.env, g.kind)),
        "truncated": shown >= DIFF_LIMIT,
    }


def _entries(store: Store, ref: str) -> dict[str, Any]:
    commit = refs.resolve(store, ref)
    root = refs.load_commit(store, commit).manifest
    groups: dict[tuple[str, str], Group] = {}
    revoked = revocations.load(store)
    for k, e in manifest.entries(store, root):
        g = groups.setdefault((k.env.short(), k.kind), Group(k.env.short(), k.kind))
        g.count += 1
        g.revoked += e.blob in revoked
        g.bytes += e.size
        g.saved_ms += display.saved_ms(e.meta)
    by_env: dict[str, list[Group]] = defaultdict(list)
    for (env, _), g in sorted(groups.items()):
        by_env[env].append(g)
    envs = {env: _env_fields(store, env) for env in by_env}
    return {"commit": commit.hex, "by_env": dict(by_env), "envs": envs}


def _env_fields(store: Store, short: str) -> dict[str, str]:
    got = store.objects.get_typed(store.objects.resolve_unique(short))
    return dict(Env.decode(got[1]).fields) if got and got[0] is ObjType.ENV else {}


def _envs_of_ref(store: Store, ref: str) -> list[str]:
    root = refs.load_commit(store, refs.resolve(store, ref)).manifest
    return sorted({k.env.hex for k, _ in manifest.entries(store, root)})


def _explain(store: Store, ref: str, key: str, env: str) -> list[str]:
    from cas.torch.explain import explain_key  # imports no torch when ``here`` is given

    try:
        got = store.objects.get_typed(store.objects.resolve_unique(env))
    except CasError as exc:  # not hex, no such object, ambiguous: the form's answer
        return [f"{env[:80]}: {exc.message}"]
    if got is None or got[0] is not ObjType.ENV:
        return [f"{env}: not an env in this store"]
    return explain_key(store, ref, key, here=Env.decode(got[1])).lines()


def _history(store: Store, ref: str, key: str) -> list[str]:
    """`cas blame`'s lines for ``key`` in the newest LOG_LIMIT commits of ``ref``."""
    if not key:
        return []
    try:
        return [e.line() for e in blame.blame(store, key, [ref], limit=LOG_LIMIT)]
    except CasError as exc:
        return [exc.message]


# -- requests ---------------------------------------------------------------------------


def _viewer(request: Request) -> str | None:
    """Who is looking (a token's name), or None when a login is needed."""
    tokens: Tokens | None = request.app.state.tokens
    if tokens is None:
        return "anonymous"
    rec = tokens.check(request.cookies.get(COOKIE, ""))
    return rec.name if rec is not None else None


async def _page(request: Request, template: str, read: Any = None, **context: Any) -> Response:
    who = _viewer(request)
    if who is None:
        return RedirectResponse(f"/ui/login?next={quote(request.url.path)}", status_code=303)
    store = request.app.state.stores.get
    status = 200
    try:
        data = await run_in_threadpool(lambda: read(store())) if read is not None else {}
    except CasError as exc:
        data, status = {"error": str(exc)}, exc.http_status
    return _render(request, template, status, who=who, **context, **data)


def _render(request: Request, template: str, status: int, **context: Any) -> Response:
    """A page, with the CSRF token its forms carry (and the cookie it fits, when new)."""
    csrf: Csrf = request.app.state.csrf
    token, nonce = csrf.issue(request)
    html = _TEMPLATES.get_template(template).render(csrf=token, **context)
    return set_nonce(HTMLResponse(html, status_code=status), request, nonce)


async def _form(request: Request) -> dict[str, str]:
    """A POSTed form (at most MAX_LOGIN_BODY bytes), its CSRF token checked (403 if not)."""
    raw = parse_qs((await read_body(request, MAX_LOGIN_BODY)).decode("utf-8", "replace"))
    form = {k: v[0] for k, v in raw.items()}
    csrf: Csrf = request.app.state.csrf
    csrf.check(request, form.get(CSRF_FIELD, ""))
    return form


async def index(request: Request) -> Response:
    metrics = request.app.state.metrics
    rates = [
        {"door": d, "kind": k, "env": e, "hits": h, "misses": m,
         "rate": f"{100 * h / (h + m):.0f}%" if h + m else "-"}
        for (d, k, e), (h, m) in metrics.hit_rates().items()
    ]
    keeper = request.app.state.keeper
    return await _page(request, "index.html", lambda s: {"refs": _refs(s), "budget": _budget(s, keeper)}, rates=rates)


def _budget(store: Store, keeper: BudgetKeeper) -> dict[str, Any] | None:
    """The saved gc budget and what the budget keeper last saw (no scan of the store)."""
    budget = budgets.load(store)
    if budget is None:
        return None
    last = keeper.last
    return {
        "max_size": human_size(budget.max_size),
        "keep_commits": budget.keep_commits,
        "size": human_size(keeper.size) if keeper.size is not None else "not measured since start",
        "evicted": last.evicted if last else None,
        "evicted_bytes": human_size(last.evicted_bytes) if last else None,
    }


async def log_page(request: Request) -> Response:
    ref = request.path_params["ref"]
    return await _page(request, "log.html", lambda s: {"commits": _log(s, ref)}, ref=ref)


async def commit_page(request: Request) -> Response:
    oid = request.path_params["oid"]
    return await _page(request, "commit.html", lambda s: _commit(s, oid))


async def entries_page(request: Request) -> Response:
    ref = request.path_params["ref"]
    return await _page(request, "entries.html", lambda s: _entries(s, ref), ref=ref)


def _door_lookups(store: Store, door: Any, pin: ObjectId, rates: dict[tuple[str, str, str], tuple[int, int]]
                  ) -> dict[str, Any] | None:
    """What the Redis door counted since the server started, when the ref it reads is at
    ``pin`` now: its ref, env and per-kind hits and misses (from the metrics)."""
    if door is None or door.read_ref is None:
        return None
    try:
        if refs.resolve(store, door.read_ref) != pin:
            return None
    except CasError:
        return None
    env = door.env.id.short()
    kinds = [{"kind": k, "hits": h, "misses": m} for (d, k, e), (h, m) in rates.items() if d == "redis" and e == env]
    return {"ref": door.read_ref, "env": env, "kinds": kinds}


async def coverage_page(request: Request) -> Response:
    ref = request.path_params["ref"]
    door, rates = request.app.state.redis, request.app.state.metrics.hit_rates()

    def read(s: Store) -> dict[str, Any]:
        cov = coverage.coverage(s, ref)
        return {"cov": cov.to_dict(), "door": _door_lookups(s, door, cov.commit, rates)}

    return await _page(request, "coverage.html", read, ref=ref)


async def explain_page(request: Request) -> Response:
    q = request.query_params
    ref, key = q.get("ref", "main"), q.get("key", "").strip()
    door = request.app.state.redis
    env = q.get("env") or (door.env.id.hex if door is not None else "")

    def read(s: Store) -> dict[str, Any]:
        try:
            envs = _envs_of_ref(s, ref)
        except CasError:
            envs = []
        chosen = env or (envs[0] if envs else "")
        answer = _explain(s, ref, key, chosen) if key and chosen else []
        return {"envs": envs, "env": chosen, "answer": answer, "history": _history(s, ref, key)}

    return await _page(request, "explain.html", read, ref=ref, key=key)


async def login(request: Request) -> Response:
    target = request.query_params.get("next", "/ui/")
    if not target.startswith("/ui"):
        target = "/ui/"  # never redirect off the view
    error, status = "", 200
    if request.method == "POST":
        try:
            token = (await _form(request)).get("token", "").strip()
        except Forbidden as exc:  # another site's form, or a stale one: a fresh form, no cookie
            error, status = exc.message, exc.http_status
        else:
            tokens: Tokens | None = request.app.state.tokens
            if tokens is None or tokens.check(token) is not None:
                response = RedirectResponse(target, status_code=303)
                response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/ui",
                                    secure=request.url.scheme == "https")
                return response
            error, status = "unknown token", 401
    return _render(request, "login.html", status, who=None, error=error, next=target)


async def logout(request: Request) -> Response:
    """POST only, with the page's CSRF token: a link or another site cannot log one out."""
    await _form(request)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


def routes() -> list[Any]:
    return [
        Route("/ui", lambda r: RedirectResponse("/ui/", status_code=307)),
        Route("/ui/", index),
        Route("/ui/login", login, methods=["GET", "POST"]),
        Route("/ui/logout", logout, methods=["POST"]),
        Route("/ui/log/{ref:path}", log_page),
        Route("/ui/commit/{oid}", commit_page),
        Route("/ui/entries/{ref:path}", entries_page),
        Route("/ui/coverage/{ref:path}", coverage_page),
        Route("/ui/explain", explain_page),
        Mount("/ui/static", StaticFiles(directory=_HERE / "static"), name="static"),
    ]
