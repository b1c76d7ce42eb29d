"""Revocations across stores: fetch takes in the ones it may honour, push carries ours.

The revocation branch (:data:`cas.revocations.REF`) travels like any branch. Two rules
make it reach every machine without a user naming it (docs/sync.md, "Revocations"):

- **fetch** (and so pull and clone) brings the remote's revocation branch into the local
  one, by fast-forward or a merge (revocations are a union, so merges never conflict),
  when every new revocation commit is honoured here (:func:`cas.revocations.honoured`:
  a trusted remote, or signed by a trusted key). Otherwise none of them is taken: the
  ref update says so, and the CLI prints it as a warning. The tracking ref
  ``refs/remotes/<name>/cas/revocations`` keeps them, so trusting the remote (or its
  signer) later and fetching again takes them in.
- **push** adds the local revocation branch to what it publishes, whatever refs were
  named; if the remote's has revocations we lack, that ref is left as it is (fetch first)
  and the rest of the push goes on.
"""

from __future__ import annotations

from collections.abc import Sequence

from cas.config import identity
from cas.digest import ObjectId
from cas.errors import RefConflict
from cas.revocations import BRANCH, REF, commits_since, honoured, revoked_rows
from cas.store import Store
from cas.sync.merge import integrate
from cas.sync.results import RefUpdate, Result


def take(store: Store, tip: ObjectId | None, remote: str, result: Result) -> None:
    """After a fetch: integrate the remote's revocation branch at ``tip`` (received from
    the remote whose identity is ``remote``) if all its new revocations are honoured."""
    if tip is None:
        return
    local = store.refs.get(REF)
    refused = [why for oid, c in commits_since(store, tip, local) if revoked_rows(c)
               and (why := honoured(store, oid, c)) is not None]
    if refused:
        note = f"{len(refused)} revocation(s) ignored: {refused[0]}"
        result.updates.append(RefUpdate(REF, local, tip, "ignored", note))
        return
    try:
        done = integrate(store, REF, tip, message=f"revocations from {remote}", who=identity(), remote=remote)
    except RefConflict:  # a local `cas revoke` meanwhile: the next fetch takes them
        result.updates.append(RefUpdate(REF, local, tip, "ignored", f"{BRANCH} moved meanwhile; fetch again"))
        return
    if done.kind != "up-to-date":
        result.updates.append(RefUpdate(REF, done.old, done.new, done.kind))


def with_revocations(store: Store, refspecs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``refspecs`` plus the revocation branch, when this store has one."""
    out = list(refspecs)
    if store.refs.get(REF) is not None and all(dst != REF for _, dst in out):
        out.append((REF, REF))
    return out
