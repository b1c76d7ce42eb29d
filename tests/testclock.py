"""A clock a test moves by hand, injected into ``Store(clock=...)``."""

from __future__ import annotations

import time


class Clock:
    """Epoch seconds that stand still until a test sets ``clock.now`` (starts at the real time)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now
