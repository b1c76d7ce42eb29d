"""cas's one warning, emitted at most once per topic: "never worse than no cache".

Every cas.torch module that turns a failure into "torch compiles as if cas were absent"
reports it here, so this module imports nothing of cas (it sits below all of cas.torch and
breaks no cycle by being imported anywhere).
"""

from __future__ import annotations

import threading
import warnings

__all__ = ["CasWarning", "warn_once"]


class CasWarning(UserWarning):
    """Something in cas went wrong; torch compiles normally instead."""


_warned: set[str] = set()
_warn_lock = threading.Lock()


def warn_once(topic: str, message: str) -> None:
    """Emit ``message`` as a :class:`CasWarning`, at most once per ``topic`` per process.

    "Never worse than no cache" means a broken store costs one warning, not one per
    graph: a run with 50 graphs and a corrupt store must not print 50 lines.
    """
    with _warn_lock:
        if topic in _warned:
            return
        _warned.add(topic)
    warnings.warn(f"cas: {message}", CasWarning, stacklevel=3)


def forget() -> None:
    """Let every topic warn again (tests that expect a warning in a process that may have
    warned already)."""
    with _warn_lock:
        _warned.clear()
