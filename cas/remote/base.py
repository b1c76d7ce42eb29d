"""The Remote protocol: what every transport (path, HTTP, S3) offers, and its contract.

A remote is a dumb object store with compare-and-swap refs. All negotiation (what to
send, what to fetch, merges) lives in cas.sync, which only calls these methods, so that
a new transport is one module plus a fixture bound to tests/remote's contract suite.

Contract, for every implementation:

* Ids are always checked. ``send_pack`` hashes every object it receives and refuses the
  whole batch (:class:`~cas.errors.CorruptObject` / :class:`~cas.errors.MalformedPack`)
  if one does not match its id; a rejected object is never stored. ``fetch`` returns
  bytes the *caller* verifies again (never trust the other side).
* Idempotent: sending an object the remote already has is a no-op; repeating a
  ``send_pack`` after a dropped connection is safe.
* Closure: a remote never publishes (makes reachable from a ref) an object whose
  references it does not hold. ``update_ref`` refuses a target the remote lacks with
  :class:`~cas.errors.ObjectNotFound` and changes nothing.
* A miss is a value: ``missing`` lists absent ids; ``fetch`` leaves absent ids out of
  its result; ``list_refs`` of an empty remote is ``{}``.
* ``update_ref`` is compare-and-swap: ``expected=None`` means "must not exist". On a
  mismatch it raises :class:`~cas.errors.RefConflict` and changes nothing.
* Expected types: ``fetch(oids, expect=...)`` takes what the caller knows in advance,
  a mapping of ids to the types each may have (a ref target is a commit or a tag, a
  commit's manifest a node, a leaf's blob a blob). A transport checks each object's type
  against it, and a structured object's size against ``cas.pack.MAX_STRUCTURED``, from
  the frame or record header alone (:func:`cas.pack.check_expected`), before it reads
  or decompresses the content, and on a mismatch raises
  :class:`~cas.errors.CorruptObject` (oversized: :class:`~cas.errors.MalformedPack`)
  naming the object and the remote, returning nothing. So a hostile remote naming a
  1 GiB blob where a commit belongs costs its header, not a gigabyte. Ids absent from
  ``expect`` may be of any type; the caller still verifies what it gets.
* Errors: network failures and 5xx answers raise :class:`~cas.errors.TransientRemoteError`
  (a retry may cure them); bad credentials :class:`~cas.errors.AuthError`; everything
  else a :class:`~cas.errors.RemoteError` with the URL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

from cas.codec import ObjType
from cas.digest import ObjectId
from cas.pack import Expect, Sized

#: One object on the wire: its id, type and raw (uncompressed) bytes.
WireObject = tuple[ObjectId, ObjType, bytes]
Progress = Callable[[int, int], None]  # (objects done, bytes done)

__all__ = ["Expect", "FrameSender", "Progress", "RawPackSender", "Remote", "WireObject"]


@runtime_checkable
class Remote(Protocol):
    url: str

    def list_refs(self, prefix: str = "refs/") -> dict[str, ObjectId]:
        """Every ref under ``prefix`` and its target. One request."""
        ...

    def missing(self, oids: Sequence[ObjectId]) -> list[ObjectId]:
        """Which of ``oids`` the remote lacks. Implementations batch internally."""
        ...

    def send_pack(self, objects: Iterable[WireObject], progress: Progress | None = None) -> int:
        """Upload objects (children before parents) in packs; returns bytes sent.

        Objects are stored on the remote as each pack is accepted, so a transfer cut
        half-way keeps its finished packs and a retry sends only what is still missing.
        """
        ...

    def fetch(
        self, oids: Sequence[ObjectId], progress: Progress | None = None, expect: Expect | None = None
    ) -> list[WireObject]:
        """Download the given objects (absent ones are left out), in packs; with
        ``expect``, refuse one of another type before reading its content (see above)."""
        ...

    def update_ref(self, name: str, new: ObjectId | None, expected: ObjectId | None) -> None:
        """Compare-and-swap a ref; ``new=None`` deletes it."""
        ...

    def close(self) -> None: ...


class RawPackSender(Protocol):
    """Optional extension: upload a pack exactly as given (tests use it for bad packs).

    ``send_pack_bytes`` takes the bytes of one whole pack (cas.pack framing), verifies
    and stores it all or nothing, and returns the bytes sent. Malformed, truncated or
    corrupt packs raise :class:`~cas.errors.MalformedPack` /
    :class:`~cas.errors.CorruptObject` and leave the remote unchanged. Every transport
    in cas offers it; callers test with ``hasattr``.
    """

    def send_pack_bytes(self, data: bytes) -> int: ...


class FrameSender(Protocol):
    """Optional extension: a remote whose ``send_pack`` also takes
    :class:`cas.pack.Sized` objects (the zstd frames a store holds, sent as they are,
    their bytes never decompressed) says so with ``takes_stored_frames``; a pusher then
    reads what it sends with :func:`cas.pack.from_store_frames`. ``multi_frame`` (asked
    only when a blob over 4 MiB is to go) says whether a chunked blob may go as its
    chunks' frames. HttpRemote is one; RetryingRemote forwards its inner remote's."""

    takes_stored_frames: bool

    @property
    def multi_frame(self) -> bool: ...

    def send_pack(self, objects: Iterable[WireObject | Sized], progress: Progress | None = None) -> int: ...
