"""Retries with exponential backoff around any Remote (restic's ``wrapBackend`` idea).

Only :class:`~cas.errors.TransientRemoteError` is retried: it is what transports raise
for timeouts, resets and 5xx answers. Everything else (auth, integrity, conflicts) is a
verdict and goes straight to the caller.

Two calls need more than "do it again":

* ``send_pack``: packs already accepted before the failure are kept by the remote, so a
  retry first asks ``missing`` and re-sends only what did not arrive.
* ``update_ref``: if the first attempt landed but its answer was lost, the retry meets
  a RefConflict against its own value; that counts as success.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from cas.digest import ObjectId
from cas.errors import RefConflict, TransientRemoteError
from cas.pack import Sized
from cas.remote.base import Expect, Progress, Remote, WireObject

T = TypeVar("T")


class RetryingRemote:
    """Wrap ``inner`` so that transient failures are retried ``attempts`` times in all."""

    def __init__(
        self,
        inner: Remote,
        *,
        attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.url = inner.url
        self.attempts = max(1, attempts)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self._sleep = sleep
        #: How many retries were needed so far (for summaries and tests).
        self.retries = 0

    def _backoff(self, attempt: int) -> None:
        self.retries += 1
        delay = min(self.max_delay, self.base_delay * (2**attempt))
        # Jitter keeps a fleet of clients from retrying in lockstep.
        self._sleep(delay * (0.5 + random.random() / 2))

    def _call(self, fn: Callable[[], T]) -> T:
        for attempt in range(self.attempts):
            try:
                return fn()
            except TransientRemoteError:
                if attempt + 1 >= self.attempts:
                    raise
                self._backoff(attempt)
        raise AssertionError("unreachable")

    def list_refs(self, prefix: str = "refs/") -> dict[str, ObjectId]:
        return self._call(lambda: self.inner.list_refs(prefix))

    def missing(self, oids: Sequence[ObjectId]) -> list[ObjectId]:
        return self._call(lambda: self.inner.missing(oids))

    def fetch(
        self, oids: Sequence[ObjectId], progress: Progress | None = None, expect: Expect | None = None
    ) -> list[WireObject]:
        return self._call(lambda: self.inner.fetch(oids, progress, expect))

    @property
    def takes_stored_frames(self) -> bool:
        """What the inner remote says (cas.remote.base.FrameSender)."""
        return getattr(self.inner, "takes_stored_frames", False) is True

    @property
    def multi_frame(self) -> bool:
        return getattr(self.inner, "multi_frame", False) is True

    def send_pack(self, objects: Iterable[WireObject | Sized], progress: Progress | None = None) -> int:
        todo = list(objects)
        sent = 0
        for attempt in range(self.attempts):
            try:
                # Sized objects come only where the inner remote takes them (takes_stored_frames)
                return sent + self.inner.send_pack(todo, progress)  # type: ignore[arg-type]
            except TransientRemoteError:
                if attempt + 1 >= self.attempts:
                    raise
                self._backoff(attempt)
                # Resume: what arrived before the cut stays; send only the rest.
                ids = [o[0] for o in todo]
                absent = set(self._call(lambda ids=ids: self.inner.missing(ids)))  # type: ignore[misc]
                todo = [o for o in todo if o[0] in absent]
        raise AssertionError("unreachable")

    def send_pack_bytes(self, data: bytes) -> int:
        return self._call(lambda: self.inner.send_pack_bytes(data))  # type: ignore[attr-defined]

    def update_ref(self, name: str, new: ObjectId | None, expected: ObjectId | None) -> None:
        for attempt in range(self.attempts):
            try:
                self.inner.update_ref(name, new, expected)
                return
            except TransientRemoteError:
                if attempt + 1 >= self.attempts:
                    raise
                self._backoff(attempt)
            except RefConflict:
                # Only after a lost answer can the ref already hold our own value.
                if attempt and self._call(lambda: self.inner.list_refs(name)).get(name) == new:
                    return
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.inner.close()
