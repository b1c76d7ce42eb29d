"""The exception tree of cas: one root, structured fields, mapped once.

Every error a user can cause or meet derives from :class:`CasError`. Each carries a
one-line, lower-case message, an optional hint, a process exit code and an HTTP status,
so that the CLI and the server each map errors in exactly one place. Foreign errors
(lmdb, OS, HTTP client, S3 client) are translated where they are caught, with
``raise ... from exc``. The exit-code table lives in docs/errors.md.
"""

from __future__ import annotations

from typing import Any


def shown(text: str, chars: int = 60) -> str:
    """``text`` quoted for a one-line message, cut to about ``chars`` characters (a name
    from a stranger may be megabytes long, or hold newlines)."""
    if len(text) <= chars:
        return repr(text)
    return repr(text[:chars]) + f"... ({len(text)} characters)"


class CasError(Exception):
    """Root of every error cas raises on purpose."""

    exit_code = 1
    http_status = 500

    def __init__(self, message: str, *, hint: str | None = None, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.fields = fields
        for name, value in fields.items():
            setattr(self, name, value)

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": type(self).__name__, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        for name, value in self.fields.items():
            out[name] = str(value) if value is not None else None
        return out


class UsageError(CasError):
    """The caller asked for something malformed (bad id, bad ref name, bad option)."""

    exit_code = 2
    http_status = 400


class BudgetTooSmall(UsageError):
    """A gc byte budget is smaller than what gc must keep (tags, recent commits, young
    objects): nothing is deleted."""

    max_size: int
    pinned: int


class BadObjectId(UsageError):
    """A string is not a valid object id or id prefix."""


class BadRefName(UsageError):
    """A ref name does not follow the rules of docs/format.md."""


class BadEntryKey(UsageError):
    """An entry key does not match its kind's grammar (cas.entrykeys): it could name a
    path outside a cache dir."""


class BadAutotuneRecord(UsageError):
    """An autotune record is malformed: a time that is no possible measurement (not
    finite, or under cas.timings.MIN_MS), or a ``source`` naming another kind's file."""


class BadRefTarget(UsageError):
    """A ref would point at an object that is not a commit or a tag."""


class RequestTooLarge(UsageError):
    """A request body exceeds the server's size limit."""

    http_status = 413


class NotFound(CasError):
    """A named thing does not exist."""

    exit_code = 3
    http_status = 404


class StoreNotFound(NotFound):
    """No store at the given path."""


class ObjectNotFound(NotFound):
    """A named object is not in the store."""


class RefNotFound(NotFound):
    """A named ref or revision does not exist."""


class RemoteNotFound(NotFound):
    """No remote of that name is configured."""


class AmbiguousId(UsageError):
    """An id prefix matches more than one object."""


class Conflict(CasError):
    """A compare-and-swap or merge could not be applied."""

    exit_code = 4
    http_status = 409


class RefConflict(Conflict):
    """A ref did not hold the expected value when it was to be updated."""


class NonFastForward(Conflict):
    """An update would discard commits; needs --force."""


class TagExists(Conflict):
    """A tag already exists and tags never move without --force."""


class MergeConflict(Conflict):
    """A merge found conflicts that its rules could not resolve."""


class IntegrityError(CasError):
    """Bytes do not match their id, or an object is malformed."""

    exit_code = 5
    http_status = 422


class CorruptObject(IntegrityError):
    """An object's bytes do not hash to its id, or do not decode."""


class MalformedPack(IntegrityError):
    """A pack stream is truncated or badly framed."""


class FormatVersionError(CasError):
    """The store or wire format version is not one this cas understands."""

    exit_code = 6
    http_status = 400


class StoreError(CasError):
    """The store cannot be used (locked, unreadable, disk full)."""

    exit_code = 7
    http_status = 503


class StoreFull(StoreError):
    """The disk or file system holding the store is full."""


class RemoteError(CasError):
    """A remote failed, refused or could not be reached."""

    exit_code = 8
    http_status = 502

    #: True when retrying the same request may succeed (timeouts, 5xx, resets).
    transient = False


class TransientRemoteError(RemoteError):
    """A remote failure that a retry may cure."""

    transient = True


class AuthError(RemoteError):
    """Missing or wrong credentials, or a token without the needed scope."""

    exit_code = 9
    http_status = 401


class Forbidden(AuthError):
    """Credentials are valid but lack the scope for this operation."""

    http_status = 403


class PolicyError(CasError):
    """The trust policy forbids handing these bytes to torch."""

    exit_code = 10
    http_status = 403


class TorchError(CasError):
    """The torch integration cannot do what was asked (no torch, bad env)."""

    exit_code = 11
    http_status = 500


class DeadlineExceeded(RemoteError):
    """A remote did not finish answering one request within its deadline (a trickling
    server). Not transient: another try would cost another whole deadline."""
