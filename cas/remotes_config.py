"""Named remotes, kept in the store's meta database (``cas remote add|remove|list``).

All remotes live under one meta key, ``remotes``, as JSON ``{name: {"url": …, options}}``
so that listing needs no key scan. Options are strings handed to the transport (e.g.
``endpoint``, ``region`` for S3, ``token_env`` for HTTP); secrets SHOULD be given by the
name of an environment variable rather than stored here.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cas import provenance
from cas.errors import RemoteNotFound, UsageError
from cas.remote import open_remote, scheme_of
from cas.remote.base import Remote
from cas.store import Store

_KEY = "remotes"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class RemoteConfig:
    """One configured remote: its name, URL and transport options."""

    name: str
    url: str
    options: Mapping[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return scheme_of(self.url)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "kind": self.kind, "options": dict(self.options)}


def _load(store: Store) -> dict[str, dict[str, str]]:
    raw = store.meta.get(_KEY)
    return json.loads(raw) if raw else {}


def _save(store: Store, data: dict[str, dict[str, str]]) -> None:
    store.meta.set(_KEY, json.dumps(data, sort_keys=True))


def check_name(name: str) -> str:
    """Return ``name`` if it can name a remote (and a refs/remotes/<name>/ prefix)."""
    if not _NAME.match(name) or ".." in name or name.endswith(".lock"):
        raise UsageError(
            f"invalid remote name: {name!r}",
            hint="use letters, digits, '.', '_' and '-' (at most 64)",
        )
    return name


def add(store: Store, name: str, url: str, **options: str) -> RemoteConfig:
    """Configure remote ``name``; an existing name is an error (remove it first)."""
    check_name(name)
    scheme_of(url)  # a bad URL is refused now, not at the first push
    data = _load(store)
    if name in data:
        raise UsageError(
            f"remote {name} already exists ({data[name]['url']})",
            hint=f"`cas remote remove {name}` first",
        )
    data[name] = {"url": url, **{k: str(v) for k, v in options.items()}}
    _save(store, data)
    return get(store, name)


def remove(store: Store, name: str) -> RemoteConfig:
    """Forget remote ``name``, its tracking refs (``refs/remotes/<name>/*``) and the trust
    given to its URL: re-adding it, or another URL under its name, starts untrusted."""
    found = get(store, name)
    data = _load(store)
    del data[name]
    _save(store, data)
    set_trusted(store, name, False, url=found.url)
    for ref, oid in store.refs.as_dict(f"refs/remotes/{name}/").items():
        store.refs.set(ref, None, expected=oid, message=f"remote {name} removed")
    return found


def get(store: Store, name: str) -> RemoteConfig:
    """The remote called ``name``; RemoteNotFound (with the known names) if none."""
    data = _load(store)
    if name not in data:
        known = ", ".join(sorted(data)) or "none"
        raise RemoteNotFound(
            f"no remote named {name!r} (known: {known})",
            hint="add it with `cas remote add NAME URL`",
            remote=name,
        )
    opts = dict(data[name])
    url = opts.pop("url")
    return RemoteConfig(name, url, opts)


def list_remotes(store: Store) -> list[RemoteConfig]:
    """Every configured remote, by name."""
    return [get(store, name) for name in sorted(_load(store))]


def resolve(store: Store, name_or_url: str) -> tuple[str | None, str, dict[str, str]]:
    """(remote name or None, url, options) for a configured name or a literal URL/path.

    A configured name wins; otherwise the argument must look like a URL or a path
    (contain ``://`` or ``/``), so that a mistyped remote name is an error, not a path.
    """
    data = _load(store)
    if name_or_url in data:
        cfg = get(store, name_or_url)
        return cfg.name, cfg.url, dict(cfg.options)
    if "://" in name_or_url or "/" in name_or_url or name_or_url.startswith("."):
        scheme_of(name_or_url)
        return None, name_or_url, {}
    get(store, name_or_url)  # raises RemoteNotFound with the known names
    raise AssertionError("unreachable")


def open_named(store: Store, name_or_url: str, **overrides: Any) -> tuple[str | None, Remote]:
    """Open a configured remote (or a URL); ``overrides`` replace configured options."""
    name, url, options = resolve(store, name_or_url)
    options.update(overrides)
    return name, open_remote(url, **options)


# -- trust, bound to identities (cas.provenance) -------------------------------------------

_TRUST = "trust.remotes"  # JSON {normal url: {"name", "since", "server_id"?}}


def _trust_table(store: Store) -> dict[str, dict[str, Any]]:
    raw = store.meta.get(_TRUST)
    return json.loads(raw) if raw else {}


def set_trusted(store: Store, name: str, trusted: bool = True, *, url: str | None = None) -> None:
    """Trust (or stop trusting) the remote at ``url`` (default: remote ``name``'s URL):
    torch may unpickle what comes from it (policy). Trust is kept by URL, never by name;
    the server's id is pinned at the first fetch after (:func:`note_server`)."""
    key = provenance.normal_url(url or get(store, name).url)
    table = _trust_table(store)
    if trusted:
        table[key] = {"name": name, "since": int(time.time())}
    else:
        table.pop(key, None)
    store.meta.set(_TRUST, json.dumps(table, sort_keys=True) if table else None)
    if not trusted:
        store.meta.set(f"remote.{name}.trusted", None)  # the by-name flag of older cas


def note_server(store: Store, url: str, server_id: str | None) -> None:
    """Pin ``server_id`` to a trusted URL that has none yet (trust on first use): after
    that, what another server sends from the same URL is not trusted."""
    key = provenance.normal_url(url)
    table = _trust_table(store)
    rec = table.get(key)
    if rec is not None and server_id and "server_id" not in rec:
        rec["server_id"] = server_id
        store.meta.set(_TRUST, json.dumps(table, sort_keys=True))


def trust_of(store: Store, ident: str) -> str | None:
    """Why what came from identity ``ident`` is trusted, or None if it is not."""
    url, sid = provenance.split_identity(ident)
    rec = _trust_table(store).get(url)
    if rec is None:
        return None
    pin = rec.get("server_id")
    if pin and pin != sid:
        return None
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(rec["since"]))
    pinned = f", server {pin[:12]}" if pin else ""
    return f"--trusted given as {rec['name']} on {when}{pinned}"


def trust_identity(store: Store, cfg: RemoteConfig) -> str:
    """The identity a configured remote's trust is judged by: its URL and pinned server."""
    pin = _trust_table(store).get(provenance.normal_url(cfg.url), {}).get("server_id")
    return provenance.identity(cfg.url, pin)


def is_trusted(store: Store, name: str) -> bool:
    """True if remote ``name``'s current URL is trusted."""
    try:
        url = get(store, name).url
    except RemoteNotFound:
        return False
    return provenance.normal_url(url) in _trust_table(store)
