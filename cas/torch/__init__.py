"""Torch integration: env, capture, hydrate, Mega-Cache import/export.

The only package of cas that imports torch, and it does so lazily: importing
``cas.torch`` is cheap, and torch is loaded when a function that needs it runs.
"""

from __future__ import annotations

from cas.torch.capture import (
    CaptureResult,
    capture,
    commit_artifacts,
    export_megacache,
    import_megacache,
)
from cas.torch.enable import Session, enable
from cas.torch.env import current_env, ensure_env, env_diff
from cas.torch.hydrate import HydrateResult, hydrate, hydrate_safely

__all__ = [
    "CaptureResult",
    "HydrateResult",
    "Session",
    "capture",
    "commit_artifacts",
    "current_env",
    "enable",
    "ensure_env",
    "env_diff",
    "export_megacache",
    "hydrate",
    "hydrate_safely",
    "import_megacache",
]
