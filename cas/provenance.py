"""Where a commit came from: made in this store, or received from a remote.

The trust policy (cas.trust.policy: nothing pulled from a remote reaches torch unless
its source is trusted) needs to know whether bytes came from a remote before handing
them to torch. History marks every commit it writes as ``local``; sync marks every
commit it receives as ``remote:<identity>`` unless the same commit was already made
here. Marks live in the store's meta db under
``origin.<commit hex>`` (docs/format.md, section 4).

A remote's **identity** is what it is, not what it is called here: its URL (an absolute
path for a path remote), followed by ``#<server id>`` when the server has an id of its
own (``cas serve`` reports its store's). Names come and go (``cas remote remove`` /
``add``); trust follows identities (cas.remotes_config), so a name re-pointed at another
server never inherits trust for what the first one sent. Marks written by older cas
hold a bare remote name instead; the policy treats those by name, as it did.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterable
from typing import Any

from cas.digest import ObjectId
from cas.store import Store

LOCAL = "local"
_SERVER_ID = re.compile(r"[0-9a-f]{32}")


def normal_url(url: str) -> str:
    """A remote URL in one spelling: no trailing slash; a path made absolute."""
    if "://" not in url:
        return os.path.abspath(url)
    return url.rstrip("/")


def identity(url: str, server_id: str | None = None) -> str:
    """The stable identity of the remote at ``url`` (see the module docstring)."""
    return f"{normal_url(url)}#{server_id}" if server_id else normal_url(url)


def server_id_of(remote: Any) -> str | None:
    """The server's own id, when the transport under any wrappers (``.inner``) has one."""
    while hasattr(remote, "inner"):
        remote = remote.inner
    sid = getattr(remote, "server_id", None)
    return sid if isinstance(sid, str) and _SERVER_ID.fullmatch(sid) else None


def remote_identity(remote: Any) -> str:
    """The identity of an open remote: its URL, and its server's id where it has one."""
    return identity(remote.url, server_id_of(remote))


def split_identity(ident: str) -> tuple[str, str | None]:
    """``(url, server id or None)`` of an identity."""
    url, sep, sid = ident.rpartition("#")
    return (url, sid) if sep and _SERVER_ID.fullmatch(sid) else (ident, None)


def is_identity(origin: str) -> bool:
    """False for a bare remote name (marks written by older cas)."""
    return "/" in origin


def store_id(store: Store) -> str:
    """This store's own id (made on first use): what `cas serve` reports as its identity."""
    sid = store.meta.get("store.id")
    if sid is None:
        sid = uuid.uuid4().hex
        store.meta.set("store.id", sid)
    return sid


def _key(oid: ObjectId) -> str:
    return f"origin.{oid.hex}"


def mark_local(store: Store, oid: ObjectId) -> None:
    """Record that commit ``oid`` was made in this store."""
    store.meta.set(_key(oid), LOCAL)


def mark_remote(store: Store, oids: Iterable[ObjectId], remote: str) -> None:
    """Record that commits ``oids`` were received from the remote whose identity is
    ``remote`` (:func:`remote_identity`; local marks win)."""
    for oid in oids:
        if store.meta.get(_key(oid)) is None:
            store.meta.set(_key(oid), f"remote:{remote}")


def origin(store: Store, oid: ObjectId) -> str | None:
    """``"local"``, ``"remote:<identity>"`` (``remote:<name>`` from older cas), or None
    when nothing was recorded."""
    return store.meta.get(_key(oid))
