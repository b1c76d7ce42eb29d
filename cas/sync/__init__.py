"""Moving commits between stores: negotiate what is missing, transfer it, merge.

``push``, ``fetch``, ``pull`` and ``clone`` work over any :class:`cas.remote.base.Remote`;
the algorithm is described in docs/sync.md.
"""

from __future__ import annotations

from cas.sync.merge import Integration, integrate
from cas.sync.transfer import (
    ProgressFn,
    RefUpdate,
    Result,
    Stats,
    clone,
    fetch,
    pull,
    push,
    remote_branch_tip,
    tracking_ref,
)

__all__ = [
    "Integration",
    "ProgressFn",
    "RefUpdate",
    "Result",
    "Stats",
    "clone",
    "fetch",
    "integrate",
    "pull",
    "push",
    "remote_branch_tip",
    "tracking_ref",
]
