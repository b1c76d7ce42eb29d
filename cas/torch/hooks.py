"""Run a function right after a module is imported (or now, if it already is).

``cas run`` enables cas as soon as a program imports torch, and most of what cas hooks
into (the C++ builder, dynamo's remote caches) lives in modules that take a second or
more to import. A program that never compiles must not pay for them, so cas waits for
torch itself to import them: :func:`after_import` wraps the module's loader once, then
steps out of ``sys.meta_path``.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["after_import"]

_lock = threading.Lock()
_waiting: dict[str, list[Callable[[ModuleType], None]]] = {}


def after_import(name: str, fn: Callable[[ModuleType], None]) -> None:
    """Call ``fn(module)`` once module ``name`` is imported: now if it already is, else
    right after its code ran (before the import statement that loaded it returns)."""
    module = sys.modules.get(name)
    if module is not None:
        fn(module)
        return
    with _lock:
        first = name not in _waiting
        _waiting.setdefault(name, []).append(fn)
    if first:
        sys.meta_path.insert(0, _Hook(name))


def _run(name: str, module: ModuleType) -> None:
    with _lock:
        fns = _waiting.pop(name, [])
    for fn in fns:
        fn(module)


class _Hook(importlib.abc.MetaPathFinder):
    def __init__(self, name: str) -> None:
        self.name = name

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != self.name:
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run(module)
            _run(name, module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
