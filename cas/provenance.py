"""Where a commit came from: made in this store, or received from a remote.

The trust policy (cas.torch.policy, DESIGN invariant 6) needs to know whether bytes
came from a remote before handing them to torch. History marks every commit it writes
as ``local``; sync marks every commit it receives as ``remote:<name>`` unless the same
commit was already made here. Marks live in the store's meta db under
``origin.<commit hex>`` (docs/format.md, section 4).
"""

from __future__ import annotations

from collections.abc import Iterable

from cas.digest import ObjectId
from cas.store import Store

LOCAL = "local"


def _key(oid: ObjectId) -> str:
    return f"origin.{oid.hex}"


def mark_local(store: Store, oid: ObjectId) -> None:
    """Record that commit ``oid`` was made in this store."""
    store.set_meta(_key(oid), LOCAL)


def mark_remote(store: Store, oids: Iterable[ObjectId], remote: str) -> None:
    """Record that commits ``oids`` were received from ``remote`` (local marks win)."""
    for oid in oids:
        if store.get_meta(_key(oid)) is None:
            store.set_meta(_key(oid), f"remote:{remote}")


def origin(store: Store, oid: ObjectId) -> str | None:
    """``"local"``, ``"remote:<name>"``, or None when nothing was recorded."""
    return store.get_meta(_key(oid))
