"""Bearer tokens for ``cas serve``: scoped read or write, stored only as hashes.

A token is ``cas_`` + 32 random bytes in URL-safe base64; it is shown once, when it is
made, and only its SHA-256 is kept. SHA-256 (not a slow password hash) is enough because
tokens carry 256 bits of entropy: nobody can brute-force them from the hash, and the
server can look a presented token up in O(1).

Tokens live either in the store's meta db (keys ``token.<name>``, the default) or in a
JSON file (``cas serve --token-file``), which suits read-only deployments and secrets
mounted from elsewhere. Both hold the same record: ``{"scope": ..., "sha256": ...}``.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cas.errors import UsageError
from cas.store import Store

_META_PREFIX = "token."
_NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class Scope(enum.Enum):
    """What a token may do: ``read`` fetches, ``write`` also pushes and moves refs."""

    READ = "read"
    WRITE = "write"

    def allows(self, needed: Scope) -> bool:
        return self is Scope.WRITE or needed is Scope.READ

    @classmethod
    def parse(cls, text: str) -> Scope:
        try:
            return cls(text)
        except ValueError as exc:
            raise UsageError(f"unknown token scope {text!r}", hint="use read or write") from exc


@dataclass(frozen=True)
class TokenRecord:
    name: str
    scope: Scope
    sha256: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (shown to the user once, never stored)."""
    return "cas_" + secrets.token_urlsafe(32)


class Tokens:
    """An in-memory table of token hashes, loaded from the store or a file."""

    def __init__(self, records: list[TokenRecord] | None = None) -> None:
        self._by_hash = {r.sha256: r for r in records or []}

    def __len__(self) -> int:
        return len(self._by_hash)

    def records(self) -> list[TokenRecord]:
        return sorted(self._by_hash.values(), key=lambda r: r.name)

    def check(self, token: str) -> TokenRecord | None:
        """The record of a presented token, or None if it is unknown (a miss is a value)."""
        digest = _digest(token)
        rec = self._by_hash.get(digest)
        # The dict lookup is on a hash of a high-entropy secret, so it leaks nothing
        # useful; compare_digest just keeps the final comparison constant-time.
        if rec is not None and hmac.compare_digest(rec.sha256, digest):
            return rec
        return None

    # -- persistence ---------------------------------------------------------------------

    @classmethod
    def from_store(cls, store: Store) -> Tokens:
        records = []
        for name in _meta_names(store):
            raw = store.meta.get(_META_PREFIX + name)
            if raw:
                records.append(_record(name, json.loads(raw)))
        return cls(records)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Tokens:
        p = Path(path)
        if not p.exists():
            return cls()
        try:
            data = json.loads(p.read_text())
            return cls([_record(name, rec) for name, rec in data.items()])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"token file {p} is malformed: {exc}") from exc


def _record(name: str, rec: dict[str, str]) -> TokenRecord:
    return TokenRecord(name, Scope.parse(rec["scope"]), rec["sha256"])


def _meta_names(store: Store) -> list[str]:
    raw = store.meta.get("tokens")
    return json.loads(raw) if raw else []


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise UsageError(
            f"invalid token name {name!r}", hint="use letters, digits, '.', '_', '@' or '-'"
        )


def add_token(
    name: str, scope: Scope, *, store: Store | None = None, path: str | os.PathLike[str] | None = None
) -> str:
    """Make a token called ``name`` in the store's meta db or in a token file.

    Returns the token itself, which is not kept anywhere: the caller shows it once.
    Re-adding a name replaces its token (rotation).
    """
    _check_name(name)
    token = new_token()
    rec = {"scope": scope.value, "sha256": _digest(token)}
    if path is not None:
        _update_file(Path(path), name, rec)
    elif store is not None:
        names = _meta_names(store)
        store.meta.set(_META_PREFIX + name, json.dumps(rec))
        if name not in names:
            store.meta.set("tokens", json.dumps(sorted([*names, name])))
    else:
        raise UsageError("add_token needs a store or a token file")
    return token


def remove_token(
    name: str, *, store: Store | None = None, path: str | os.PathLike[str] | None = None
) -> bool:
    """Forget a token; returns False if there was none of that name."""
    if path is not None:
        return _update_file(Path(path), name, None)
    if store is None:
        raise UsageError("remove_token needs a store or a token file")
    names = _meta_names(store)
    if name not in names:
        return False
    store.meta.set(_META_PREFIX + name, None)
    store.meta.set("tokens", json.dumps([n for n in names if n != name]))
    return True


def _update_file(path: Path, name: str, rec: dict[str, str] | None) -> bool:
    data = json.loads(path.read_text()) if path.exists() else {}
    existed = name in data
    if rec is None:
        data.pop(name, None)
    else:
        data[name] = rec
    tmp = path.with_name(path.name + ".tmp")
    # Written 0600 and renamed into place: a crash never leaves half a token file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return existed
