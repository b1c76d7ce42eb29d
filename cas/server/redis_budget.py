"""The Redis door's memory for write values: the bytes of values being received plus
those accepted and not yet committed, capped across the whole door.

A write-scope connection reserves the bytes its unfinished command declares as soon as a
header declares them, before they arrive. A reservation that does not fit waits: the
connection stops reading its socket (backpressure: the client's sends block, nothing is
refused) and the door commits what is pending; each commit that lands frees room and
wakes the waiters. Reserving the declared size all at once, rather than counting bytes as
they arrive, means a connection that got its room can always finish its command, so
connections half-way through values never wait on each other for ever.

A command larger than the whole budget (only possible when ``--redis-max-pending`` is
below ``--redis-max-value``) still gets through, alone: it is admitted when nothing else
is held, so the bound is the larger of the two.

A command that arrives whole in one packet (how redis-py sends a small SET) declares
nothing before it is read: it is accepted as it is. So that such commands cannot pile up
past the budget while commits lag (a stalled disk, a slow commit), a write connection
also stops reading while the values held fill the budget (:meth:`full`), until a commit
frees room: the door then holds at most the budget plus what each connection had read.
"""

from __future__ import annotations

from collections.abc import Callable


class WriteBudget:
    """Bytes of write values the door holds, against ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: Values accepted and not yet committed (pending and being committed).
        self.held = 0
        #: Bytes declared by unfinished commands of write-scope connections.
        self.reserved = 0
        #: Times a connection stopped reading to wait for room (reported as a metric).
        self.waits = 0
        self._waiting: dict[int, Callable[[], None]] = {}

    @property
    def used(self) -> int:
        return self.held + self.reserved

    def reserve(self, have: int, want: int) -> bool:
        """Grow (or shrink) a reservation from ``have`` to ``want`` bytes; False if it does
        not fit now (the caller waits, see :meth:`wait`)."""
        others = self.used - have
        if want > have and others + want > self.limit and others > 0:
            return False
        self.reserved += want - have
        if want < have:
            self._wake()
        return True

    def full(self) -> bool:
        """Whether the values held (accepted, not yet committed) fill the budget."""
        return self.held >= self.limit

    def accept(self, n: int) -> None:
        """``n`` bytes of values became pending (negative: replaced by smaller ones)."""
        self.held += n

    def free(self, n: int) -> None:
        """``n`` bytes of values were committed (or dropped): wake whoever waits for room."""
        self.held -= n
        self._wake()

    def wait(self, key: int, wake: Callable[[], None]) -> None:
        """Call ``wake`` (once) the next time room may have been freed."""
        if key not in self._waiting:
            self.waits += 1
        self._waiting[key] = wake

    def forget(self, key: int) -> None:
        self._waiting.pop(key, None)

    def _wake(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for wake in waiting.values():
            wake()
