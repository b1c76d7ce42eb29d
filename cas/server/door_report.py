"""Miss reports of the Redis door (``cas serve --redis-report-misses``).

Stock torch and Triton processes that read the door know nothing of cas, so the door
reports for them: per served commit (the pin), its GET hits and misses per kind and the
first keys of each kind that missed, committed as a miss report (docs/format.md, section
12; ``processes`` is 0, ``rebuilds`` empty: the door cannot see what torch rebuilt) on
``cas/reports/<host>-redis-door`` of the served store every ``every`` seconds and at
shutdown. Counting happens in memory on the event loop's thread (one parse and two dict
updates per GET, only when reporting is on); the store is written once per report, from
the door's commit thread. ``cas coverage PIN`` then sums them with the reports of
``cas run``.
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from cas.coverage import REPORT_KEYS, make_report
from cas.digest import ObjectId
from cas.torch.wire import parse_backend_key

__all__ = ["DoorReporter"]


class DoorReporter:
    """What the door's readers hit and missed since the last report, per pin."""

    def __init__(self, ref: str, env: str, every: float, *, host: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ref, self.env, self.every = ref, env, every
        self.host = host or f"{platform.node()} redis door"
        self._clock = clock
        self._last = clock()
        self._lookups: dict[ObjectId, dict[str, Counter[str]]] = {}
        self._missed: dict[ObjectId, dict[str, set[str]]] = {}

    def lookup(self, pin: ObjectId | None, key: bytes, hit: bool) -> None:
        """Count one GET of ``key`` against commit ``pin`` (None: nothing served yet)."""
        if pin is None:
            return
        parsed = parse_backend_key(key.decode("utf-8", "replace"))
        kind, name = (parsed[0], parsed[1]) if parsed is not None else ("unknown", "")
        self._lookups.setdefault(pin, {}).setdefault(kind, Counter())["hits" if hit else "misses"] += 1
        if not hit and name:
            keys = self._missed.setdefault(pin, {}).setdefault(kind, set())
            if len(keys) < REPORT_KEYS:
                keys.add(name)

    def due(self) -> bool:
        return bool(self._lookups) and self._clock() - self._last >= self.every

    def take(self) -> list[dict[str, Any]]:
        """The reports since the last take (one per pin looked up), and start over."""
        lookups, missed = self._lookups, self._missed
        self._lookups, self._missed, self._last = {}, {}, self._clock()
        now = int(time.time())
        return [make_report(pin=pin, ref=self.ref, host=self.host, env=self.env, time=now, processes=0,
                            lookups=counts, missed=missed.get(pin, {}), rebuilds=[])
                for pin, counts in lookups.items()]
