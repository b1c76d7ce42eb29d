"""Decorated functions in dynamo's guard state, by name (issue 17, the GPT-2 ``_Missing``).

A decorator written with ``functools.wraps`` gives its wrapper the wrapped function's
``__module__`` and ``__qualname__`` and keeps the original in a closure cell and in
``__wrapped__`` (transformers decorates ``GPT2Model.forward`` and
``create_causal_mask`` so). Dynamo's guards reach the original through the wrapper's
closure, and torch's guard-state pickler (``GuardsStatePickler.reducer_override``, 2.13
and 2.14.1) pickles a function by its name only when the name leads back to it: for the
original it leads to the wrapper, so torch writes ``_Missing("fqn mismatch")`` and the
unit cannot be installed anywhere (``'_Missing' object has no attribute
'__closure__'``).

Here such a function is written as its name plus the number of ``__wrapped__`` steps
from the object the name finds, and read back by taking the same steps in the loading
process: the same object that process's own modules hold, as torch's by-name pickling of
a plain function gives. No torch here: :mod:`cas.torch._compat` hooks it into torch.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

#: Most ``__wrapped__`` steps followed: decorators stack a few deep, a cycle never ends.
MAX_DEPTH = 8


def _by_name(module: str, qualname: str, modules: dict[str, Any]) -> Any:
    found: Any = modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found


def wrapped_path(fn: Any) -> tuple[str, str, int] | None:
    """``(module, qualname, depth)`` when ``fn`` is ``depth`` ``__wrapped__`` steps below
    the object its own name finds in ``sys.modules``; None when it is not."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<locals>" in qualname:
        return None
    found = _by_name(module, qualname, dict(sys.modules))
    for depth in range(1, MAX_DEPTH + 1):
        found = getattr(found, "__wrapped__", None)
        if found is None:
            return None
        if found is fn:
            return module, qualname, depth
    return None


def unwrapped(module: str, qualname: str, depth: int) -> Any:
    """The function :func:`wrapped_path` named, in this process (an unpickling step: a
    name that no longer leads there raises, and the unit is refused)."""
    found = _by_name(module, qualname, {module: importlib.import_module(module)})
    for _ in range(min(depth, MAX_DEPTH)):
        found = getattr(found, "__wrapped__", None)
    if not callable(found) or depth > MAX_DEPTH:
        raise LookupError(f"{module}.{qualname} is no longer wrapped {depth} deep here")
    return found
