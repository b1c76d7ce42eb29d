"""Trusted remotes: whether what came from a remote identity may reach torch.

A remote is trusted by its identity (cas.provenance: URL and, once pinned, server id)
when that URL was given ``--trusted`` (cas.remotes_config); a bare name (a tracking ref's
remote, or a mark by older cas) by its by-name flag, meta key ``remote.<name>.trusted``.
"""

from __future__ import annotations

from cas import provenance, remotes_config
from cas.store import Store

__all__ = ["describe_untrusted", "remote_trusted", "set_remote_trusted"]


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


def describe_untrusted(store: Store, origin: str) -> tuple[str, str]:
    """``(who, how to trust it)`` for a refusal of what came from ``origin``, in the
    words a user types: the remote's name here with its URL, and the commands that trust
    that URL (trust is kept by URL: a remote is re-added with ``--trusted``)."""
    if not provenance.is_identity(origin):  # a bare name: an older mark or a tracking ref
        return repr(origin), f"cas remote add {origin} URL --trusted"
    url, _ = provenance.split_identity(origin)
    names = [cfg.name for cfg in remotes_config.list_remotes(store) if provenance.normal_url(cfg.url) == url]
    if not names:
        return repr(url), f"cas remote add NAME {url} --trusted"
    return f"{names[0]!r} ({url})", f"cas remote remove {names[0]}, then cas remote add {names[0]} {url} --trusted"
