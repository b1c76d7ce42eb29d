"""``torch.compile(model, backend="cas")``: Inductor, served from and recorded into a store.

Registered through the ``torch_dynamo_backends`` entry point (pyproject.toml), so no
import of cas is needed in the user's program. On the first graph it enables cas once for
the process (see :func:`cas.torch.enable.enable`) with settings from the environment:

* the store: ``$CAS_DIR`` (else the default store);
* ``CAS_REF`` (default ``main``): the ref hydrated and served;
* ``CAS_RECORD`` (default: the ref itself when it is a branch; nothing for a tag): the
  branch that newly compiled artifacts are committed to at exit; ``CAS_RECORD=""`` turns
  recording off.

At exit it logs (logger ``cas``, level WARNING, so Python shows it by default) whether
the start was fully warm and what torch rebuilt (:mod:`cas.torch.warmth`).

Then it hands the graph to Inductor (``compile_fx``) with ``mode`` and ``options``
turned into Inductor config patches, as ``backend="inductor"`` would. If cas cannot be
used, this is plain Inductor plus one warning.
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import Any

__all__ = ["cas_backend"]

_once = threading.Lock()
_started = False



def _guard_units() -> None:
    # torch imports this module when torch.compile resolves backend="cas", before it
    # loads a unit for the function (a process with TORCH_CACHING_PRECOMPILE=1): a unit
    # torch cannot install must be refused, not end the program (docs/torch.md).
    try:
        from cas.torch._compat import guard_units_if_on

        guard_units_if_on()
    except Exception as exc:  # cas must never be why torch.compile fails
        from cas.torch.live import warn_once

        warn_once("precompile", f"cannot guard precompiled units ({exc})")


_guard_units()


def _ensure_enabled() -> None:
    global _started
    with _once:
        if _started:
            return
        _started = True
    from cas.config import env_value
    from cas.torch.enable import SAME_BRANCH, active_session, enable

    if active_session() is not None:  # the program enabled cas itself: keep its choice
        return
    ref = env_value("CAS_REF") or "main"
    record = env_value("CAS_RECORD", SAME_BRANCH)
    # Inside the first compile, torch.compile has already decided not to look for a
    # precompiled unit; turning caching precompile on now would only drop guards (torch
    # drops ID_MATCH and DICT_VERSION guards under it) for nothing. A process that set
    # TORCH_CACHING_PRECOMPILE=1 itself still has its units recorded at flush.
    session = enable(None, ref=ref, record=record or None, precompile=False)
    if session.enabled:
        atexit.register(_report, session)


def _report(session: Any) -> None:
    """At exit: log how warm the start was (logger ``cas``; shown by default)."""
    try:
        warmth = session.warmth()
    except Exception:  # exit path: nothing sensible to report to
        return
    lines = [f"cas: {warmth['headline']}"] + [f"  {r['line']}" for r in warmth["rebuilds"]]
    logging.getLogger("cas").warning("\n".join(lines))


def _config_patches(mode: str | None, options: dict[str, Any] | None) -> dict[str, Any]:
    from cas.torch._compat import mode_options

    patches: dict[str, Any] = {}
    if mode and mode != "default":
        patches.update(mode_options(mode))
    patches.update(options or {})
    return patches


def cas_backend(gm: Any, example_inputs: Any, **kwargs: Any) -> Any:
    """A dynamo backend: enable cas for this process (once), then compile with Inductor."""
    from cas.torch._compat import compile_fx

    try:
        _ensure_enabled()
    except Exception as exc:  # cas must never be why torch.compile fails
        from cas.torch.warn import warn_once

        warn_once("backend", f"cannot enable cas ({exc}); compiling with plain Inductor")
    patches = _config_patches(kwargs.pop("mode", None), kwargs.pop("options", None))
    return compile_fx(gm, example_inputs, config_patches=patches or None, **kwargs)
