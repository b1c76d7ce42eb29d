"""Trusted remotes: whether what came from a remote identity may reach torch.

A remote is trusted by its identity (cas.provenance: URL and, once pinned, server id)
when that URL was given ``--trusted`` (cas.remotes_config); a bare name (a tracking ref's
remote, or a mark by older cas) by its by-name flag, meta key ``remote.<name>.trusted``.
"""

from __future__ import annotations

from cas import provenance, remotes_config
from cas.store import Store

__all__ = ["remote_trusted", "set_remote_trusted"]


def remote_trusted(store: Store, origin: str) -> bool:
    """True if what came from ``origin`` may reach torch.

    ``origin`` is a remote's identity (cas.provenance): trusted only if that URL was
    trusted (``--trusted``) and, once pinned, by the same server. A bare name (a tracking
    ref's remote, or a mark by older cas) is trusted by its by-name flag or its current
    URL's trust.
    """
    if provenance.is_identity(origin):
        return remotes_config.trust_of(store, origin) is not None
    if (store.meta.get(f"remote.{origin}.trusted") or "").lower() == "true":
        return True
    return remotes_config.is_trusted(store, origin)


def set_remote_trusted(store: Store, name: str, trusted: bool = True) -> None:
    """Mark remote ``name`` trusted (its commits may reach torch) or not."""
    store.meta.set(f"remote.{name}.trusted", "true" if trusted else None)
