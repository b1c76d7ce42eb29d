"""Run torch's per-process C++ load checks early, in a background thread.

Before it loads any C++ kernel on CPU, torch probes the vector ISAs (a ``python``
subprocess per ISA) and names the precompiled header (``g++ -E`` of its include, then
``openssl``): ~1 s in every process, even when every ``.so`` is there (docs/torch.md,
"Where a warm start's module load goes"). A recorded answer cannot be reused safely, but
torch caches both answers per process, keyed by what they depend on: cas asks torch's own
functions the same questions, with the same arguments, while the program is still building
its model and dynamo loads its units, so torch's caches answer when torch gets there.

Started by :func:`cas.torch.enable.enable` only where cas serves compiled C++ to the process
(hydrate found entries of this CPU env), once torch imports dynamo: a program that never
compiles pays nothing. torch's first C++ kernel load waits for the thread
(``CppCodeCache.load_async``), so each check runs once, never twice in a race. A failure
in the thread is recorded and otherwise ignored: torch then runs the checks itself.
``CAS_PREWARM=0`` turns it off (a diagnostic, for A/B measurements).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cas.config import env_value
from cas.torch import _compat

__all__ = ["Prewarm", "start"]

#: The longest a kernel load waits for the checks (they take ~1 s; g++ -E has no timeout of
#: torch's own): past it torch goes on and runs whatever is still missing itself.
WAIT_S = 300.0


@dataclass
class Prewarm:
    """The checks' thread and what it found (``isas``, ``header``, ``seconds``, ``error``)."""

    report: dict[str, Any] = field(default_factory=dict)
    _thread: threading.Thread | None = None
    _undo: Callable[[], None] | None = None

    def wait(self, timeout: float | None = WAIT_S) -> None:
        """Wait until the checks are done (torch calls it before each kernel load); then
        take the wait out of torch's path."""
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout)
        undo = self._undo
        if not thread.is_alive() and undo is not None:
            self._undo = None
            undo()

    def _run(self, checks: Callable[[], dict[str, Any]]) -> None:
        began = time.perf_counter()
        try:
            self.report.update(checks())
        except Exception as exc:  # torch runs the checks itself when it gets there
            self.report["error"] = f"{type(exc).__name__}: {exc}"
        self.report["seconds"] = round(time.perf_counter() - began, 3)


def start() -> Prewarm | None:
    """Start the checks in a daemon thread; ``None`` when they cannot run here exactly as
    torch will run them (:func:`cas.torch._compat.cpp_load_checks`), or are turned off."""
    if env_value("CAS_PREWARM") == "0":
        return None
    try:
        checks = _compat.cpp_load_checks()
        if checks is None:
            return None
        prewarm = Prewarm()
        prewarm._thread = threading.Thread(target=prewarm._run, args=(checks,), name="cas-prewarm", daemon=True)
        prewarm._undo = _compat.wait_before_kernel_loads(prewarm.wait)
    except Exception:  # a torch without these functions: it runs its checks as ever
        return None
    try:
        prewarm._thread.start()
    except RuntimeError:  # no thread to be had: take the wait out again
        prewarm._undo()
        return None
    return prewarm
