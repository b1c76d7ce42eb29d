"""Transports behind one :class:`~cas.remote.base.Remote` interface, picked by URL.

* a path (``/srv/cas``, ``./other``, ``file:///srv/cas``): another store on this machine
* ``http://host:port`` / ``https://…``: a ``cas serve`` server
* ``s3://bucket/prefix``: an S3-compatible object store

HTTP and S3 are imported only when used, so a path remote needs neither httpx nor boto3.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from cas.errors import UsageError
from cas.remote.base import Remote, WireObject

__all__ = ["Remote", "WireObject", "open_remote", "scheme_of"]

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def scheme_of(url: str) -> str:
    """``"path"``, ``"http"`` or ``"s3"`` for a remote URL; UsageError for anything else."""
    if not url or not url.strip():
        raise UsageError("empty remote url")
    m = _SCHEME.match(url)
    if m is None:
        return "path"
    scheme = m.group(1).lower()
    if scheme == "file":
        return "path"
    if scheme in ("http", "https"):
        if not url[m.end() :].strip("/"):
            raise UsageError(f"remote url {url!r} has no host")
        return "http"
    if scheme == "s3":
        if not url[m.end() :].split("/", 1)[0]:
            raise UsageError(f"remote url {url!r} has no bucket", hint="use s3://bucket/prefix")
        return "s3"
    raise UsageError(
        f"unsupported remote url {url!r}",
        hint="use a path, http(s)://host:port or s3://bucket/prefix",
    )


def open_remote(url: str, **options: Any) -> Remote:
    """Open the remote at ``url``; ``options`` go to the transport (token, endpoint, …)."""
    kind = scheme_of(url)
    if kind == "path":
        from cas.remote.local import LocalRemote

        path = url[len("file://") :] if url.lower().startswith("file://") else url
        # A path remote takes no credentials; other options are for other transports.
        return LocalRemote(path, create=bool(options.get("create", False)))
    if kind == "http":
        _import_httpx_without_its_cli()
        from cas.remote.http import HttpRemote

        return HttpRemote(url, **options)  # type: ignore[no-any-return]
    from cas.remote.s3 import S3Remote

    return S3Remote(url, **options)  # type: ignore[no-any-return]


def _import_httpx_without_its_cli() -> None:
    """Import httpx without its command line: ``import httpx`` imports ``httpx._main``
    (rich, pygments, click: ~50 ms of every `cas clone` / `cas fetch`) whenever those are
    installed, and keeps a stub ``httpx.main`` when that import fails. cas never runs
    httpx's command line, so the import is made to fail once; afterwards
    ``import httpx._main`` works as usual."""
    if "httpx" in sys.modules:
        return
    sys.modules["httpx._main"] = None  # type: ignore[assignment]  # None: "cannot be imported"
    try:
        import httpx  # noqa: F401
    finally:
        if sys.modules.get("httpx._main", 0) is None:
            del sys.modules["httpx._main"]
