"""Trust policy: which refs may hand their bytes to torch.

Invariant: nothing pulled from a remote is unpickled by torch unless the policy in force
allows its source (signed by a trusted key, or a remote marked trusted).

Torch unpickles what its caches return, so an entry is code. The rule, kept simple:

1. A ref is allowed if every commit reachable from it is **local** or comes from a
   **trusted remote**; or if it names an annotated **tag signed by a trusted key** (the
   signature covers the tag, the tag names the commit by hash, and every object below is
   hash-checked, so the whole snapshot is authenticated).
2. Where a commit came from is decided from local facts only, first match wins:
   - ``origin.<commit hex>`` in the store's meta: ``local`` (written by cas when it
     commits in this store: ``cas.provenance.mark_local``) or ``remote:<identity>``
     (``cas.provenance.mark_remote``, called by sync when it receives commits; the
     identity is the remote's URL and server id, never its name);
   - the commit's own metadata names a ``remote`` identity (sync's merge and
     partial-pull commits);
   - the commit is reachable from ``refs/remotes/<name>/*`` of an untrusted remote:
     from that remote. Anything else is a local capture, always allowed.
3. A remote identity is trusted when its URL was given ``--trusted``
   (cas.remotes_config.set_trusted; removing the remote drops it) and, once its server id
   is pinned, the id matches. Bare names (older marks) use the meta key
   ``remote.<name>.trusted`` (:func:`set_remote_trusted`). Trusted keys are Ed25519 public keys listed in the meta
   key ``trust.keys`` (:func:`add_trusted_key`); signatures need the ``cryptography``
   package, and without it no signature verifies (fail closed). These primitives live in
   :mod:`cas.trust`, which revocations (:mod:`cas.revocations`) share.

The check costs one meta read per reachable commit, plus the ancestry of the tips of
untrusted remotes' refs (none in the common, single-machine case).
"""

from __future__ import annotations

from dataclasses import dataclass

from cas import provenance, refs
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import PolicyError
from cas.history import ancestors
from cas.objects import Tag
from cas.store import Store
from cas.trust import (  # the primitives live below torch; re-exported for callers
    add_trusted_key,
    remote_trusted,
    set_remote_trusted,
    sign,
    trusted_keys,
    verify,
)

__all__ = [
    "Verdict",
    "add_trusted_key",
    "check_ref_allowed",
    "commit_origin",
    "remote_trusted",
    "set_remote_trusted",
    "sign",
    "trusted_keys",
    "verify",
]


@dataclass(frozen=True)
class Verdict:
    """Why a ref is allowed: ``reason`` is ``local``, ``trusted-remote`` or ``signed``."""

    ref: str
    commit: ObjectId
    reason: str
    remotes: tuple[str, ...] = ()


def _signed_tag(store: Store, oid: ObjectId) -> bool:
    got = store.get_typed(oid)
    if got is None or got[0] != ObjType.TAG:
        return False
    tag = Tag.decode(got[1])
    return tag.signature is not None and verify(tag.signed_payload(), tag.signature, trusted_keys(store))


def _untrusted_reach(store: Store) -> dict[ObjectId, str]:
    """Commits reachable from the tracking refs of untrusted remotes, by remote."""
    out: dict[ObjectId, str] = {}
    for name, tip in store.list_refs(refs.REMOTES).items():
        remote = name[len(refs.REMOTES) :].split("/", 1)[0]
        if remote_trusted(store, remote):
            continue
        try:
            commit = refs.peel(store, tip)
        except Exception:  # a tracking ref to a non-commit: nothing to attribute
            continue
        for oid in ancestors(store, commit):
            out.setdefault(oid, remote)
    return out


def commit_origin(store: Store, oid: ObjectId, reach: dict[ObjectId, str] | None = None) -> str | None:
    """The remote commit ``oid`` came from, or None for a local commit."""
    origin = provenance.origin(store, oid)
    if origin == "local":
        return None
    if origin and origin.startswith("remote:"):
        return origin[len("remote:") :]
    remote = refs.load_commit(store, oid).metadata.get("remote")
    if isinstance(remote, str) and remote:
        return remote
    return (reach or {}).get(oid)


def check_ref_allowed(store: Store, ref: str) -> Verdict:
    """Allow ``ref`` to reach torch, or raise :class:`PolicyError` saying why not."""
    oid = refs.resolve_object(store, ref)
    commit = refs.peel(store, oid)
    if oid != commit and _signed_tag(store, oid):
        return Verdict(ref, commit, "signed")
    reach = _untrusted_reach(store)
    remotes: set[str] = set()
    for c in sorted(ancestors(store, commit)):
        remote = commit_origin(store, c, reach)
        if remote is None:
            continue
        if not remote_trusted(store, remote):
            raise PolicyError(
                f"{ref} holds commit {c.short()} from untrusted remote {remote!r}; "
                "its artifacts are not handed to torch",
                hint=f"trust the remote (cas remote add {remote} URL --trusted) "
                "or use a tag signed by a trusted key",
                ref=ref,
                oid=c,
            )
        remotes.add(remote)
    return Verdict(ref, commit, "trusted-remote" if remotes else "local", tuple(sorted(remotes)))
