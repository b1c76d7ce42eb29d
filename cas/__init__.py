"""cas: a git-like, content-addressed store for torch.compile artifacts.

The public API; everything else is reached through its module (``cas.manifest``,
``cas.history``, ``cas.refs``, ``cas.sync``, ``cas.torch``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cas.codec import ObjType
    from cas.digest import ObjectId
    from cas.errors import CasError
    from cas.objects import Commit, Entry, EntryKey, Env, ManifestNode, Tag
    from cas.store import Store

__version__ = "0.1.0"

# Loaded on first use (PEP 562): a process that imports one module of cas (the `cas`
# command before it runs a program, cas.config) does not import lmdb and the store.
_HOME = {
    "ObjType": "codec",
    "ObjectId": "digest",
    "CasError": "errors",
    "Commit": "objects",
    "Entry": "objects",
    "EntryKey": "objects",
    "Env": "objects",
    "ManifestNode": "objects",
    "Tag": "objects",
    "Store": "store",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'cas' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cas.{home}"), name)


__all__ = [
    "CasError",
    "Commit",
    "Entry",
    "EntryKey",
    "Env",
    "ManifestNode",
    "ObjType",
    "ObjectId",
    "Store",
    "Tag",
    "__version__",
]
