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


def torch_env_cache_dir() -> Path:
    """Where cas keeps what it computed once per torch install (``$CAS_TORCH_ENV_CACHE``,
    else ``${XDG_CACHE_HOME:-~/.cache}/cas-torch-env``)."""
    if env := os.environ.get("CAS_TORCH_ENV_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cas-torch-env"


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


def s3_settings() -> dict[str, str | None]:
    """S3 settings from the usual AWS variables (a remote's own config overrides them).

    endpoint: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``; region: ``AWS_REGION`` or
    ``AWS_DEFAULT_REGION``; credentials: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_SESSION_TOKEN``; ``AWS_PROFILE`` names a profile of ~/.aws/config.
    """
    env = os.environ.get
    return {
        "endpoint": env("AWS_ENDPOINT_URL_S3") or env("AWS_ENDPOINT_URL"),
        "region": env("AWS_REGION") or env("AWS_DEFAULT_REGION"),
        "access_key": env("AWS_ACCESS_KEY_ID"),
        "secret_key": env("AWS_SECRET_ACCESS_KEY"),
        "session_token": env("AWS_SESSION_TOKEN"),
        "profile": env("AWS_PROFILE"),
    }
