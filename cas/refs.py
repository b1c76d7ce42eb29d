"""Ref names, revision parsing, branches and tags.

Refs are the only mutable state of a store. Every update goes through ``store.refs.set``
(:meth:`cas.store.refs.Refs.set`), a compare-and-swap logged in the reflog. Names follow
git's rules (docs/format.md, "Refs and reflog"):

* ``refs/heads/NAME``   branches
* ``refs/tags/NAME``    tags (never moved without ``force``)
* ``refs/remotes/R/NAME`` the last seen state of remote R

A revision is a ref name (full or short), ``HEAD``, a hex id prefix (at least 4
characters), optionally followed by ``~N`` or ``^`` suffixes (first parent).
"""

from __future__ import annotations

import re
import time

from cas import validate
from cas.codec import ObjType
from cas.config import identity
from cas.digest import ObjectId, is_hex_prefix
from cas.errors import (
    AmbiguousId,
    BadRefName,
    BadRefTarget,
    CorruptObject,
    ObjectNotFound,
    RefNotFound,
    TagExists,
    UsageError,
    shown,
)
from cas.objects import Commit, Tag
from cas.store import ANY, Store

HEADS = "refs/heads/"
TAGS = "refs/tags/"
REMOTES = "refs/remotes/"
DEFAULT_BRANCH = "main"
_SEARCH = ("", "refs/", HEADS, TAGS, REMOTES)
_BAD = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(/|$)")
_SUFFIX = re.compile(r"(~\d*|\^)$")


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid full ref name, else raise BadRefName."""
    if (
        not name.startswith("refs/")
        or name.endswith("/")
        or name.endswith(".")
        or _BAD.search(name)
        or len(name.encode()) > 400
    ):
        raise BadRefName(f"invalid ref name: {shown(name)}", hint="see docs/format.md, section 6")
    return name


def check_any(name: str) -> str:
    """:func:`check_name`, plus git's branch and tag rules for a name under
    ``refs/heads/`` or ``refs/tags/``: the check for every name a remote lists, since
    what it names becomes a local ref."""
    for prefix, what in ((HEADS, "branch"), (TAGS, "tag")):
        if name.startswith(prefix):
            return _under(prefix, name, what)
    return check_name(name)


def branch_ref(name: str) -> str:
    return _under(HEADS, name, "branch")


def tag_ref(name: str) -> str:
    return _under(TAGS, name, "tag")


def _under(prefix: str, name: str, what: str) -> str:
    """The full ref of a branch or tag name, with git's extra rules for those: not
    ``HEAD`` or ``@`` (they would shadow revisions), not starting with ``-`` (an option)."""
    short = name[len(prefix) :] if name.startswith(prefix) else name
    if short in ("HEAD", "@") or short.startswith("-"):
        raise BadRefName(f"invalid {what} name: {shown(short)}", hint=f"a {what} is not named HEAD or @ and does not start with '-'")
    return check_name(name if name.startswith("refs/") else prefix + name)


def short_name(ref: str) -> str:
    for prefix in (HEADS, TAGS, REMOTES):
        if ref.startswith(prefix):
            return ref[len(prefix) :]
    return ref


def head(store: Store) -> str:
    """The full name of the default branch (``HEAD``)."""
    return store.meta.get("HEAD") or HEADS + DEFAULT_BRANCH


def find_ref(store: Store, name: str) -> tuple[str, ObjectId] | None:
    """Look a (short or full) ref name up, git's order: exact, heads, tags, remotes."""
    if name == "HEAD":
        name = head(store)
    for prefix in _SEARCH:
        full = prefix + name
        if not full.startswith("refs/"):
            continue
        oid = store.refs.get(full)
        if oid is not None:
            return full, oid
    return None


def resolve_object(store: Store, rev: str) -> ObjectId:
    """Resolve a revision to an object id (tags are not peeled)."""
    rev = rev.strip()
    if not rev:
        raise UsageError("empty revision")
    base, steps = _split_suffixes(rev)
    if steps:
        oid = peel(store, resolve_object(store, base))
        for _ in range(steps):
            commit = load_commit(store, oid)
            if not commit.parents:
                raise RefNotFound(f"revision {rev!r} goes past the first commit")
            oid = commit.parents[0]
        return oid
    found = find_ref(store, rev)
    if found is not None:
        return found[1]
    if is_hex_prefix(rev):
        matches = store.objects.resolve_prefix(rev, limit=2)
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise AmbiguousId(
                f"id prefix {rev!r} is ambiguous", hint="give more characters of the id"
            )
    raise RefNotFound(
        f"unknown revision {rev!r}", hint="see `cas refs` for branches and tags", ref=rev
    )


def resolve(store: Store, rev: str) -> ObjectId:
    """Resolve a revision to a commit id, peeling tags."""
    return peel(store, resolve_object(store, rev))


def peel(store: Store, oid: ObjectId) -> ObjectId:
    """Follow tags until a commit is reached."""
    for _ in range(32):
        got = store.objects.get_typed(oid)
        if got is None:
            raise ObjectNotFound(f"object {oid} not found", oid=oid)
        otype, data = got
        if otype == ObjType.COMMIT:
            return oid
        if otype != ObjType.TAG:
            raise UsageError(f"{oid.short()} is a {otype.label}, not a commit")
        oid = Tag.decode(data).target
    raise CorruptObject(f"tag chain at {oid.short()} is too long")


def load_commit(store: Store, oid: ObjectId) -> Commit:
    otype, data = store.objects.require(oid, verify=True)  # read commands trust no disk
    if otype != ObjType.COMMIT:
        raise UsageError(f"{oid.short()} is a {otype.label}, not a commit")
    return Commit.decode(data)


def _split_suffixes(rev: str) -> tuple[str, int]:
    steps = 0
    while (m := _SUFFIX.search(rev)) and m.start() > 0:
        text = m.group(1)
        steps += 1 if text in ("^", "~") else int(text[1:])
        rev = rev[: m.start()]
    return rev, steps


def set_branch(
    store: Store,
    name: str,
    new: ObjectId,
    *,
    expected: ObjectId | None | object = ANY,
    message: str = "",
) -> ObjectId | None:
    return store.refs.set(branch_ref(name), new, expected=expected, who=identity(), message=message)


def delete_ref(store: Store, full: str, *, expected: ObjectId | None | object = ANY) -> None:
    if store.refs.get(full) is None:
        raise RefNotFound(f"no such ref: {short_name(full)}", ref=full)
    store.refs.set(full, None, expected=expected, who=identity(), message="delete")


def create_tag(
    store: Store,
    name: str,
    target: ObjectId,
    *,
    message: str | None = None,
    force: bool = False,
    signature: bytes | None = None,
) -> ObjectId:
    """Pin ``target``: annotated when ``message`` is given, else lightweight.

    Tags never move without ``force``; re-tagging the same target is a no-op.
    """
    full = tag_ref(name)
    old = store.refs.get(full)
    oid = target
    if message is not None:
        otype = store.objects.require(target)[0]
        if otype not in validate.TAG_TARGETS:
            raise BadRefTarget(f"cannot tag {target.short()}: a {otype.label}, not a commit or tag", oid=target)
        tag = Tag(target, otype, name, identity(), int(time.time()), message, signature)
        oid = store.objects.put_object(tag)
    if old is not None and not force:
        if old == oid or (message is None and _tag_target(store, old) == target):
            return old
        raise TagExists(
            f"tag {name} already exists (at {old.short()})",
            hint="tags never move; use --force to move it anyway",
            ref=full,
        )
    store.refs.set(
        full, oid, expected=old, who=identity(), message="tag" + (" (forced)" if old else "")
    )
    return oid


def _tag_target(store: Store, oid: ObjectId) -> ObjectId:
    got = store.objects.get_typed(oid)
    if got is not None and got[0] == ObjType.TAG:
        return Tag.decode(got[1]).target
    return oid
