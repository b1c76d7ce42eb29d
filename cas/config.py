"""The one library module that reads the environment and configuration files."""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path


def default_store_path() -> Path:
    """``$CAS_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/cas``."""
    if env := os.environ.get("CAS_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cas"


def identity() -> str:
    """Who is acting: ``$CAS_AUTHOR``, else ``user@host``."""
    if env := os.environ.get("CAS_AUTHOR"):
        return env
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def env_value(name: str, default: str | None = None) -> str | None:
    """Read one environment variable (so other modules need not touch os.environ)."""
    return os.environ.get(name, default)
