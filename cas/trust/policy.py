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
   ``remote.<name>.trusted`` (:func:`cas.trust.remotes.set_remote_trusted`). Trusted keys
   are Ed25519 public keys listed in the meta key ``trust.keys``
   (:func:`cas.trust.keys.add_trusted_key`); signatures need the ``cryptography``
   package, and without it no signature verifies (fail closed). These facts live in
   :mod:`cas.trust.remotes` and :mod:`cas.trust.keys`, which revocations
   (:mod:`cas.revocations`) share.

The check costs one meta read per reachable commit, plus the ancestry of the tips of
untrusted remotes' refs (none in the common, single-machine case). A reader that follows
a growing branch (the Redis door) keeps an :class:`AllowedCommits`, which reads only the
commits made since the last allowed tip.
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
from cas.trust.keys import trusted_keys, verify
from cas.trust.remotes import describe_untrusted, remote_trusted

__all__ = ["AllowedCommits", "Verdict", "check_object_allowed", "check_ref_allowed", "commit_origin"]

#: Commits :class:`AllowedCommits` reads past the ones it allowed before deciding that a
#: ref's history needs the full check.
INCREMENT_LIMIT = 1000


@dataclass(frozen=True)
class Verdict:
    """Why a ref is allowed: ``reason`` is ``local``, ``trusted-remote`` or ``signed``."""

    ref: str
    commit: ObjectId
    reason: str
    remotes: tuple[str, ...] = ()


def _signed_tag(store: Store, oid: ObjectId) -> bool:
    got = store.objects.get_typed(oid)
    if got is None or got[0] != ObjType.TAG:
        return False
    tag = Tag.decode(got[1])
    return tag.signature is not None and verify(tag.signed_payload(), tag.signature, trusted_keys(store))


def _untrusted_reach(store: Store) -> dict[ObjectId, str]:
    """Commits reachable from the tracking refs of untrusted remotes, by remote."""
    out: dict[ObjectId, str] = {}
    for name, tip in store.refs.as_dict(refs.REMOTES).items():
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
    return check_object_allowed(store, ref, refs.resolve_object(store, ref))


def check_object_allowed(store: Store, ref: str, oid: ObjectId) -> Verdict:
    """Allow ``oid``, the object ``ref`` names (a commit or a tag), to reach torch, or
    raise :class:`PolicyError`: the check of :func:`check_ref_allowed` on a value of
    ``ref`` read before, so the verdict is about that very value."""
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
            who, trust_it = describe_untrusted(store, remote)
            raise PolicyError(
                f"{ref} holds commit {c.short()} from untrusted remote {who}; "
                "its artifacts are not handed to torch",
                hint=f"trust the remote ({trust_it}) or use a tag signed by a trusted key",
                ref=ref,
                oid=c,
            )
        remotes.add(remote)
    return Verdict(ref, commit, "trusted-remote" if remotes else "local", tuple(sorted(remotes)))


class AllowedCommits:
    """The policy for a reader that follows one ref as it moves (the Redis door).

    :func:`check_ref_allowed` walks the whole history of a ref; a branch that gets a
    commit every few seconds would make that walk longer each time. A local commit
    (cas.provenance) made on top of allowed ones is allowed by the same rule, so once a
    tip is allowed only the commits since are read; anything else (a merge from a
    remote, more than :data:`INCREMENT_LIMIT` new commits) takes the full check.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        #: Tips allowed so far (every commit below them is allowed too).
        self._allowed: set[ObjectId] = set()

    def check(self, ref: str, oid: ObjectId) -> ObjectId:
        """The commit ``oid`` (a value of ``ref``: a commit or a tag) peels to, if the
        policy allows it to reach torch; :class:`PolicyError` otherwise."""
        commit = refs.peel(self.store, oid)
        if not self._local_since_allowed(commit):
            check_object_allowed(self.store, ref, oid)
        self._allowed.add(commit)
        return commit

    def _local_since_allowed(self, commit: ObjectId) -> bool:
        """Whether every commit between ``commit`` and the tips allowed before is local."""
        todo, walked = [commit], 0
        while todo:
            c = todo.pop()
            if c in self._allowed:
                continue
            walked += 1
            if not self._allowed or walked > INCREMENT_LIMIT or provenance.origin(self.store, c) != "local":
                return False
            todo.extend(refs.load_commit(self.store, c).parents)
        return True
