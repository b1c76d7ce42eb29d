"""The budget keeper: a served store stays under its saved byte budget as it is written.

``cas serve`` applies the store's ``gc.budget`` setting (``cas gc --max-size N --save``;
cas.budget) from one background thread, so that no request waits on a gc:

* every ``every`` seconds it writes the reads noted since its last round (HTTP fetches,
  Redis GETs: cas.store.reads), one transaction;
* in a round after a write (a ref update over HTTP, a Redis door commit: both call
  :meth:`BudgetKeeper.wrote`), it sums the stored bytes, and when they exceed the
  budget runs a budget gc (cas.gc) with the budget's grace period.

Writes are never refused: a store that cannot be brought under budget (what must be
kept is larger) is logged once per round as a warning, and grows. The choice, and why
not a hard limit, is in docs/server.md ("A size-bounded store").
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from cas import budget as budgets
from cas.errors import BudgetTooSmall, CasError
from cas.gc import DEFAULT_GRACE_SECONDS, GcReport, gc
from cas.store import Store

LOG = logging.getLogger("cas.server.gc")

#: Seconds between the keeper's rounds (``cas serve --gc-every``).
DEFAULT_EVERY = 30.0


class BudgetKeeper:
    """Flushes noted reads and keeps the store under its saved budget (module docstring)."""

    def __init__(self, path: Path, every: float = DEFAULT_EVERY) -> None:
        self.path = path
        self.every = every
        self._stop = threading.Event()
        self._wrote = threading.Event()
        self._thread: threading.Thread | None = None
        #: The last budget gc's report (None until one ran), for the web view and the logs.
        self.last: GcReport | None = None
        #: Stored bytes at the last check after a write (None until one), for the web view.
        self.size: int | None = None
        self.rounds = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="cas-budget-keeper", daemon=True)
        self._thread.start()

    def wrote(self) -> None:
        """Note that the store was written: the next round checks the budget."""
        self._wrote.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        with Store(self.path) as store:
            while not self._stop.wait(self.every):
                self.round(store)
            store.maintenance.flush_reads()

    def round(self, store: Store) -> None:
        """One round: flush reads; after a write, gc if the store is over budget."""
        try:
            store.maintenance.flush_reads()
            if self._wrote.is_set():
                self._wrote.clear()
                self._check(store)
        except Exception:  # a broken store must not kill the thread: logged, next round
            LOG.exception("budget keeper round failed")
        self.rounds += 1

    def _check(self, store: Store) -> None:
        budget = budgets.load(store)
        if budget is None:
            return
        size = self.size = sum(r.stored_size for r in store.objects.iter_records())
        if size <= budget.max_size:
            return
        grace = DEFAULT_GRACE_SECONDS if budget.grace_seconds is None else budget.grace_seconds
        try:
            self.last = gc(store, grace_seconds=grace, budget=budget)
        except BudgetTooSmall as exc:
            LOG.warning("store stays over its gc budget: %s", exc)
            return
        except CasError as exc:
            LOG.warning("budget gc failed: %s", exc)
            return
        self.size = self.last.size_after
        LOG.info("budget gc: evicted %d blobs (%d bytes); %d of %d bytes stored",
                 self.last.evicted, self.last.evicted_bytes, self.last.size_after or 0, budget.max_size)


__all__ = ["DEFAULT_EVERY", "BudgetKeeper"]
