"""Named remotes, kept in the store's meta database (``cas remote add|remove|list``).

All remotes live under one meta key, ``remotes``, as JSON ``{name: {"url": …, options}}``
so that listing needs no key scan. Options are strings handed to the transport (e.g.
``endpoint``, ``region`` for S3, ``token_env`` for HTTP); secrets SHOULD be given by the
name of an environment variable rather than stored here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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
    raw = store.get_meta(_KEY)
    return json.loads(raw) if raw else {}


def _save(store: Store, data: dict[str, dict[str, str]]) -> None:
    store.set_meta(_KEY, json.dumps(data, sort_keys=True))


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
    """Forget remote ``name`` and its tracking refs (``refs/remotes/<name>/*``)."""
    found = get(store, name)
    data = _load(store)
    del data[name]
    _save(store, data)
    for ref, oid in store.list_refs(f"refs/remotes/{name}/").items():
        store.set_ref(ref, None, expected=oid, message=f"remote {name} removed")
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


def set_trusted(store: Store, name: str, trusted: bool = True) -> None:
    """Mark remote ``name`` trusted: torch may unpickle what comes from it (policy)."""
    store.set_meta(f"remote.{name}.trusted", "true" if trusted else None)


def is_trusted(store: Store, name: str) -> bool:
    return (store.get_meta(f"remote.{name}.trusted") or "").lower() == "true"
