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
   package, and without it no signature verifies (fail closed).

The check costs one meta read per reachable commit, plus the ancestry of the tips of
untrusted remotes' refs (none in the common, single-machine case).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cas import provenance, refs, remotes_config
from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import PolicyError
from cas.history import ancestors
from cas.objects import Tag
from cas.store import Store

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

_KEYS_META = "trust.keys"


@dataclass(frozen=True)
class Verdict:
    """Why a ref is allowed: ``reason`` is ``local``, ``trusted-remote`` or ``signed``."""

    ref: str
    commit: ObjectId
    reason: str
    remotes: tuple[str, ...] = ()


def remote_trusted(store: Store, origin: str) -> bool:
    """True if what came from ``origin`` may reach torch.

    ``origin`` is a remote's identity (cas.provenance): trusted only if that URL was
    trusted (``--trusted``) and, once pinned, by the same server. A bare name (a tracking
    ref's remote, or a mark by older cas) is trusted by its by-name flag or its current
    URL's trust.
    """
    if provenance.is_identity(origin):
        return remotes_config.trust_of(store, origin) is not None
    if (store.get_meta(f"remote.{origin}.trusted") or "").lower() == "true":
        return True
    return remotes_config.is_trusted(store, origin)


def set_remote_trusted(store: Store, name: str, trusted: bool = True) -> None:
    """Mark remote ``name`` trusted (its commits may reach torch) or not."""
    store.set_meta(f"remote.{name}.trusted", "true" if trusted else None)


def trusted_keys(store: Store) -> list[bytes]:
    raw = store.get_meta(_KEYS_META)
    return [bytes.fromhex(k) for k in json.loads(raw)] if raw else []


def add_trusted_key(store: Store, public_key: bytes) -> None:
    """Trust signatures made with the Ed25519 key whose 32-byte public half is given."""
    if len(public_key) != 32:
        raise PolicyError("an ed25519 public key is 32 bytes")
    keys = {k.hex() for k in trusted_keys(store)} | {public_key.hex()}
    store.set_meta(_KEYS_META, json.dumps(sorted(keys)))


def sign(private_key: bytes, payload: bytes) -> bytes:
    """Sign ``payload`` with a raw 32-byte Ed25519 private key (needs ``cryptography``)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(private_key).sign(payload)


def verify(payload: bytes, signature: bytes, keys: list[bytes]) -> bool:
    """True if one of ``keys`` signed ``payload``; False without ``cryptography``."""
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ImportError:
        return False
    for key in keys:
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(signature, payload)
            return True
        except (InvalidSignature, ValueError):
            continue
    return False


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
