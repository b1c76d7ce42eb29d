"""cas: a git-like, content-addressed store for torch.compile artifacts.

The public API; everything else is reached through its module (``cas.manifest``,
``cas.history``, ``cas.refs``, ``cas.sync``, ``cas.torch``).
"""

from cas.codec import ObjType
from cas.digest import ObjectId
from cas.errors import CasError
from cas.objects import Commit, Entry, EntryKey, Env, ManifestNode, Tag
from cas.store import Store

__version__ = "0.1.0"

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
